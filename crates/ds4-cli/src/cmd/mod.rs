//! One module per command group.

pub mod bench;
pub mod chat;
pub mod debug;
pub mod dump;
pub mod gguf;
pub mod kv;
pub mod load;
pub mod pull;
pub mod repl;
pub mod run;
pub mod serve;
pub mod svg;
pub mod text;
