//! Server options: one typed struct, filled by `ds4 serve` from its flags.

use std::path::PathBuf;
use std::time::Duration;

use ds4_engine::CachePolicy;

/// The model id the server answers to (`/v1/models`).
pub const MODEL_ID: &str = "deepseek-v4-flash";

/// Default of `--tokens` (384 Ki): output tokens when the client sets no limit.
pub const DEFAULT_MAX_TOKENS: usize = 393_216;

/// The disk KV cache (SERVING.md §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvDiskOptions {
    pub dir: PathBuf,
    pub budget_mb: u64,
    pub reject_different_quant: bool,
    pub policy: CachePolicy,
}

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// IPv4 address to bind (`localhost` means 127.0.0.1).
    pub host: String,
    pub port: u16,
    /// Output tokens when a request sets no limit (clamped to the context).
    pub default_max_tokens: usize,
    /// Add `Access-Control-Allow-*` headers and answer preflights.
    pub cors: bool,
    /// When set, every request must carry `Authorization: Bearer KEY` or `x-api-key: KEY`.
    pub api_key: Option<String>,
    /// Human-readable per-request trace file (truncated at start).
    pub trace: Option<PathBuf>,
    pub kv_disk: Option<KvDiskOptions>,
    /// Most tool ids remembered for exact DSML replay.
    pub tool_memory_max_ids: usize,
    /// Remember sampled DSML by tool-call id and replay it (`false`:
    /// `--disable-exact-dsml-tool-replay`).
    pub exact_dsml_replay: bool,
    /// Live sessions kept in memory (ds4: 1).
    pub live_sessions: usize,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Requests waiting for the worker beyond this are refused with 503.
    pub queue_capacity: usize,
    /// SSE comment interval while a streaming request waits or prefills.
    pub keepalive: Duration,
    /// Log one line per request to stderr.
    pub log_requests: bool,
    /// Scripted generation for end-to-end tests (feature `test-script`).
    #[cfg(feature = "test-script")]
    pub script: Option<crate::script::Script>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            cors: false,
            api_key: None,
            trace: None,
            kv_disk: None,
            tool_memory_max_ids: 100_000,
            exact_dsml_replay: true,
            live_sessions: 1,
            max_body_bytes: 64 << 20,
            queue_capacity: 1024,
            keepalive: Duration::from_secs(5),
            log_requests: true,
            #[cfg(feature = "test-script")]
            script: None,
        }
    }
}
