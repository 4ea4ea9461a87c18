//! Several live sessions within a memory budget (ds4 keeps one), least
//! recently used evicted first, evicted sessions saved to the disk cache.
//!
//! Choosing the session for a prompt (first rule that applies):
//! 1. a session whose tokens are all a prefix of the prompt (the same
//!    conversation, continued) — the longest such;
//! 2. a new session, if one more fits the budget and `max_sessions`;
//! 3. the session sharing the longest common prefix (> 0) with the prompt,
//!    rewound (an edit or a regenerated turn of that conversation); its
//!    whole state is first saved to disk (`evict`, as ds4 does on a miss);
//! 4. the least recently used session, saved to disk and emptied.
//!
//! A session that starts empty (or was rewound below what the disk has)
//! then looks for the longest disk checkpoint that prefixes the prompt
//! (text hash, then token check), loads it, and evaluates the rest with the
//! cold and continued saves of SERVING.md §6.4.

use std::sync::atomic::AtomicBool;

use crate::error::{EngineError, Result};
use crate::generate::{generate_with, GenerateOptions, Generated, TokenSink};
use crate::kvstore::{KvStore, SaveReason, StoreOutcome, StoreRequest, ToolMapping};
use crate::sampling::Sampler;
use crate::session::{Control, Engine, Session, SyncReport};
use ds4_model::backend::Backend;

/// Renders tokens to the cache text (the text layer's detokenizer).
pub type TextOf = Box<dyn Fn(&[u32]) -> String + Send + Sync>;

/// The tool-id mappings to store with a checkpoint of this cache text (the
/// server's exact-DSML replay memory; SERVING.md §3.8). The store keeps only
/// those whose block occurs in the text.
pub type ToolMapOf = Box<dyn Fn(&str) -> Vec<ToolMapping> + Send + Sync>;

/// The disk side of a pool.
pub struct DiskCache {
    pub store: KvStore,
    pub text_of: TextOf,
    /// `None`: checkpoints carry no tool-id map.
    pub tool_map_of: Option<ToolMapOf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Bytes all live sessions may hold together (state, logits, rewind points).
    pub memory_budget: usize,
    /// At most this many live sessions (ds4: 1).
    pub max_sessions: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            memory_budget: usize::MAX,
            max_sessions: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

struct Slot<B: Backend> {
    id: SessionId,
    session: Session<B>,
    last_used: u64,
    /// Length of the last cold/continued store of this session.
    last_store: usize,
    /// The caller's visible transcript for the session as it is now (see
    /// [`SessionPool::set_visible_key`]); cleared whenever the pool changes
    /// the session.
    key: Option<VisibleKey>,
}

/// What the next request will render for a session whose KV also holds text
/// the client never sees again (hidden reasoning): evict and shutdown
/// checkpoints are keyed by it (SERVING.md §6.4, flags bit 1 / bit 2), so a
/// later prompt that starts with it finds the checkpoint, and loading it
/// resumes the whole live state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisibleKey {
    pub text: String,
    /// `kvstore::format::FLAG_RESPONSES_VISIBLE` or `FLAG_THINKING_VISIBLE`.
    pub flags: u8,
    /// The session length the key describes.
    pub len: usize,
}

/// Where the tokens of a prepared prompt came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PrepareReport {
    pub sync: SyncReport,
    /// Tokens loaded from a disk checkpoint.
    pub disk_tokens: usize,
    /// Checkpoints written while preparing.
    pub stored: usize,
    /// Sessions evicted to make room.
    pub evicted_sessions: usize,
}

pub struct SessionPool<B: Backend> {
    opts: PoolOptions,
    slots: Vec<Slot<B>>,
    disk: Option<DiskCache>,
    tick: u64,
    next_id: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<B: Backend> SessionPool<B> {
    pub fn new(opts: PoolOptions, disk: Option<DiskCache>) -> Self {
        Self {
            opts,
            slots: Vec::new(),
            disk,
            tick: 0,
            next_id: 1,
        }
    }

    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    pub fn ids(&self) -> Vec<SessionId> {
        self.slots.iter().map(|s| s.id).collect()
    }

    pub fn session(&self, id: SessionId) -> Option<&Session<B>> {
        self.slots.iter().find(|s| s.id == id).map(|s| &s.session)
    }

    fn slot_mut(&mut self, id: SessionId) -> Result<&mut Slot<B>> {
        find_slot(&mut self.slots, id)
    }

    /// A session the caller is about to change: marked used, its visible key
    /// dropped; with the disk side (a separate borrow) for continued saves.
    fn slot_for_change(&mut self, id: SessionId) -> Result<(Option<&DiskCache>, &mut Slot<B>)> {
        self.tick += 1;
        let tick = self.tick;
        let slot = find_slot(&mut self.slots, id)?;
        slot.last_used = tick;
        slot.key = None;
        Ok((self.disk.as_ref(), slot))
    }

    /// Bytes all live sessions hold.
    pub fn memory_bytes(&self, engine: &Engine<B>) -> usize {
        self.slots
            .iter()
            .map(|s| engine.session_bytes(&s.session))
            .sum()
    }

    /// Saves a session's whole state to disk (if on and long enough).
    fn save(
        &self,
        engine: &Engine<B>,
        s: &Session<B>,
        len: usize,
        reason: SaveReason,
    ) -> Result<bool> {
        save_to(self.disk.as_ref(), engine, s, len, reason, None)
    }

    /// Saves slot `i` whole for `reason` (evict, shutdown), keyed by its
    /// visible transcript when that describes the session as it is.
    fn save_slot(&self, engine: &Engine<B>, i: usize, reason: SaveReason) -> Result<bool> {
        let slot = &self.slots[i];
        let len = slot.session.len();
        let key = slot.key.as_ref().filter(|k| k.len == len);
        save_to(self.disk.as_ref(), engine, &slot.session, len, reason, key)
    }

    /// The visible transcript set for a session, while it still describes
    /// the session as it is.
    pub fn visible_key(&self, id: SessionId) -> Option<&VisibleKey> {
        let slot = self.slots.iter().find(|s| s.id == id)?;
        slot.key.as_ref().filter(|k| k.len == slot.session.len())
    }

    /// Sets (or clears) the visible transcript of a session at its current
    /// length; any later change to the session through the pool drops it.
    pub fn set_visible_key(&mut self, id: SessionId, key: Option<VisibleKey>) -> Result<()> {
        let slot = self.slot_mut(id)?;
        slot.key = key.filter(|k| k.len == slot.session.len() && !k.text.is_empty());
        Ok(())
    }

    /// Picks (or makes) the session for `prompt` and syncs it, with disk
    /// lookups and saves. Returns the session and what happened.
    pub fn prepare(
        &mut self,
        engine: &Engine<B>,
        prompt: &[u32],
        ctl: Control<'_>,
    ) -> Result<(SessionId, PrepareReport)> {
        self.prepare_text(engine, prompt, None, ctl)
    }

    /// [`SessionPool::prepare`] for a prompt whose text the caller rendered:
    /// the disk lookup uses `text` instead of the decoded tokens, which also
    /// finds checkpoints keyed by a visible transcript ([`VisibleKey`]); a
    /// checkpoint is still used only when its tokens start `prompt`.
    pub fn prepare_text(
        &mut self,
        engine: &Engine<B>,
        prompt: &[u32],
        text: Option<&str>,
        mut ctl: Control<'_>,
    ) -> Result<(SessionId, PrepareReport)> {
        self.tick += 1;
        let mut report = PrepareReport::default();
        let extension = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.session.is_empty() && prompt.starts_with(s.session.tokens()))
            .max_by_key(|(_, s)| s.session.len())
            .map(|(i, _)| i);
        let idx = match extension {
            Some(i) => i,
            None if self.has_room(engine) => self.push_new(engine)?,
            None => {
                let best = self
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i, common_prefix(s.session.tokens(), prompt)))
                    .max_by_key(|&(i, c)| (c, self.slots[i].last_used));
                match best {
                    Some((i, c)) if c > 0 => {
                        self.save_slot(engine, i, SaveReason::Evict)?;
                        i
                    }
                    _ => {
                        let i = self.lru_index().unwrap_or(0);
                        if self.slots.is_empty() {
                            self.push_new(engine)?
                        } else {
                            self.save_slot(engine, i, SaveReason::Evict)?;
                            report.evicted_sessions += 1;
                            engine.reset(&mut self.slots[i].session)?;
                            // Another conversation now: a new id, so a
                            // handle to the evicted one finds nothing.
                            self.slots[i].id = SessionId(self.next_id);
                            self.next_id += 1;
                            self.slots[i].last_store = 0;
                            i
                        }
                    }
                }
            }
        };
        self.slots[idx].last_used = self.tick;
        // The session is about to change: its visible key no longer holds.
        self.slots[idx].key = None;
        let id = self.slots[idx].id;
        let live_common = common_prefix(self.slots[idx].session.tokens(), prompt);
        let cold = live_common == 0;
        if live_common < prompt.len() {
            report.disk_tokens = self.try_disk(engine, idx, prompt, text, live_common)?;
        }
        // Cold save boundary (no reuse at all), then continued frontiers.
        let mut stops: Vec<(usize, SaveReason)> = Vec::new();
        if let Some(disk) = &self.disk {
            let policy = disk.store.policy();
            let from = live_common.max(report.disk_tokens);
            if cold && report.disk_tokens == 0 {
                if let Some(b) = policy.cold_boundary(prompt) {
                    stops.push((b, SaveReason::Cold));
                }
            }
            let last = self.slots[idx].last_store;
            for t in policy.continued_targets(from, prompt.len(), last) {
                if !stops.iter().any(|&(b, _)| b == t) {
                    stops.push((t, SaveReason::Continued));
                }
            }
            stops.sort_by_key(|&(b, _)| b);
        }
        let mut first = true;
        for (b, reason) in stops
            .iter()
            .copied()
            .chain([(prompt.len(), SaveReason::Unknown)])
        {
            let r = engine.sync(&mut self.slots[idx].session, &prompt[..b], ctl.reborrow())?;
            if first {
                report.sync = r;
                first = false;
            } else {
                report.sync.evaluated += r.evaluated;
            }
            if reason != SaveReason::Unknown {
                let s = &self.slots[idx].session;
                if self.save(engine, s, b, reason)? {
                    report.stored += 1;
                }
                let slot = &mut self.slots[idx];
                slot.last_store = slot.last_store.max(b);
            }
        }
        report.evicted_sessions += self.enforce_budget(engine, id)?;
        Ok((id, report))
    }

    /// Loads the longest disk checkpoint that extends the live prefix.
    fn try_disk(
        &mut self,
        engine: &Engine<B>,
        idx: usize,
        prompt: &[u32],
        text: Option<&str>,
        live: usize,
    ) -> Result<usize> {
        // The caller's rendered text first (it also matches checkpoints keyed
        // by a visible transcript); the decoded tokens only if that finds
        // nothing usable.
        if let Some(t) = text {
            if let Some(n) = self.load_checkpoint(engine, idx, prompt, t, live)? {
                return Ok(n);
            }
        }
        let Some(disk) = &self.disk else {
            return Ok(0);
        };
        let decoded = (disk.text_of)(prompt);
        if text == Some(decoded.as_str()) {
            return Ok(0);
        }
        Ok(self
            .load_checkpoint(engine, idx, prompt, &decoded, live)?
            .unwrap_or(0))
    }

    /// Loads into slot `idx` the longest checkpoint whose text prefixes
    /// `text`, if it is longer than `live` and its tokens start `prompt`;
    /// returns its token count.
    fn load_checkpoint(
        &mut self,
        engine: &Engine<B>,
        idx: usize,
        prompt: &[u32],
        text: &str,
        live: usize,
    ) -> Result<Option<usize>> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        let Some(entry) = disk
            .store
            .lookup(text, engine.options().ctx as u32, engine.quant_bits())
        else {
            return Ok(None);
        };
        let n = entry.header.tokens as usize;
        if n <= live || n > prompt.len() {
            return Ok(None);
        }
        let Ok(loaded) = disk.store.load(&entry) else {
            return Ok(None);
        };
        let session = &mut self.slots[idx].session;
        if let Err(e) = engine.import_payload(session, &loaded.payload) {
            // A payload that fails validation is damaged or foreign: it is
            // moved aside and the session is rebuilt from the prompt.
            disk.store.quarantine(&entry.path, &e.to_string());
            return Ok(None);
        }
        if session.len() != n || !prompt.starts_with(session.tokens()) {
            // Same text, other tokens (a different tokenization, or a
            // visible key whose hidden part this prompt does not have):
            // unusable at the token level; the file itself is fine.
            engine.reset(session)?;
            return Ok(None);
        }
        let policy = disk.store.policy();
        if n > policy.cold_max_tokens && policy.cold_max_tokens > 0 {
            // ds4 "consume": the live session will be saved again later.
            let _ = disk.store.remove(&entry);
        } else {
            let _ = disk.store.touch(&entry);
        }
        self.slots[idx].last_store = self.slots[idx].last_store.max(n);
        Ok(Some(n))
    }

    /// Evaluates generated tokens in a session, with continued saves.
    pub fn eval(&mut self, engine: &Engine<B>, id: SessionId, tokens: &[u32]) -> Result<Vec<f32>> {
        let (disk, slot) = self.slot_for_change(id)?;
        let logits = engine.eval(&mut slot.session, tokens)?.to_vec();
        continued_save(disk, engine, &slot.session, &mut slot.last_store)?;
        Ok(logits)
    }

    /// Generates in a session ([`generate_with`]), writing a continued
    /// checkpoint whenever the live length reaches a continued frontier and
    /// the sink allows one (SERVING.md §6.4: after each decoded token, not
    /// inside a tool-call block).
    pub fn generate(
        &mut self,
        engine: &Engine<B>,
        id: SessionId,
        sampler: &mut Sampler,
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        sink: &mut dyn TokenSink,
    ) -> Result<Generated> {
        let (disk, slot) = self.slot_for_change(id)?;
        let mut last = slot.last_store;
        let generated = generate_with(
            engine,
            &mut slot.session,
            sampler,
            opts,
            cancel,
            sink,
            &mut |s, sink| {
                if sink.checkpoint_ok() {
                    continued_save(disk, engine, s, &mut last)?;
                }
                Ok(())
            },
        );
        slot.last_store = last;
        generated
    }

    /// Runs `f` on a session (sampling, snapshots) and marks it used.
    pub fn with_session<R>(
        &mut self,
        id: SessionId,
        f: impl FnOnce(&mut Session<B>) -> R,
    ) -> Result<R> {
        // `f` may change the session.
        let (_, slot) = self.slot_for_change(id)?;
        Ok(f(&mut slot.session))
    }

    /// Clean exit: saves every live session (`shutdown`).
    pub fn shutdown(&mut self, engine: &Engine<B>) -> Result<usize> {
        let mut n = 0;
        for i in 0..self.slots.len() {
            if self.save_slot(engine, i, SaveReason::Shutdown)? {
                n += 1;
            }
        }
        Ok(n)
    }

    fn has_room(&self, engine: &Engine<B>) -> bool {
        if self.slots.len() >= self.opts.max_sessions.max(1) {
            return false;
        }
        // A new session costs about what the smallest live one does.
        let each = self
            .slots
            .iter()
            .map(|s| engine.session_bytes(&s.session))
            .min()
            .unwrap_or(0);
        self.memory_bytes(engine).saturating_add(each) <= self.opts.memory_budget
    }

    fn push_new(&mut self, engine: &Engine<B>) -> Result<usize> {
        let session = engine.new_session()?;
        self.slots.push(Slot {
            id: SessionId(self.next_id),
            session,
            last_used: self.tick,
            last_store: 0,
            key: None,
        });
        self.next_id += 1;
        Ok(self.slots.len() - 1)
    }

    fn lru_index(&self) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.last_used)
            .map(|(i, _)| i)
    }

    /// Drops least recently used sessions (saved to disk first) while the
    /// pool is over its memory budget; `keep` stays.
    fn enforce_budget(&mut self, engine: &Engine<B>, keep: SessionId) -> Result<usize> {
        let mut n = 0;
        while self.memory_bytes(engine) > self.opts.memory_budget {
            let victim = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.id != keep)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i);
            let Some(i) = victim else {
                break;
            };
            self.save_slot(engine, i, SaveReason::Evict)?;
            self.slots.remove(i);
            n += 1;
        }
        Ok(n)
    }
}

fn find_slot<B: Backend>(slots: &mut [Slot<B>], id: SessionId) -> Result<&mut Slot<B>> {
    slots
        .iter_mut()
        .find(|s| s.id == id)
        .ok_or(EngineError::UnknownSession(id.0))
}

/// A continued checkpoint of `s` when its length is a continued frontier
/// beyond `last` (SERVING.md §6.4); `last` then becomes that length.
fn continued_save<B: Backend>(
    disk: Option<&DiskCache>,
    engine: &Engine<B>,
    s: &Session<B>,
    last: &mut usize,
) -> Result<()> {
    let len = s.len();
    if disk.is_some_and(|d| d.store.policy().is_continued_target(len, *last)) {
        save_to(disk, engine, s, len, SaveReason::Continued, None)?;
        *last = len;
    }
    Ok(())
}

/// Saves a session's state up to `len` to `disk` (if on and long enough).
fn save_to<B: Backend>(
    disk: Option<&DiskCache>,
    engine: &Engine<B>,
    s: &Session<B>,
    len: usize,
    reason: SaveReason,
    key: Option<&VisibleKey>,
) -> Result<bool> {
    let Some(disk) = disk else {
        return Ok(false);
    };
    if len == 0 || len < disk.store.policy().min_tokens || s.len() != len {
        return Ok(false);
    }
    let payload = engine.export_payload(s)?;
    let text = match key {
        Some(k) => k.text.clone(),
        None => (disk.text_of)(&s.tokens()[..len]),
    };
    let tool_map = disk
        .tool_map_of
        .as_ref()
        .map_or_else(Vec::new, |f| f(&text));
    let req = StoreRequest {
        text: &text,
        payload: &payload,
        tokens: len as u32,
        ctx: engine.options().ctx as u32,
        quant_bits: engine.quant_bits(),
        reason,
        key_flags: key.map_or(0, |k| k.flags),
        tool_map: &tool_map,
        protect: &[],
    };
    // A failed write (full disk, I/O error) is logged by the store and
    // costs only the checkpoint: the live session is unaffected.
    Ok(matches!(
        disk.store.store(&req),
        Ok(StoreOutcome::Written { .. } | StoreOutcome::Kept { .. })
    ))
}
