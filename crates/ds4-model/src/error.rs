use std::fmt::Display;

use thiserror::Error;

/// A file that is not a DeepSeek V4 model we can run: one line naming the
/// key or tensor, what was expected and what was found.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("metadata key '{0}' is missing")]
    MissingKey(String),
    #[error("metadata key '{key}': expected {expected}, found {found}")]
    Key {
        key: String,
        expected: String,
        found: String,
    },
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("tensor '{name}': expected {expected}, found {found}")]
    Tensor {
        name: String,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Gguf(#[from] ds4_gguf::GgufError),
}

impl ModelError {
    pub fn key(key: &str, expected: impl Display, found: impl Display) -> Self {
        Self::Key {
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    pub fn tensor(name: &str, expected: impl Display, found: impl Display) -> Self {
        Self::Tensor {
            name: name.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
