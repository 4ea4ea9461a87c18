//! State shared by the HTTP handlers and the worker.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use ds4_engine::kvstore::{KvStore, KvStoreOptions};
use ds4_text::chat::{Message, Role};
use ds4_text::{SpecialIds, Tokenizer};

use crate::error::ApiError;
use crate::job::{Event, Job};
use crate::json::IntoPy;
use crate::obj;
use crate::options::ServerOptions;
use crate::toolmem::{ReplayStats, ToolMemory};

/// Counters, readable at `GET /ds4/stats`.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub jobs_done: AtomicU64,
    pub jobs_cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    /// Prompt tokens evaluated (prefilled).
    pub prefilled_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub disk_hits: AtomicU64,
    pub disk_tokens: AtomicU64,
    pub checkpoints_stored: AtomicU64,
    pub queued: AtomicUsize,
    pub busy: AtomicBool,
    pub last: Mutex<Option<LastJob>>,
}

/// What the last finished job did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastJob {
    pub seq: u64,
    pub kind: &'static str,
    /// Where the reused prefix came from (`memory-token`, `memory-text`,
    /// `thinking-visible`, `disk-text`, `cold`).
    pub source: &'static str,
    pub prompt: usize,
    pub cached: usize,
    pub prefilled: usize,
    pub generated: usize,
    pub finish: &'static str,
    /// From the cancel (client gone, shutdown) to the worker stopping.
    pub cancel_latency_ms: Option<u64>,
}

impl Stats {
    pub fn to_json(&self) -> ds4_text::pyjson::PyValue {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let last = self.last.lock().ok().and_then(|l| l.clone()).map(|l| {
            obj! {
                "seq" => l.seq,
                "kind" => l.kind,
                "source" => l.source,
                "prompt_tokens" => l.prompt,
                "cached_tokens" => l.cached,
                "prefilled_tokens" => l.prefilled,
                "generated_tokens" => l.generated,
                "finish" => l.finish,
                "cancel_latency_ms" => l.cancel_latency_ms,
            }
        });
        obj! {
            "requests" => g(&self.requests),
            "jobs_done" => g(&self.jobs_done),
            "jobs_cancelled" => g(&self.jobs_cancelled),
            "prompt_tokens" => g(&self.prompt_tokens),
            "cached_tokens" => g(&self.cached_tokens),
            "prefilled_tokens" => g(&self.prefilled_tokens),
            "generated_tokens" => g(&self.generated_tokens),
            "disk_hits" => g(&self.disk_hits),
            "disk_tokens" => g(&self.disk_tokens),
            "checkpoints_stored" => g(&self.checkpoints_stored),
            "queued" => self.queued.load(Ordering::Relaxed),
            "busy" => self.busy.load(Ordering::Relaxed),
            "last" => last.into_py(),
        }
    }
}

pub struct Shared {
    pub opts: ServerOptions,
    /// Context size of every session.
    pub ctx: usize,
    pub tok: Arc<Tokenizer>,
    pub specials: SpecialIds,
    /// Shared with the worker's disk cache, which stores the mappings of a
    /// checkpoint's text with it.
    pub tool_memory: Arc<Mutex<ToolMemory>>,
    /// The disk cache directory, read for tool-id maps (§3.8) before a
    /// request renders; the worker owns the writing side.
    disk_tools: Option<KvStore>,
    pub stats: Stats,
    /// Set once shutdown starts: new jobs are refused, the running one ends.
    pub shutdown: Arc<AtomicBool>,
    queue: Mutex<Option<SyncSender<Job>>>,
    seq: AtomicU64,
}

impl Shared {
    pub fn new(
        opts: ServerOptions,
        ctx: usize,
        tok: Arc<Tokenizer>,
        specials: SpecialIds,
        queue: SyncSender<Job>,
        tool_memory: Arc<Mutex<ToolMemory>>,
    ) -> Self {
        let disk_tools = opts
            .kv_disk
            .as_ref()
            .filter(|_| opts.exact_dsml_replay)
            .map(|d| {
                KvStore::reader(
                    &d.dir,
                    KvStoreOptions {
                        max_tool_ids: opts.tool_memory_max_ids as u64,
                        ..KvStoreOptions::default()
                    },
                )
            });
        Self {
            opts,
            ctx,
            tok,
            specials,
            tool_memory,
            disk_tools,
            stats: Stats::default(),
            shutdown: Arc::new(AtomicBool::new(false)),
            queue: Mutex::new(Some(queue)),
            seq: AtomicU64::new(0),
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Output tokens a client may ask for: `min(--tokens, ctx)`.
    pub fn max_completion_tokens(&self) -> usize {
        self.opts.default_max_tokens.min(self.ctx)
    }

    /// Queues a job (FIFO: the worker takes them in arrival order).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("server shutting down"));
        }
        let guard = self
            .queue
            .lock()
            .map_err(|_| ApiError::server("queue lock poisoned"))?;
        let Some(q) = guard.as_ref() else {
            return Err(ApiError::unavailable("server shutting down"));
        };
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match q.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::unavailable(format!(
                        "server busy: {} requests are waiting",
                        self.opts.queue_capacity
                    )),
                    TrySendError::Disconnected(_) => ApiError::unavailable("server shutting down"),
                })
            }
        }
    }

    /// Starts shutdown: refuse new jobs and close the queue, so the worker
    /// finishes what is queued (each with an error) and exits.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
    }

    /// Loads from the disk checkpoints' tool-id maps the mappings of the
    /// assistant tool-call ids in `messages` that memory does not know
    /// (§3.8 step 1), e.g. after a restart.
    pub fn load_disk_tool_ids(&self, messages: &[Message]) {
        let Some(store) = &self.disk_tools else {
            return;
        };
        let wanted: std::collections::HashSet<&str> = {
            let Ok(mem) = self.tool_memory.lock() else {
                return;
            };
            messages
                .iter()
                .filter(|m| m.role == Role::Assistant)
                .flat_map(|m| m.tool_calls.iter().filter_map(|c| c.id.as_deref()))
                .filter(|id| !mem.contains(id))
                .collect()
        };
        if wanted.is_empty() {
            return;
        }
        // The directory is read without holding the memory's lock.
        let found = store.tool_mappings(&|id| wanted.contains(id));
        if let Ok(mut mem) = self.tool_memory.lock() {
            for m in found {
                mem.put_from_disk(&[m.id], &m.dsml);
            }
        }
    }

    /// Sets `raw_dsml` on assistant messages whose tool-call ids all map to
    /// one remembered block (§3.8).
    pub fn apply_tool_memory(&self, messages: &mut [Message]) -> ReplayStats {
        let mut stats = ReplayStats::default();
        let Ok(mem) = self.tool_memory.lock() else {
            return stats;
        };
        for m in messages
            .iter_mut()
            .filter(|m| m.role == Role::Assistant && !m.tool_calls.is_empty())
        {
            let ids: Vec<Option<String>> = m.tool_calls.iter().map(|c| c.id.clone()).collect();
            match self
                .opts
                .exact_dsml_replay
                .then(|| mem.replay_for(&ids))
                .flatten()
            {
                Some((block, from_disk)) => {
                    m.raw_dsml = Some(block.to_string());
                    stats.mem += 1;
                    stats.disk += usize::from(from_disk);
                }
                None => {
                    stats.canonical += 1;
                    if ids
                        .iter()
                        .any(|id| id.as_deref().is_none_or(|id| !mem.contains(id)))
                    {
                        stats.missing_ids += 1;
                    }
                }
            }
        }
        stats
    }

    /// Remembers the sampled block of a tool-call turn under its ids.
    pub fn remember_tool_calls(&self, ids: &[String], raw_dsml: &str) {
        if !self.opts.exact_dsml_replay {
            return;
        }
        if let Ok(mut mem) = self.tool_memory.lock() {
            mem.put(ids, raw_dsml);
        }
    }
}

/// Sends an event; a closed receiver (client gone) is not an error here.
pub fn send(tx: &tokio::sync::mpsc::UnboundedSender<Event>, ev: Event) {
    let _ = tx.send(ev);
}
