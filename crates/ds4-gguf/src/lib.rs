//! The GGUF v3 container format: a bounds-checked reader over an mmap and a
//! streaming writer.
//!
//! Every count, length and offset read from a file is checked against the
//! file before it is used; errors name the metadata key or tensor and the
//! byte offset. This crate knows nothing about the model stored inside.

mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use error::{GgufError, Result};
pub use reader::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, MAX_DIMS};
pub use types::GgmlType;
pub use value::{Value, ValueType};
pub use writer::{encode_header, GgufWriter, Layout, TensorSpec};
