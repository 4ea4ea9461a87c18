//! One module per command group.

pub mod bench;
pub mod chat;
pub mod dump;
pub mod gguf;
pub mod load;
pub mod pull;
pub mod repl;
pub mod run;
pub mod svg;
