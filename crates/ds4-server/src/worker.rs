//! The inference worker: one thread owns the engine and its live sessions
//! and runs jobs one at a time, in arrival order (SERVING.md §5.11).
//!
//! Per job: choose the reusable prefix (§6.2: live sessions by tokens, by a
//! remembered visible transcript, by decoded text; then the disk cache by
//! text), prefill the rest through the session pool (which writes the cold
//! and continued checkpoints), generate through a [`TurnSink`], send the
//! events back to the handler, and remember what the next request may reuse
//! (tool-call blocks by id, the thinking-visible transcript).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use ds4_engine::kvstore::format::{FLAG_THINKING_VISIBLE, HEADER_BYTES};
use ds4_engine::kvstore::Entry;
use ds4_engine::{
    Control, Engine, EngineError, GenerateOptions, Progress, Sampler, SessionId, SessionPool,
    VisibleKey,
};
use ds4_model::backend::Backend;
use ds4_text::chat::RenderedPrompt;
use ds4_text::tokenizer::{EOS, THINK_END, THINK_START};
use ds4_text::{EncodeMode, Segment, Tokenizer};

use crate::error::ApiError;
use crate::job::{Event, FinishReason, Job, Kind, Think, TurnResult, Usage};
use crate::state::{send, LastJob, Shared};
use crate::trace::Trace;
use crate::turn::{SinkStop, TurnOptions, TurnSink};

/// Which kind of visible transcript (§6.2 step 5) a session has; the text
/// itself is the pool's [`VisibleKey`] of the session, which the pool drops
/// as soon as the session changes.
struct Binding {
    session: SessionId,
    /// `thinking-visible` or `tools-visible`.
    source: &'static str,
}

/// Where a request's reused prefix comes from.
struct Plan {
    tokens: Vec<u32>,
    source: &'static str,
}

pub struct Worker<B: Backend> {
    pub engine: Engine<B>,
    pub pool: SessionPool<B>,
    pub shared: Arc<Shared>,
    pub trace: Option<Trace>,
    bindings: Vec<Binding>,
}

/// Tokens of the prompt from byte `from` on, tokenized fresh from that
/// boundary with the prompt's template / untrusted segments.
pub fn tokenize_suffix(tok: &Tokenizer, prompt: &RenderedPrompt, from: usize) -> Vec<u32> {
    let mut segs = Vec::new();
    let mut off = 0;
    for seg in prompt.segments() {
        let (s, template) = match seg {
            Segment::Template(s) => (s, true),
            Segment::Untrusted(s) => (s, false),
        };
        let end = off + s.len();
        if end > from {
            let piece = &s[from.saturating_sub(off)..];
            segs.push(if template {
                Segment::Template(piece)
            } else {
                Segment::Untrusted(piece)
            });
        }
        off = end;
    }
    tok.encode_segments(segs, EncodeMode::Hf)
}

/// The token list of a disk checkpoint, read from its session payload
/// header without loading the state (§6.3: the payload's 8th word is the
/// token count, the tokens follow the 13-word header).
fn checkpoint_tokens(entry: &Entry) -> Option<Vec<u32>> {
    let mut f = File::open(&entry.path).ok()?;
    f.seek(SeekFrom::Start(HEADER_BYTES as u64 + 4 + entry.text_bytes))
        .ok()?;
    let mut head = [0u8; 52];
    f.read_exact(&mut head).ok()?;
    let word = |i: usize| u32::from_le_bytes(head[4 * i..4 * i + 4].try_into().unwrap_or([0; 4]));
    let n = word(7) as usize;
    if word(0) != 0x3456_5344 || n != entry.header.tokens as usize || n == 0 {
        return None;
    }
    let mut raw = vec![0u8; n * 4];
    f.read_exact(&mut raw).ok()?;
    Some(
        raw.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

impl<B: Backend> Worker<B> {
    pub fn new(
        engine: Engine<B>,
        pool: SessionPool<B>,
        shared: Arc<Shared>,
        trace: Option<Trace>,
    ) -> Self {
        Self {
            engine,
            pool,
            shared,
            trace,
            bindings: Vec::new(),
        }
    }

    /// Runs jobs until the queue closes, then writes the shutdown checkpoints.
    pub fn run(mut self, rx: Receiver<Job>) -> usize {
        while let Ok(job) = rx.recv() {
            let shared = Arc::clone(&self.shared);
            let stats = &shared.stats;
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            if self.shared.shutdown.load(Ordering::SeqCst) {
                send(
                    &job.events,
                    Event::Failed(ApiError::unavailable("server shutting down")),
                );
                continue;
            }
            if job.cancel.is_raised() || job.events.is_closed() {
                stats.jobs_cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            stats.busy.store(true, Ordering::Relaxed);
            // A bug must not take the server down: the job's event sender
            // is dropped with it, so its client gets an error, and the
            // worker goes on with the next job.
            let seq = job.seq;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_job(job)));
            if run.is_err() {
                log(&format!(
                    "request {seq}: internal error (panic); the worker goes on"
                ));
            }
            stats.busy.store(false, Ordering::Relaxed);
        }
        match self.pool.shutdown(&self.engine) {
            Ok(n) => {
                if n > 0 {
                    log(&format!("shutdown: {n} checkpoint(s) written"));
                }
                n
            }
            Err(e) => {
                log(&format!("shutdown checkpoint failed: {e}"));
                0
            }
        }
    }

    /// The longest reusable prefix among live sessions and the disk cache.
    fn plan(&self, job: &Job) -> Plan {
        let tok = &*self.shared.tok;
        let text = job.prompt.text();
        let mut best = Plan {
            tokens: job.tokens.clone(),
            source: "cold",
        };
        let mut best_len = 0usize;
        for id in self.pool.ids() {
            let Some(live) = self.pool.session(id).map(|s| s.tokens()) else {
                continue;
            };
            if live.is_empty() || live.len() <= best_len {
                continue;
            }
            if job.tokens.starts_with(live) {
                best = Plan {
                    tokens: job.tokens.clone(),
                    source: "memory-token",
                };
                best_len = live.len();
                continue;
            }
            let visible = self
                .pool
                .visible_key(id)
                .filter(|k| text.len() > k.text.len() && text.starts_with(&k.text))
                .zip(self.bindings.iter().find(|b| b.session == id));
            let (from, source) = match visible {
                Some((k, b)) => (Some(k.text.len()), b.source),
                None => {
                    let live_text = tok.decode(live);
                    let ok = live_text.len() < text.len()
                        && text.as_bytes().starts_with(&live_text)
                        && text.is_char_boundary(live_text.len());
                    (ok.then_some(live_text.len()), "memory-text")
                }
            };
            if let Some(from) = from {
                let mut tokens = live.to_vec();
                tokens.extend(tokenize_suffix(tok, &job.prompt, from));
                best = Plan { tokens, source };
                best_len = live.len();
            } else {
                // A partial match: the pool rewinds to the common prefix.
                let common = live
                    .iter()
                    .zip(&job.tokens)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common > best_len && best.source == "cold" {
                    best.source = "memory-partial";
                }
            }
        }
        if let Some(disk) = self.pool.disk() {
            let ctx = self.engine.options().ctx as u32;
            if let Some(entry) = disk.store.lookup(text, ctx, self.engine.quant_bits()) {
                let boundary = text.is_char_boundary(entry.text_bytes as usize);
                if boundary && entry.header.tokens as usize > best_len {
                    if let Some(mut tokens) = checkpoint_tokens(&entry) {
                        tokens.extend(tokenize_suffix(tok, &job.prompt, entry.text_bytes as usize));
                        best = Plan {
                            tokens,
                            source: "disk-text",
                        };
                    }
                }
            }
        }
        best
    }

    fn run_job(&mut self, job: Job) {
        let t0 = Instant::now();
        let shared = Arc::clone(&self.shared);
        let plan = self.plan(&job);
        let ctx = self.engine.options().ctx;
        if plan.tokens.len() >= ctx {
            send(
                &job.events,
                Event::Failed(ApiError::context_length("messages", plan.tokens.len(), ctx)),
            );
            return;
        }
        let events = job.events.clone();
        let cancel = Arc::clone(&job.cancel);
        let shutdown = Arc::clone(&shared.shutdown);
        let mut progress = |p: &Progress| {
            send(
                &events,
                Event::Progress {
                    done: p.done,
                    total: p.total,
                },
            );
            if shutdown.load(Ordering::Relaxed) || events.is_closed() {
                cancel.raise();
            }
        };
        // The rendered text finds checkpoints keyed by a visible transcript.
        let prepared = self.pool.prepare_text(
            &self.engine,
            &plan.tokens,
            Some(job.prompt.text()),
            Control {
                progress: Some(&mut progress),
                cancel: Some(job.cancel.flag()),
            },
        );
        let (sid, report) = match prepared {
            Ok(r) => r,
            Err(e) => {
                let err = match e {
                    EngineError::Cancelled { .. } => {
                        shared.stats.jobs_cancelled.fetch_add(1, Ordering::Relaxed);
                        if shared.shutdown.load(Ordering::Relaxed) {
                            ApiError::unavailable("server shutting down")
                        } else {
                            ApiError::server("stream closed during prefill")
                        }
                    }
                    EngineError::ContextFull { needed, ctx } => {
                        ApiError::context_length("messages", needed, ctx)
                    }
                    e => ApiError::server(e.to_string()),
                };
                log(&format!(
                    "request {} failed in prefill: {}",
                    job.seq, err.message
                ));
                send(&job.events, Event::Failed(err));
                return;
            }
        };
        let stats = &shared.stats;
        stats
            .checkpoints_stored
            .fetch_add(report.stored as u64, Ordering::Relaxed);
        if report.disk_tokens > 0 {
            stats.disk_hits.fetch_add(1, Ordering::Relaxed);
            stats
                .disk_tokens
                .fetch_add(report.disk_tokens as u64, Ordering::Relaxed);
        }
        let source = if report.disk_tokens > 0 {
            "disk-text"
        } else if report.sync.reused == 0 {
            "cold"
        } else if plan.source == "cold" || plan.source == "disk-text" {
            "memory-partial"
        } else {
            plan.source
        };
        let mut usage = Usage {
            prompt: plan.tokens.len(),
            cached: report.sync.reused,
            completion: 0,
        };
        send(&job.events, Event::Started(usage));
        let t_prefill = t0.elapsed();

        // Generation.
        let eos = shared.specials.eos;
        let live_len = self.pool.session(sid).map_or(0, |s| s.len());
        let max_tokens = job.max_tokens.min(ctx.saturating_sub(live_len));
        let mut sampler = Sampler::new(job.sampling);
        let mut sink = TurnSink::new(TurnOptions {
            tok: &shared.tok,
            eos,
            thinking: job.think.on() && job.prompt.text().ends_with(THINK_START),
            tools: job.tools,
            parse: job.parse,
            stops: job.stops.clone(),
            id_prefix: job.id_prefix,
            events: &job.events,
            cancel: &job.cancel,
            shutdown: &shared.shutdown,
        });
        #[cfg(feature = "test-script")]
        if let Some(script) = &shared.opts.script {
            sink.forced = script.cursor_for(job.prompt.text(), &shared.tok, eos);
        }
        let engine = &self.engine;
        let opts = GenerateOptions {
            max_tokens,
            stop_tokens: vec![eos],
        };
        // Continued checkpoints are written during generation too (§6.4).
        let generated = self.pool.generate(
            engine,
            sid,
            &mut sampler,
            &opts,
            Some(job.cancel.flag()),
            &mut sink,
        );
        let cancel_latency = job.cancel.raised_at().map(|t| t.elapsed());
        usage.completion = generated.as_ref().map_or(0, |g| g.tokens.len());
        let gone = matches!(sink.reason, Some(SinkStop::ClientGone | SinkStop::Shutdown))
            || matches!(&generated, Ok(g) if g.finish == ds4_engine::Finish::Cancelled);
        let result = sink.finish(&generated, usage);
        self.after_turn(&job, sid, &result);

        stats.jobs_done.fetch_add(1, Ordering::Relaxed);
        if gone {
            stats.jobs_cancelled.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .prompt_tokens
            .fetch_add(usage.prompt as u64, Ordering::Relaxed);
        stats
            .cached_tokens
            .fetch_add(usage.cached as u64, Ordering::Relaxed);
        stats
            .prefilled_tokens
            .fetch_add(report.sync.evaluated as u64, Ordering::Relaxed);
        stats
            .generated_tokens
            .fetch_add(usage.completion as u64, Ordering::Relaxed);
        if let Ok(mut last) = stats.last.lock() {
            *last = Some(LastJob {
                seq: job.seq,
                kind: job.kind.name(),
                source,
                prompt: usage.prompt,
                cached: usage.cached,
                prefilled: report.sync.evaluated,
                generated: usage.completion,
                finish: result.finish.openai(),
                cancel_latency_ms: cancel_latency.map(|t| t.as_millis() as u64),
            });
        }
        let elapsed = t0.elapsed();
        if shared.opts.log_requests {
            log(&format!(
                "{} #{} prompt={} cached={} ({source}) prefill={} in {:.2}s, generated {} in {:.2}s, finish={}{}",
                job.kind.name(),
                job.seq,
                usage.prompt,
                usage.cached,
                report.sync.evaluated,
                t_prefill.as_secs_f64(),
                usage.completion,
                (elapsed - t_prefill).as_secs_f64(),
                result.finish.openai(),
                result
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
            ));
        }
        if let Some(t) = &mut self.trace {
            t.request(&job, &plan.tokens, source, &usage, &result);
        }
        send(&job.events, Event::Done(Box::new(result)));
    }

    /// Remembers tool-call blocks by id and the thinking-visible transcript.
    fn after_turn(&mut self, job: &Job, sid: SessionId, result: &TurnResult) {
        if let Some(raw) = &result.raw_dsml {
            if !result.calls.is_empty() {
                let ids: Vec<String> = result.calls.iter().map(|c| c.id.clone()).collect();
                self.shared.remember_tool_calls(&ids, raw);
            }
        }
        let frontier = self.pool.session(sid).map_or(0, |s| s.len());
        let live: Vec<SessionId> = self.pool.ids();
        self.bindings
            .retain(|b| b.session != sid && live.contains(&b.session));
        // §6.2 "Thinking": remember only a clean thinking turn without tools.
        let binding = if remember_thinking(job.kind, job.think, job.tools, job.tool_context, result)
        {
            thinking_visible(job.prompt.text(), &result.content).map(|v| (v, "thinking-visible"))
        } else if remember_tools_turn(job.kind, job.think, job.tools, result) {
            tools_visible(
                job.prompt.text(),
                &result.content,
                result.raw_dsml.as_deref(),
            )
            .map(|v| (v, "tools-visible"))
        } else {
            None
        };
        // The pool keeps the transcript: the next request's plan matches it,
        // and evict / shutdown checkpoints of this session are keyed by it
        // (§6.4), so a restart resumes the hidden reasoning too.
        if let Some((_, source)) = &binding {
            self.bindings.push(Binding {
                session: sid,
                source,
            });
        }
        let key = binding.map(|(text, _)| VisibleKey {
            text,
            flags: FLAG_THINKING_VISIBLE,
            len: frontier,
        });
        let _ = self.pool.set_visible_key(sid, key);
    }
}

/// The gate of the thinking-visible binding (§6.2, §9 item 75): a chat-kind
/// thinking turn without tools or tool history that closed `</think>` and
/// ended normally (end of sentence: a stop-sequence hit leaves text in the
/// KV that the next prompt does not have).
pub fn remember_thinking(
    kind: Kind,
    think: Think,
    tools: bool,
    tool_context: bool,
    r: &TurnResult,
) -> bool {
    kind != Kind::Completion
        && think.on()
        && !tools
        && !tool_context
        && r.finish == FinishReason::Stop
        && !r.stop_sequence
        && r.error.is_none()
        && r.thinking_closed
        && r.calls.is_empty()
        && !r.text.is_empty()
}

/// The gate of the tools-visible binding: a chat-kind thinking turn with
/// active tools that closed `</think>` and ended normally (with or without
/// tool calls).
pub fn remember_tools_turn(kind: Kind, think: Think, tools: bool, r: &TurnResult) -> bool {
    kind != Kind::Completion
        && think.on()
        && tools
        && matches!(r.finish, FinishReason::Stop | FinishReason::ToolCalls)
        && !r.stop_sequence
        && r.error.is_none()
        && r.thinking_closed
}

/// With tools the renderer keeps reasoning, so a client that does not echo
/// it back gets this turn rendered as `prompt`, `</think>`, content, DSML
/// (replayed by id), EOS, while the live KV holds the reasoning. A client
/// that echoes the reasoning matches the live text directly.
pub fn tools_visible(prompt: &str, content: &str, raw_dsml: Option<&str>) -> Option<String> {
    prompt.ends_with(THINK_START).then(|| {
        format!(
            "{prompt}{THINK_END}{content}{}{EOS}",
            raw_dsml.unwrap_or("")
        )
    })
}

/// `prompt − trailing "<think>" + "</think>" + content + EOS`: what the next
/// request renders for a finished thinking turn (its reasoning dropped).
pub fn thinking_visible(prompt: &str, content: &str) -> Option<String> {
    let base = prompt.strip_suffix(THINK_START)?;
    Some(format!("{base}{THINK_END}{content}{EOS}"))
}

/// `MMDD HH:MM:SS ds4-server: msg` on stderr.
pub fn log(msg: &str) {
    let secs = crate::ids::unix_now();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    eprintln!("{h:02}:{m:02}:{s:02} ds4-server: {msg}");
}
