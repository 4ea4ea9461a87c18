//! One module per command group.

pub mod debug;
pub mod gguf;
pub mod kv;
pub mod run;
pub mod text;
