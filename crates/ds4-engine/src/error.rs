use ds4_model::backend::BackendError;
use ds4_model::payload::PayloadError;

/// What went wrong in the engine: one line naming the request field, file or
/// limit involved. Nothing in this crate panics on bad input.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("context full: {needed} tokens do not fit in a context of {ctx}")]
    ContextFull { needed: usize, ctx: usize },
    #[error("token id {id} at prompt position {pos} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { id: u32, pos: usize, vocab: usize },
    #[error("cancelled after evaluating {evaluated} tokens (the session holds {len})")]
    Cancelled { evaluated: usize, len: usize },
    #[error("the session has no tokens, so there are no logits to sample from")]
    NoLogits,
    #[error("invalid engine option '{field}': {why}")]
    Option { field: &'static str, why: String },
    #[error("snapshot does not fit this session: {0}")]
    Snapshot(String),
    #[error("unknown session id {0}")]
    UnknownSession(u64),
    #[error(transparent)]
    Store(#[from] crate::kvstore::StoreError),
}

pub type Result<T> = std::result::Result<T, EngineError>;
