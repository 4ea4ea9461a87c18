//! [`Engine`] (a model and a backend) and [`Session`] (one conversation's
//! KV state, its tokens and the logits of the next token).
//!
//! The KV state only moves forward: compressed rows are append-only and the
//! compressor state rolls (MODEL.md §5.1). So a session keeps *rewind
//! points* ([`Export::RewindPoint`]: raw window + compressor state + row
//! counts, a fixed size that does not grow with the context) and rewinds to
//! a shorter prefix by restoring the nearest point at or before it and
//! re-evaluating the rest. Rewind-point policy:
//!
//! * a point at the end of every synced prompt (before generation), so that
//!   "regenerate the last turn" and "edit the last message" restore without
//!   or with little re-evaluation;
//! * a point every `checkpoint_interval` tokens during a prefill (at chunk
//!   boundaries, which are absolute multiples of the prefill chunk), so a
//!   rewind into a long prompt re-evaluates at most one interval;
//! * at most `max_rewind_points`; when full, the oldest interval point goes
//!   first, then the oldest prompt-end point;
//! * restoring a point drops every later point (their compressed rows are
//!   about to be overwritten).
//!
//! Batching: prefill chunks end on absolute multiples of `prefill_chunk`,
//! so re-evaluating from a chunk-aligned point repeats the batches of an
//! uninterrupted run bit for bit. The CPU backend's results can differ in
//! the last bits between a batch of one token and a larger batch, so a
//! rewind that resumes at a non-aligned point matches a fresh run to
//! rounding, not bit for bit (tests assert both cases).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ds4_model::backend::{Backend, BackendError, Export};
use ds4_model::forward::{forward, Logits};
use ds4_model::payload::{KvState, SessionPayload};
use ds4_model::{Config, Model};

use crate::error::{EngineError, Result};

/// Options of an [`Engine`] and the sessions it makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Context size of every session (tokens).
    pub ctx: usize,
    /// Tokens per prefill batch; chunk boundaries are absolute multiples.
    pub prefill_chunk: usize,
    /// A rewind point every this many tokens of prefill (0: only at the end
    /// of each prompt). Rounded up to a multiple of `prefill_chunk`.
    pub checkpoint_interval: usize,
    /// Rewind points kept per session.
    pub max_rewind_points: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            ctx: 32768,
            prefill_chunk: 2048,
            checkpoint_interval: 8192,
            max_rewind_points: 8,
        }
    }
}

/// The model and the backend that runs it.
pub struct Engine<B: Backend> {
    model: Model,
    backend: B,
    opts: EngineOptions,
}

/// Where a rewind point came from (decides which goes first when full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PointKind {
    PromptEnd,
    Interval,
}

struct RewindPoint {
    kind: PointKind,
    state: KvState,
    logits: Vec<f32>,
}

impl RewindPoint {
    fn pos(&self) -> usize {
        self.state.n_tokens
    }
}

/// One conversation's state.
pub struct Session<B: Backend> {
    kv: B::Kv,
    tokens: Vec<u32>,
    logits: Vec<f32>,
    points: Vec<RewindPoint>,
}

/// A full in-memory image of a session: restoring it into any session of
/// the same engine continues bit-identically.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot(pub SessionPayload);

impl Snapshot {
    pub fn tokens(&self) -> &[u32] {
        &self.0.tokens
    }

    pub fn logits(&self) -> &[f32] {
        &self.0.logits
    }

    pub fn heap_bytes(&self) -> usize {
        self.0.state.heap_bytes() + 4 * (self.0.tokens.len() + self.0.logits.len())
    }
}

/// Progress of a prefill, reported after every chunk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Tokens reused from the session (not evaluated).
    pub reused: usize,
    /// Tokens evaluated so far in this sync.
    pub done: usize,
    /// Tokens this sync evaluates in all.
    pub total: usize,
    pub elapsed: Duration,
}

/// Progress reporting and cancellation of a long evaluation.
#[derive(Default)]
pub struct Control<'a> {
    /// Called after every prefill chunk.
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
    /// Checked before every chunk; when set the evaluation stops at the last
    /// chunk boundary (the session stays consistent, holding what was
    /// evaluated) and returns [`EngineError::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
}

impl Control<'_> {
    /// The same control for a nested call.
    pub fn reborrow(&mut self) -> Control<'_> {
        Control {
            progress: match &mut self.progress {
                Some(p) => Some(&mut **p),
                None => None,
            },
            cancel: self.cancel,
        }
    }
}

/// How a sync went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// Tokens of the prompt the session already held (never evaluated).
    pub reused: usize,
    /// Where evaluation resumed after a rewind (`None`: no rewind).
    pub rewound_to: Option<usize>,
    /// Tokens evaluated.
    pub evaluated: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<B: Backend> Engine<B> {
    pub fn new(model: Model, backend: B, opts: EngineOptions) -> Result<Self> {
        let bad = |field, why: &str| {
            Err(EngineError::Option {
                field,
                why: why.into(),
            })
        };
        if opts.ctx < 2 {
            return bad("ctx", "must be at least 2");
        }
        if opts.prefill_chunk == 0 {
            return bad("prefill_chunk", "must be at least 1");
        }
        if u32::try_from(opts.ctx).is_err() {
            return bad("ctx", "must fit in 32 bits (the payload header)");
        }
        Ok(Self {
            model,
            backend,
            opts,
        })
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Routed-expert quant bits for the disk cache header (SERVING.md §6.7):
    /// 4 when the routed experts are Q4_K, else 2.
    pub fn quant_bits(&self) -> u8 {
        let q4 = self
            .model
            .weights
            .layers
            .first()
            .is_some_and(|l| l.ffn.gate_exps.ggml_type == ds4_gguf::GgmlType::Q4_K);
        if q4 {
            4
        } else {
            2
        }
    }

    /// A fresh, empty session.
    pub fn new_session(&self) -> Result<Session<B>> {
        Ok(Session {
            kv: self
                .backend
                .new_kv(self.opts.ctx, self.opts.prefill_chunk)?,
            tokens: Vec::new(),
            logits: Vec::new(),
            points: Vec::new(),
        })
    }

    /// Memory a session holds: its state, logits and rewind points.
    pub fn session_bytes(&self, s: &Session<B>) -> usize {
        self.backend.kv_bytes(&s.kv)
            + 4 * (s.tokens.capacity() + s.logits.capacity())
            + s.points
                .iter()
                .map(|p| p.state.heap_bytes() + 4 * p.logits.len())
                .sum::<usize>()
    }

    fn check_tokens(&self, tokens: &[u32], pos0: usize) -> Result<()> {
        let vocab = self.config().vocab_size;
        if let Some((i, &id)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= vocab)
        {
            return Err(EngineError::TokenOutOfRange {
                id,
                pos: pos0 + i,
                vocab,
            });
        }
        Ok(())
    }

    fn check_fits(&self, needed: usize) -> Result<()> {
        if needed > self.opts.ctx {
            return Err(EngineError::ContextFull {
                needed,
                ctx: self.opts.ctx,
            });
        }
        Ok(())
    }

    /// Brings `s` to exactly `prompt`: keeps the common prefix, rewinds when
    /// the prompt diverges or is shorter, evaluates the rest in chunks.
    /// Afterwards [`Session::logits`] are those of the token after the prompt.
    pub fn sync(&self, s: &mut Session<B>, prompt: &[u32], ctl: Control<'_>) -> Result<SyncReport> {
        self.check_tokens(prompt, 0)?;
        self.check_fits(prompt.len())?;
        let common = common_prefix(&s.tokens, prompt);
        let mut report = SyncReport {
            reused: common,
            ..SyncReport::default()
        };
        if common == s.tokens.len() && common == prompt.len() {
            return Ok(report);
        }
        if common < s.tokens.len() {
            // The state holds tokens the prompt does not: go back to the
            // newest point at or before the common prefix. When the prompt
            // is a prefix of the session, a point exactly at its end also
            // restores the logits there; otherwise the tail is re-evaluated.
            let at = self.rewind(s, common)?;
            report.rewound_to = Some(at);
            report.reused = at;
        }
        let start = s.tokens.len();
        if start < prompt.len() {
            report.evaluated = self.prefill(s, &prompt[start..], start, ctl)?;
        }
        self.add_point(s, PointKind::PromptEnd)?;
        Ok(report)
    }

    /// Appends `tokens` (decoded or forced) and returns the new logits.
    pub fn eval<'s>(&self, s: &'s mut Session<B>, tokens: &[u32]) -> Result<&'s [f32]> {
        if tokens.is_empty() {
            return Ok(&s.logits);
        }
        self.check_tokens(tokens, s.tokens.len())?;
        self.check_fits(s.tokens.len() + tokens.len())?;
        for piece in tokens.chunks(self.opts.prefill_chunk) {
            self.forward(s, piece)?;
        }
        Ok(&s.logits)
    }

    fn forward(&self, s: &mut Session<B>, piece: &[u32]) -> Result<()> {
        let logits = match forward(
            &self.backend,
            &self.model.weights,
            &mut s.kv,
            piece,
            Logits::Last,
        ) {
            Ok(l) => l,
            Err(e) => {
                // A failed batch may have written part of the state: the
                // session can no longer be trusted beyond its last point.
                self.recover(s);
                return Err(match e {
                    BackendError::ContextFull { needed, ctx } => {
                        EngineError::ContextFull { needed, ctx }
                    }
                    e => e.into(),
                });
            }
        };
        s.tokens.extend_from_slice(piece);
        s.logits = logits;
        Ok(())
    }

    /// After a backend error mid-batch: back to the newest rewind point, or empty.
    fn recover(&self, s: &mut Session<B>) {
        let pos = s.points.last().map_or(0, |p| p.pos());
        if self.restore_point(s, pos).is_err() {
            let _ = self.reset(s);
        }
    }

    /// Chunked evaluation of `rest` at positions `pos0..`, chunk boundaries
    /// on absolute multiples of the prefill chunk.
    fn prefill(
        &self,
        s: &mut Session<B>,
        rest: &[u32],
        pos0: usize,
        ctl: Control<'_>,
    ) -> Result<usize> {
        let Control {
            mut progress,
            cancel,
        } = ctl;
        let chunk = self.opts.prefill_chunk;
        let interval = match self.opts.checkpoint_interval {
            0 => 0,
            n => n.div_ceil(chunk) * chunk,
        };
        let t0 = Instant::now();
        let mut done = 0;
        while done < rest.len() {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(EngineError::Cancelled {
                    evaluated: done,
                    len: s.tokens.len(),
                });
            }
            let pos = pos0 + done;
            let end = ((pos / chunk + 1) * chunk).min(pos0 + rest.len());
            self.forward(s, &rest[done..end - pos0])?;
            done = end - pos0;
            if interval > 0 && end.is_multiple_of(interval) && done < rest.len() {
                self.add_point(s, PointKind::Interval)?;
            }
            if let Some(cb) = progress.as_mut() {
                cb(&Progress {
                    reused: pos0,
                    done,
                    total: rest.len(),
                    elapsed: t0.elapsed(),
                });
            }
        }
        Ok(done)
    }

    /// Records a rewind point at the session's current position.
    fn add_point(&self, s: &mut Session<B>, kind: PointKind) -> Result<()> {
        if self.opts.max_rewind_points == 0 || s.tokens.is_empty() {
            return Ok(());
        }
        let pos = s.tokens.len();
        if let Some(p) = s.points.iter_mut().find(|p| p.pos() == pos) {
            // Already there: a prompt end outranks an interval point.
            if kind == PointKind::PromptEnd {
                p.kind = kind;
            }
            return Ok(());
        }
        let state = self.backend.kv_export(&s.kv, Export::RewindPoint)?;
        s.points.push(RewindPoint {
            kind,
            state,
            logits: s.logits.clone(),
        });
        s.points.sort_by_key(RewindPoint::pos);
        while s.points.len() > self.opts.max_rewind_points {
            let victim = s
                .points
                .iter()
                .position(|p| p.kind == PointKind::Interval)
                .unwrap_or(0);
            s.points.remove(victim);
        }
        Ok(())
    }

    /// Goes back to at most `target` tokens: the newest point at or before
    /// it, else empty. Returns the new length.
    fn rewind(&self, s: &mut Session<B>, target: usize) -> Result<usize> {
        let pos = s
            .points
            .iter()
            .rev()
            .map(RewindPoint::pos)
            .find(|&p| p <= target)
            .unwrap_or(0);
        self.restore_point(s, pos)?;
        Ok(pos)
    }

    /// Restores the point at `pos` (0: empty session) and drops later ones.
    fn restore_point(&self, s: &mut Session<B>, pos: usize) -> Result<()> {
        if pos == 0 {
            return self.reset(s);
        }
        let i = s
            .points
            .iter()
            .position(|p| p.pos() == pos)
            .ok_or_else(|| EngineError::Snapshot(format!("no rewind point at {pos}")))?;
        s.points.truncate(i + 1);
        let p = &s.points[i];
        if let Err(e) = self.backend.kv_rewind(&mut s.kv, &p.state) {
            self.reset(s)?;
            return Err(e.into());
        }
        s.logits = p.logits.clone();
        s.tokens.truncate(pos);
        Ok(())
    }

    /// Empties the session (fresh state, no points).
    pub fn reset(&self, s: &mut Session<B>) -> Result<()> {
        s.kv = self
            .backend
            .new_kv(self.opts.ctx, self.opts.prefill_chunk)?;
        s.tokens.clear();
        s.logits.clear();
        s.points.clear();
        Ok(())
    }

    /// A full image of the session (tokens, logits, canonical state).
    pub fn snapshot(&self, s: &Session<B>) -> Result<Snapshot> {
        Ok(Snapshot(SessionPayload {
            ctx: self.opts.ctx,
            prefill_chunk: self.opts.prefill_chunk,
            tokens: s.tokens.clone(),
            logits: s.logits.clone(),
            state: self.backend.kv_export(&s.kv, Export::Full)?,
        }))
    }

    /// Replaces the session by a snapshot (of this engine or a compatible
    /// payload). On error the session is left empty, never half-loaded.
    pub fn restore(&self, s: &mut Session<B>, snap: &Snapshot) -> Result<()> {
        let p = &snap.0;
        let fits = p.tokens.len() == p.state.n_tokens
            && p.ctx <= self.opts.ctx
            && p.tokens.len() < self.opts.ctx
            && (p.tokens.is_empty() || p.logits.len() == self.config().vocab_size);
        if !fits {
            return Err(EngineError::Snapshot(format!(
                "{} tokens, ctx {}, {} logits do not fit a session of ctx {} and vocab {}",
                p.tokens.len(),
                p.ctx,
                p.logits.len(),
                self.opts.ctx,
                self.config().vocab_size
            )));
        }
        self.check_tokens(&p.tokens, 0)?;
        self.reset(s)?;
        if p.tokens.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.backend.kv_import(&mut s.kv, &p.state) {
            self.reset(s)?;
            return Err(e.into());
        }
        s.tokens = p.tokens.clone();
        s.logits = p.logits.clone();
        self.add_point(s, PointKind::PromptEnd)?;
        Ok(())
    }

    /// The session as a DS4 session payload (MODEL.md §5.3).
    pub fn export_payload(&self, s: &Session<B>) -> Result<Vec<u8>> {
        Ok(self.snapshot(s)?.0.encode(self.config())?)
    }

    /// Loads a DS4 session payload. Every field and length is validated
    /// first: a payload that fails leaves the session as it was; a failure
    /// inside the backend leaves it empty. Never half-loaded.
    pub fn import_payload(&self, s: &mut Session<B>, bytes: &[u8]) -> Result<()> {
        let payload = SessionPayload::decode(bytes, self.config(), self.opts.ctx)?;
        self.restore(s, &Snapshot(payload))
    }
}

impl<B: Backend> Session<B> {
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Logits for the next token (empty while the session is empty).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Positions of the rewind points the session holds.
    pub fn rewind_points(&self) -> Vec<usize> {
        self.points.iter().map(RewindPoint::pos).collect()
    }

    /// The backend state (for backend-level tests and tools).
    pub fn kv(&self) -> &B::Kv {
        &self.kv
    }
}
