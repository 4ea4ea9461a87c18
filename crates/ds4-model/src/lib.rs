//! DeepSeek V4 Flash, the model: typed configuration from GGUF metadata,
//! the tensor layout of the published files, validated weight handles, and
//! (later) the forward pass written once over a `Backend`.

pub mod backend;
pub mod config;
mod error;
pub mod forward;
pub mod layout;
pub mod numerics;
pub mod payload;
pub mod weights;

pub use config::{AttentionKind, Config};
pub use error::{ModelError, Result};
pub use weights::{MtpWeights, Tensor, Weights};

use std::path::Path;
use std::sync::Arc;

use ds4_gguf::GgufFile;

/// A model file opened, validated and bound.
pub struct Model {
    pub file: Arc<GgufFile>,
    pub config: Config,
    pub weights: Weights,
}

impl Model {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(Arc::new(GgufFile::open(path)?))
    }

    pub fn from_file(file: Arc<GgufFile>) -> Result<Self> {
        let config = Config::from_gguf(&file)?;
        let weights = Weights::bind(&file, &config)?;
        Ok(Self {
            file,
            config,
            weights,
        })
    }

    /// The bytes of one of this model's tensors.
    pub fn bytes(&self, t: &Tensor) -> &[u8] {
        t.bytes(&self.file)
    }
}
