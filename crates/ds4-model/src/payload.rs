//! The DS4 session payload (MODEL.md §5.3): the serialised per-session state
//! that snapshots and the disk KV cache carry, and its host-side form
//! [`KvState`], which every backend exports and imports.
//!
//! Layout (little-endian): 13 `u32` header fields, `u32[N]` tokens,
//! `f32[vocab]` next-token logits, `u32[n_layer]` attention compressed-row
//! counts, `u32[n_layer]` indexer row counts, then per layer the live raw rows
//! (oldest first), and for compressed layers the rows and the compressor
//! state (`S_kv` then `S_sc`), and for ratio-4 layers the indexer rows and
//! state. No trailing bytes.
//!
//! The state is *canonical*: compressor state rows that only hold data no
//! future pool can read (MODEL.md §3.4, the reset after a batched prefill)
//! are reset to kv 0 / score −1e30 by [`KvState::canonicalize`], so the
//! payload does not depend on how the tokens were batched.

use crate::config::{AttentionKind, Config};

/// `"DSV4"` read as a little-endian u32.
pub const PAYLOAD_MAGIC: u32 = 0x3456_5344;
pub const PAYLOAD_VERSION: u32 = 1;
/// Header fields.
pub const PAYLOAD_HEADER_WORDS: usize = 13;
/// The score of an empty compressor slot, as ds4 writes it.
pub const EMPTY_SCORE: f32 = -1e30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("session payload is truncated: {needed} bytes needed, {have} present")]
    Truncated { needed: u64, have: u64 },
    #[error("session payload has {0} trailing bytes")]
    Trailing(u64),
    #[error("session payload field '{field}': expected {expected}, found {found}")]
    Field {
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("session payload token {index} is {id}, outside the vocabulary ({vocab})")]
    Token { index: usize, id: u32, vocab: usize },
    #[error("session state does not fit the model: {0}")]
    Shape(String),
}

fn field(field: &'static str, expected: impl ToString, found: impl ToString) -> PayloadError {
    PayloadError::Field {
        field,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// One compressor instance's state in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct CompressorState {
    /// Rows emitted so far (`⌊N / ratio⌋`).
    pub n_rows: usize,
    /// The emitted rows, `n_rows × dim`. Empty in a rewind point
    /// ([`KvState::rows_included`] false): rows are append-only, so a rewind
    /// only needs the count.
    pub rows: Vec<f32>,
    /// `(c·ratio) × (c·dim)` projected values, row-major.
    pub state_kv: Vec<f32>,
    /// Same shape: scores (`EMPTY_SCORE` for empty slots).
    pub state_score: Vec<f32>,
}

/// One layer's state in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerState {
    /// The live raw rows for positions `N−R..N−1`, oldest first, `R × head_dim`.
    pub raw: Vec<f32>,
    /// The attention compressor (ratio ≠ 0 layers).
    pub attn: Option<CompressorState>,
    /// The indexer compressor (ratio-4 layers).
    pub index: Option<CompressorState>,
}

/// The whole per-session KV state of a backend, in host memory and in the
/// payload's logical order (raw rows by position, not by ring slot).
#[derive(Clone, Debug, PartialEq)]
pub struct KvState {
    /// Tokens the state holds (N).
    pub n_tokens: usize,
    /// Physical raw ring rows of the backend that exported it (payload
    /// header field 4; informational, not needed to import).
    pub raw_capacity: usize,
    /// Whether the compressed rows are included (a full export) or only
    /// their counts (a rewind point).
    pub rows_included: bool,
    pub layers: Vec<LayerState>,
}

/// What the payload format expects of one layer, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerShape {
    pub ratio: usize,
    pub kind: AttentionKind,
}

impl LayerShape {
    pub fn of(cfg: &Config, il: usize) -> Self {
        Self {
            ratio: cfg.compress_ratios[il],
            kind: cfg.attention_kind(il),
        }
    }

    /// `(state rows, state width)` of a compressor with rows of `dim` floats.
    pub fn state_shape(&self, dim: usize) -> (usize, usize) {
        let c = if self.kind == AttentionKind::Sparse {
            2
        } else {
            1
        };
        (c * self.ratio, c * dim)
    }
}

/// The raw window a session of `ctx` tokens keeps.
pub fn raw_window(cfg: &Config, ctx: usize) -> usize {
    cfg.sliding_window.min(ctx)
}

/// Header field 6: the compressed-row capacity (`ctx / smallest ratio + 2`).
pub fn compressed_capacity(cfg: &Config, ctx: usize) -> usize {
    let min_ratio = cfg
        .compress_ratios
        .iter()
        .copied()
        .filter(|&r| r > 0)
        .min()
        .unwrap_or(crate::config::SPARSE_RATIO);
    ctx / min_ratio + 2
}

impl CompressorState {
    /// Resets the state rows that no future pool reads (MODEL.md §3.4):
    /// slots of the current window not yet written at N tokens. For the
    /// overlapping (ratio-4) compressor these are rows `r + N mod r .. 2r`;
    /// for the plain one rows `N mod r .. r`.
    fn reset_stale(&mut self, shape: LayerShape, width: usize, n_tokens: usize) {
        let r = shape.ratio;
        let first = match shape.kind {
            AttentionKind::Sparse => r + n_tokens % r,
            _ => n_tokens % r,
        };
        let rows = self.state_kv.len() / width.max(1);
        for row in first..rows {
            self.state_kv[row * width..(row + 1) * width].fill(0.0);
            self.state_score[row * width..(row + 1) * width].fill(EMPTY_SCORE);
        }
    }
}

impl KvState {
    /// Makes the state canonical (see the module docs).
    pub fn canonicalize(&mut self, cfg: &Config) {
        let n = self.n_tokens;
        for (il, layer) in self.layers.iter_mut().enumerate() {
            let shape = LayerShape::of(cfg, il);
            if let Some(c) = &mut layer.attn {
                c.reset_stale(shape, shape.state_shape(cfg.head_dim).1, n);
            }
            if let Some(c) = &mut layer.index {
                c.reset_stale(shape, shape.state_shape(cfg.indexer_head_dim).1, n);
            }
        }
    }

    /// Checks every length against the config: the contract between a
    /// backend's export and import, and what a decoded payload guarantees.
    pub fn validate(&self, cfg: &Config, ctx: usize) -> Result<(), PayloadError> {
        let shape_err = |s: String| Err(PayloadError::Shape(s));
        if self.layers.len() != cfg.n_layer {
            return shape_err(format!(
                "{} layers, the model has {}",
                self.layers.len(),
                cfg.n_layer
            ));
        }
        let n = self.n_tokens;
        let live_raw = raw_window(cfg, ctx).min(n);
        for (il, layer) in self.layers.iter().enumerate() {
            let shape = LayerShape::of(cfg, il);
            if layer.raw.len() != live_raw * cfg.head_dim {
                return shape_err(format!(
                    "layer {il}: {} raw values, expected {live_raw} rows of {}",
                    layer.raw.len(),
                    cfg.head_dim
                ));
            }
            let wants_attn = shape.kind != AttentionKind::Window;
            let wants_index = shape.kind == AttentionKind::Sparse;
            for (name, c, wanted, dim) in [
                ("attention", &layer.attn, wants_attn, cfg.head_dim),
                ("indexer", &layer.index, wants_index, cfg.indexer_head_dim),
            ] {
                match (c, wanted) {
                    (None, false) => {}
                    (Some(c), true) => {
                        let (rows, width) = shape.state_shape(dim);
                        let expected_rows = n / shape.ratio;
                        if c.n_rows != expected_rows {
                            return shape_err(format!(
                                "layer {il} {name}: {} compressed rows, expected {expected_rows} for {n} tokens",
                                c.n_rows
                            ));
                        }
                        let row_values = if self.rows_included {
                            c.n_rows * dim
                        } else {
                            0
                        };
                        if c.rows.len() != row_values
                            || c.state_kv.len() != rows * width
                            || c.state_score.len() != rows * width
                        {
                            return shape_err(format!(
                                "layer {il} {name}: compressor buffers have the wrong length"
                            ));
                        }
                    }
                    _ => {
                        return shape_err(format!(
                            "layer {il}: {name} compressor presence does not match the layer kind"
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes of host memory the state holds.
    pub fn heap_bytes(&self) -> usize {
        let c = |c: &Option<CompressorState>| {
            c.as_ref()
                .map_or(0, |c| c.rows.len() + c.state_kv.len() + c.state_score.len())
        };
        4 * self
            .layers
            .iter()
            .map(|l| l.raw.len() + c(&l.attn) + c(&l.index))
            .sum::<usize>()
    }
}

/// A whole session: tokens, next-token logits, KV state.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionPayload {
    /// Context size the session was created with (header field 2).
    pub ctx: usize,
    /// Prefill chunk of the session (header field 3).
    pub prefill_chunk: usize,
    pub tokens: Vec<u32>,
    /// Logits for the next position, `vocab` values.
    pub logits: Vec<f32>,
    /// Must hold the compressed rows (`rows_included`).
    pub state: KvState,
}

/// The 13 header fields, as read (for inspection without the model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadHeader {
    pub magic: u32,
    pub version: u32,
    pub ctx: u32,
    pub prefill_chunk: u32,
    pub raw_capacity: u32,
    pub raw_window: u32,
    pub compressed_capacity: u32,
    pub n_tokens: u32,
    pub n_layer: u32,
    pub head_dim: u32,
    pub indexer_head_dim: u32,
    pub vocab: u32,
    pub live_raw: u32,
}

impl PayloadHeader {
    pub const BYTES: usize = PAYLOAD_HEADER_WORDS * 4;

    /// Reads the header fields (no validation beyond the length).
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        if bytes.len() < Self::BYTES {
            return Err(PayloadError::Truncated {
                needed: Self::BYTES as u64,
                have: bytes.len() as u64,
            });
        }
        let w = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4"));
        Ok(Self {
            magic: w(0),
            version: w(1),
            ctx: w(2),
            prefill_chunk: w(3),
            raw_capacity: w(4),
            raw_window: w(5),
            compressed_capacity: w(6),
            n_tokens: w(7),
            n_layer: w(8),
            head_dim: w(9),
            indexer_head_dim: w(10),
            vocab: w(11),
            live_raw: w(12),
        })
    }

    fn words(&self) -> [u32; PAYLOAD_HEADER_WORDS] {
        [
            self.magic,
            self.version,
            self.ctx,
            self.prefill_chunk,
            self.raw_capacity,
            self.raw_window,
            self.compressed_capacity,
            self.n_tokens,
            self.n_layer,
            self.head_dim,
            self.indexer_head_dim,
            self.vocab,
            self.live_raw,
        ]
    }
}

/// The byte size of a payload of `n_tokens` for `cfg` and a session of `ctx`.
pub fn payload_bytes(cfg: &Config, ctx: usize, n_tokens: usize) -> u64 {
    let n = n_tokens as u64;
    let mut floats = cfg.vocab_size as u64;
    let live_raw = raw_window(cfg, ctx).min(n_tokens) as u64;
    for il in 0..cfg.n_layer {
        let shape = LayerShape::of(cfg, il);
        floats += live_raw * cfg.head_dim as u64;
        let mut comp = |dim: usize| {
            let (rows, width) = shape.state_shape(dim);
            floats += (n / shape.ratio as u64) * dim as u64 + 2 * (rows * width) as u64;
        };
        if shape.kind != AttentionKind::Window {
            comp(cfg.head_dim);
        }
        if shape.kind == AttentionKind::Sparse {
            comp(cfg.indexer_head_dim);
        }
    }
    4 * (PAYLOAD_HEADER_WORDS as u64 + n + 2 * cfg.n_layer as u64 + floats)
}

fn put_u32s(out: &mut Vec<u8>, v: impl IntoIterator<Item = u32>) {
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.reserve(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn to_u32(name: &'static str, v: usize) -> Result<u32, PayloadError> {
    u32::try_from(v).map_err(|_| field(name, "a value below 2^32", v))
}

impl SessionPayload {
    /// Serialises the payload; checks its shapes against `cfg` first.
    pub fn encode(&self, cfg: &Config) -> Result<Vec<u8>, PayloadError> {
        if !self.state.rows_included {
            return Err(PayloadError::Shape(
                "a rewind point (without compressed rows) cannot be serialised".into(),
            ));
        }
        if self.tokens.len() != self.state.n_tokens {
            return Err(field("token count", self.state.n_tokens, self.tokens.len()));
        }
        if self.logits.len() != cfg.vocab_size {
            return Err(field("logits", cfg.vocab_size, self.logits.len()));
        }
        self.state.validate(cfg, self.ctx)?;
        let n = self.tokens.len();
        let header = PayloadHeader {
            magic: PAYLOAD_MAGIC,
            version: PAYLOAD_VERSION,
            ctx: to_u32("ctx", self.ctx)?,
            prefill_chunk: to_u32("prefill chunk", self.prefill_chunk)?,
            raw_capacity: to_u32("raw capacity", self.state.raw_capacity)?,
            raw_window: to_u32("raw window", raw_window(cfg, self.ctx))?,
            compressed_capacity: to_u32("compressed capacity", compressed_capacity(cfg, self.ctx))?,
            n_tokens: to_u32("token count", n)?,
            n_layer: to_u32("layer count", cfg.n_layer)?,
            head_dim: to_u32("head dim", cfg.head_dim)?,
            indexer_head_dim: to_u32("indexer head dim", cfg.indexer_head_dim)?,
            vocab: to_u32("vocab", cfg.vocab_size)?,
            live_raw: to_u32("live raw rows", raw_window(cfg, self.ctx).min(n))?,
        };
        let mut out = Vec::with_capacity(payload_bytes(cfg, self.ctx, n) as usize);
        put_u32s(&mut out, header.words());
        put_u32s(&mut out, self.tokens.iter().copied());
        put_f32s(&mut out, &self.logits);
        let count = |c: &Option<CompressorState>| c.as_ref().map_or(0, |c| c.n_rows as u32);
        put_u32s(&mut out, self.state.layers.iter().map(|l| count(&l.attn)));
        put_u32s(&mut out, self.state.layers.iter().map(|l| count(&l.index)));
        for layer in &self.state.layers {
            put_f32s(&mut out, &layer.raw);
            for c in [&layer.attn, &layer.index].into_iter().flatten() {
                put_f32s(&mut out, &c.rows);
                put_f32s(&mut out, &c.state_kv);
                put_f32s(&mut out, &c.state_score);
            }
        }
        debug_assert_eq!(out.len() as u64, payload_bytes(cfg, self.ctx, n));
        Ok(out)
    }

    /// Parses and validates a payload for a session of `ctx` tokens of the
    /// model `cfg`. Every length is checked against the input before any
    /// allocation; a payload that passes imports safely.
    ///
    /// Checks (ds4's, MODEL.md §5.3): magic, version, layer count, dims and
    /// vocab equal the model's; saved ctx ≤ `ctx`; N < `ctx`; raw window =
    /// min(window, `ctx`); live raw rows = min(window, N); row counts equal
    /// ⌊N/ratio⌋ (stricter than ds4's "fit the capacity": anything else is
    /// an inconsistent state); token ids inside the vocabulary; no trailing
    /// bytes. The prefill chunk is not required to match: the import
    /// re-lays the raw rows into the backend's own ring, so the chunk does
    /// not affect the state (ds4 requires equality because its GPU ring is
    /// sized by it).
    pub fn decode(bytes: &[u8], cfg: &Config, ctx: usize) -> Result<Self, PayloadError> {
        let h = PayloadHeader::parse(bytes)?;
        if h.magic != PAYLOAD_MAGIC {
            return Err(field(
                "magic",
                format!("{PAYLOAD_MAGIC:#010x}"),
                format!("{:#010x}", h.magic),
            ));
        }
        if h.version != PAYLOAD_VERSION {
            return Err(field("version", PAYLOAD_VERSION, h.version));
        }
        for (name, want, got) in [
            ("layer count", cfg.n_layer, h.n_layer),
            ("head dim", cfg.head_dim, h.head_dim),
            ("indexer head dim", cfg.indexer_head_dim, h.indexer_head_dim),
            ("vocab", cfg.vocab_size, h.vocab),
        ] {
            if want as u64 != got as u64 {
                return Err(field(name, want, got));
            }
        }
        let saved_ctx = h.ctx as usize;
        if saved_ctx > ctx || saved_ctx == 0 {
            return Err(field("saved ctx", format!("1..={ctx}"), saved_ctx));
        }
        let n = h.n_tokens as usize;
        if n >= ctx {
            return Err(field("token count", format!("< {ctx}"), n));
        }
        let window = raw_window(cfg, ctx);
        if h.raw_window as usize != window {
            return Err(field("raw window", window, h.raw_window));
        }
        let live_raw = window.min(n);
        if h.live_raw as usize != live_raw {
            return Err(field("live raw rows", live_raw, h.live_raw));
        }
        let needed = payload_bytes(cfg, ctx, n);
        if (bytes.len() as u64) < needed {
            return Err(PayloadError::Truncated {
                needed,
                have: bytes.len() as u64,
            });
        }
        if bytes.len() as u64 > needed {
            return Err(PayloadError::Trailing(bytes.len() as u64 - needed));
        }
        let mut r = Reader {
            bytes,
            at: PayloadHeader::BYTES,
        };
        let tokens = r.u32s(n);
        if let Some((index, &id)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= cfg.vocab_size)
        {
            return Err(PayloadError::Token {
                index,
                id,
                vocab: cfg.vocab_size,
            });
        }
        let logits = r.f32s(cfg.vocab_size);
        let attn_counts = r.u32s(cfg.n_layer);
        let index_counts = r.u32s(cfg.n_layer);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let shape = LayerShape::of(cfg, il);
            let expected = |present: bool| if present { n / shape.ratio } else { 0 };
            let has_attn = shape.kind != AttentionKind::Window;
            let has_index = shape.kind == AttentionKind::Sparse;
            for (name, got, present) in [
                ("attention compressed rows", attn_counts[il], has_attn),
                ("indexer compressed rows", index_counts[il], has_index),
            ] {
                if got as usize != expected(present) {
                    return Err(PayloadError::Field {
                        field: name,
                        expected: format!("{} (layer {il})", expected(present)),
                        found: got.to_string(),
                    });
                }
            }
            let raw = r.f32s(live_raw * cfg.head_dim);
            let mut comp = |dim: usize| {
                let (rows, width) = shape.state_shape(dim);
                let n_rows = n / shape.ratio;
                CompressorState {
                    n_rows,
                    rows: r.f32s(n_rows * dim),
                    state_kv: r.f32s(rows * width),
                    state_score: r.f32s(rows * width),
                }
            };
            let attn = has_attn.then(|| comp(cfg.head_dim));
            let index = has_index.then(|| comp(cfg.indexer_head_dim));
            layers.push(LayerState { raw, attn, index });
        }
        debug_assert_eq!(r.at, bytes.len());
        Ok(Self {
            ctx: saved_ctx,
            prefill_chunk: h.prefill_chunk as usize,
            tokens,
            logits,
            state: KvState {
                n_tokens: n,
                raw_capacity: h.raw_capacity as usize,
                rows_included: true,
                layers,
            },
        })
    }
}

/// Sequential reads; the caller checked the total length first.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.bytes[self.at..self.at + n * 4];
        self.at += n * 4;
        s
    }

    fn u32s(&mut self, n: usize) -> Vec<u32> {
        self.take(n)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect()
    }

    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect()
    }
}
