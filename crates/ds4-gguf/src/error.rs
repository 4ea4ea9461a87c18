use std::io;

use thiserror::Error;

/// Everything that can be wrong with a GGUF file. Parse errors carry the byte
/// offset where the problem was found and, where there is one, the metadata
/// key or tensor name being read.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("at byte {offset}{}: {message}", context_suffix(.context))]
    Format {
        offset: u64,
        context: Option<String>,
        message: String,
    },
    #[error("tensor '{name}': {message}")]
    Tensor { name: String, message: String },
    #[error("write: {0}")]
    Write(String),
}

fn context_suffix(context: &Option<String>) -> String {
    match context {
        Some(c) => format!(" ({c})"),
        None => String::new(),
    }
}

pub type Result<T> = std::result::Result<T, GgufError>;
