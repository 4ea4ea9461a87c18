//! One module per command group.

pub mod gguf;
pub mod run;
pub mod serve;
