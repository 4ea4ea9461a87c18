//! The ds4 engine: a model and a backend ([`Engine`]), conversations on it
//! ([`Session`]: sync to a prompt, rewind, snapshots, the DS4 session
//! payload), sampling and log-probabilities, several live sessions within a
//! memory budget ([`SessionPool`]), and the disk KV cache ([`kvstore`]).
//!
//! The engine works on token ids; the text layer renders and tokenizes, and
//! hands the disk cache the text its files are keyed by.

mod error;
pub mod generate;
pub mod kvstore;
pub mod pool;
pub mod sampling;
pub mod session;
pub mod vocab;

pub use error::{EngineError, Result};
pub use generate::{
    generate, generate_with, Finish, FnSink, GenerateOptions, Generated, Step, TokenSink,
};
pub use kvstore::inspect::{inspect_file, inspect_file_with, list_dir, Listing, Report};
pub use kvstore::{CachePolicy, KvStore, KvStoreOptions, SaveReason};
pub use pool::{
    DiskCache, PoolOptions, PrepareReport, SessionId, SessionPool, ToolMapOf, VisibleKey,
};
pub use sampling::{argmax, logprob, top_logprobs, Sampler, SamplingParams, TokenLogprob};
pub use session::{Control, Engine, EngineOptions, Progress, Session, Snapshot, SyncReport};
pub use vocab::tokenizer_from_gguf;
