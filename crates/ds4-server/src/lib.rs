//! The ds4 HTTP server: OpenAI chat completions, completions and Responses,
//! and Anthropic Messages, streaming (SSE) and not, over one inference
//! worker (SERVING.md §3, §5, §6; usage in docs/server.md).
//!
//! * [`http`] — routes, the API-key check, CORS, body limits, `/v1/models`.
//! * [`protocol`] — one module per protocol: request parsing, response
//!   bodies, SSE framing.
//! * [`job`] — what a handler hands the worker and gets back; thinking
//!   controls and sampling defaults.
//! * [`worker`] — the thread that owns the engine: prefix reuse (live
//!   sessions, then the disk cache), prefill, generation, bindings.
//! * [`turn`] — one generated turn: detokenizing, stop sequences, DSML
//!   tracking and forced greedy syntax ([`tracker`]), streaming projection,
//!   the final parse.
//! * [`toolmem`] — exact DSML replay by tool-call id.
//!
//! Handlers run on tokio; the engine runs on its own thread and talks to
//! them through channels. A job is cancelled when its client goes away.

pub mod error;
pub mod http;
pub mod ids;
pub mod job;
pub mod json;
pub mod options;
pub mod protocol;
#[cfg(feature = "test-script")]
pub mod script;
pub mod sse;
pub mod state;
pub mod toolmem;
pub mod trace;
pub mod tracker;
pub mod turn;
pub mod worker;

#[cfg(all(feature = "test-script", not(debug_assertions)))]
compile_error!(
    "the `test-script` feature replaces sampling with scripted tokens and exists for the \
     end-to-end tests only: it cannot be built without debug assertions (no release build \
     may contain it)"
);

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ds4_engine::kvstore::{KvStore, KvStoreOptions};
use ds4_engine::{tokenizer_from_gguf, DiskCache, Engine, PoolOptions, SessionPool, ToolMapOf};
use ds4_model::backend::Backend;
use ds4_text::{SpecialIds, Tokenizer};

pub use options::{KvDiskOptions, ServerOptions, MODEL_ID};

use crate::state::Shared;
use crate::toolmem::ToolMemory;
use crate::trace::Trace;
use crate::worker::{log, Worker};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("--host {0}: only IPv4 addresses (or localhost) are supported")]
    Host(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Startup(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// A server that is listening.
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    worker: JoinHandle<usize>,
}

/// What shutdown did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Shutdown checkpoints written to the disk cache.
    pub checkpoints: usize,
}

fn parse_host(host: &str) -> Result<Ipv4Addr, ServerError> {
    if host == "localhost" {
        return Ok(Ipv4Addr::LOCALHOST);
    }
    host.parse().map_err(|_| ServerError::Host(host.to_owned()))
}

type Ready = Result<(Arc<Tokenizer>, usize, SpecialIds), String>;

/// What the worker thread builds before it serves.
struct Parts<B: Backend> {
    engine: Engine<B>,
    pool: SessionPool<B>,
    tok: Arc<Tokenizer>,
    specials: SpecialIds,
    trace: Option<Trace>,
}

fn disk_cache(
    d: &KvDiskOptions,
    opts: &ServerOptions,
    tok: &Arc<Tokenizer>,
    specials: &SpecialIds,
    memory: &Arc<Mutex<ToolMemory>>,
) -> Result<DiskCache, String> {
    let mut policy = d.policy.clone();
    policy.user_token = Some(specials.user);
    policy.assistant_token = Some(specials.assistant);
    let store = KvStore::open(
        &d.dir,
        KvStoreOptions {
            budget_bytes: d.budget_mb << 20,
            reject_different_quant: d.reject_different_quant,
            max_tool_ids: opts.tool_memory_max_ids as u64,
            policy: policy.clone(),
            ..KvStoreOptions::default()
        },
    )
    .map_err(|e| format!("--kv-disk-dir {}: {e}", d.dir.display()))?;
    log(&format!(
        "KV disk cache {} (budget={} MiB, cross-quant={}, min={}, cold_max={}, continued={}, trim={}, align={})",
        d.dir.display(),
        d.budget_mb,
        if d.reject_different_quant { "reject" } else { "accept" },
        policy.min_tokens,
        policy.cold_max_tokens,
        policy.continued_interval_tokens,
        policy.boundary_trim_tokens,
        policy.boundary_align_tokens,
    ));
    let t = Arc::clone(tok);
    let mem = Arc::clone(memory);
    let tool_map_of: Option<ToolMapOf> = opts.exact_dsml_replay.then(|| -> ToolMapOf {
        Box::new(move |text: &str| mem.lock().map(|m| m.mappings_in(text)).unwrap_or_default())
    });
    Ok(DiskCache {
        store,
        text_of: Box::new(move |ids: &[u32]| t.decode_lossy(ids)),
        tool_map_of,
    })
}

fn build_parts<B: Backend>(
    opts: &ServerOptions,
    make: impl FnOnce() -> Result<Engine<B>, String>,
    memory: &Arc<Mutex<ToolMemory>>,
) -> Result<Parts<B>, String> {
    let engine = make()?;
    let tok = Arc::new(tokenizer_from_gguf(&engine.model().file).map_err(|e| e.to_string())?);
    let specials = tok.specials().map_err(|e| e.to_string())?;
    let disk = match &opts.kv_disk {
        None => None,
        Some(d) => Some(disk_cache(d, opts, &tok, &specials, memory)?),
    };
    let pool = SessionPool::new(
        PoolOptions {
            memory_budget: usize::MAX,
            max_sessions: opts.live_sessions.max(1),
        },
        disk,
    );
    let trace = match &opts.trace {
        None => None,
        Some(p) => Some(Trace::create(p).map_err(|e| format!("--trace {}: {e}", p.display()))?),
    };
    Ok(Parts {
        engine,
        pool,
        tok,
        specials,
        trace,
    })
}

/// The worker thread: builds the engine, reports ready, waits for the
/// shared state, runs jobs. Returns the shutdown checkpoints written.
fn worker_main<B: Backend>(
    opts: ServerOptions,
    make: impl FnOnce() -> Result<Engine<B>, String>,
    jobs: std::sync::mpsc::Receiver<job::Job>,
    ready: std::sync::mpsc::Sender<Ready>,
    shared: std::sync::mpsc::Receiver<Arc<Shared>>,
    memory: Arc<Mutex<ToolMemory>>,
) -> usize {
    match build_parts(&opts, make, &memory) {
        Err(e) => {
            let _ = ready.send(Err(e));
            0
        }
        Ok(p) => {
            let ctx = p.engine.options().ctx;
            if ready.send(Ok((p.tok, ctx, p.specials))).is_err() {
                return 0;
            }
            match shared.recv() {
                Ok(shared) => Worker::new(p.engine, p.pool, shared, p.trace).run(jobs),
                Err(_) => 0,
            }
        }
    }
}

/// Builds the engine on the worker thread (`make`), binds, and serves in
/// the background of the current tokio runtime.
pub async fn start<B, F>(opts: ServerOptions, make: F) -> Result<Running, ServerError>
where
    B: Backend + 'static,
    F: FnOnce() -> Result<Engine<B>, String> + Send + 'static,
{
    let ip = parse_host(&opts.host)?;
    let addr = SocketAddr::from((ip, opts.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let addr = listener.local_addr()?;
    let (job_tx, job_rx) = sync_channel(opts.queue_capacity.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
    let (shared_tx, shared_rx) = std::sync::mpsc::channel::<Arc<Shared>>();
    let worker_opts = opts.clone();
    let memory = Arc::new(Mutex::new(ToolMemory::new(opts.tool_memory_max_ids)));
    let worker_memory = Arc::clone(&memory);
    let worker = std::thread::Builder::new()
        .name("ds4-worker".into())
        .spawn(move || {
            worker_main(
                worker_opts,
                make,
                job_rx,
                ready_tx,
                shared_rx,
                worker_memory,
            )
        })?;
    let ready = tokio::task::spawn_blocking(move || ready_rx.recv())
        .await
        .map_err(|e| ServerError::Startup(e.to_string()))?
        .map_err(|_| ServerError::Startup("the worker thread exited during startup".into()))?;
    let (tok, ctx, specials) = ready.map_err(ServerError::Startup)?;
    let shared = Arc::new(Shared::new(opts, ctx, tok, specials, job_tx, memory));
    shared_tx
        .send(Arc::clone(&shared))
        .map_err(|_| ServerError::Startup("the worker thread exited during startup".into()))?;
    let app = http::router(Arc::clone(&shared));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Running {
        addr,
        shared,
        stop,
        server,
        worker,
    })
}

impl Running {
    /// Stops accepting, ends the running generation (finish `error`,
    /// "shutdown requested"), answers queued requests with 503, waits for
    /// open responses, then writes the shutdown checkpoints.
    pub async fn shutdown(self) -> Result<ShutdownReport, ServerError> {
        self.shared.begin_shutdown();
        let _ = self.stop.send(());
        let served = self.server.await;
        let worker = self.worker;
        let checkpoints = tokio::task::spawn_blocking(move || worker.join().unwrap_or(0))
            .await
            .unwrap_or(0);
        match served {
            Ok(Ok(())) => Ok(ShutdownReport { checkpoints }),
            Ok(Err(e)) => Err(ServerError::Io(e)),
            Err(e) => Err(ServerError::Startup(format!("server task failed: {e}"))),
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `ds4 serve`: starts, logs the address, serves until SIGINT/SIGTERM,
/// shuts down cleanly.
pub fn run<B, F>(opts: ServerOptions, make: F) -> Result<ShutdownReport, ServerError>
where
    B: Backend + 'static,
    F: FnOnce() -> Result<Engine<B>, String> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ds4-http")
        .build()?;
    rt.block_on(async move {
        let running = start(opts, make).await?;
        log(&format!("listening on http://{}", running.addr));
        shutdown_signal().await;
        log("shutting down");
        let report = running.shutdown().await?;
        log(&format!(
            "stopped ({} shutdown checkpoint(s))",
            report.checkpoints
        ));
        Ok(report)
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
