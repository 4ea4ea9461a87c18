//! Per-session state of the CPU backend (MODEL.md §5.1).

use ds4_model::{AttentionKind, Config};

/// Initial compressor score: "minus infinity" as ds4 writes it, so that
/// empty slots get zero weight without producing NaNs.
pub const NEG_INF: f32 = -1e30;

/// The raw KV rows of one layer: a ring indexed by position.
#[derive(Clone, Debug, PartialEq)]
pub struct RawWindow {
    pub capacity: usize,
    pub dim: usize,
    pub rows: Vec<f32>,
}

impl RawWindow {
    pub fn row(&self, pos: usize) -> &[f32] {
        let s = pos % self.capacity;
        &self.rows[s * self.dim..(s + 1) * self.dim]
    }

    pub fn row_mut(&mut self, pos: usize) -> &mut [f32] {
        let s = pos % self.capacity;
        &mut self.rows[s * self.dim..(s + 1) * self.dim]
    }
}

/// One compressor instance: its rolling window state and the rows it has emitted.
#[derive(Clone, Debug, PartialEq)]
pub struct Compressor {
    pub ratio: usize,
    /// Width of an emitted row.
    pub dim: usize,
    /// Projection width (2·dim when windows overlap).
    pub width: usize,
    /// `(c·ratio) × width` projected values and scores of the current window(s).
    pub state_kv: Vec<f32>,
    pub state_score: Vec<f32>,
    /// Emitted rows, `n_rows × dim`, append-only.
    pub rows: Vec<f32>,
    pub n_rows: usize,
}

impl Compressor {
    fn new(ratio: usize, dim: usize, overlap: bool, ctx: usize) -> Self {
        let c = if overlap { 2 } else { 1 };
        let width = c * dim;
        Self {
            ratio,
            dim,
            width,
            state_kv: vec![0.0; c * ratio * width],
            state_score: vec![NEG_INF; c * ratio * width],
            rows: Vec::with_capacity((ctx / ratio + 2) * dim),
            n_rows: 0,
        }
    }

    pub fn overlapping(&self) -> bool {
        self.width == 2 * self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerKv {
    pub raw: RawWindow,
    pub attn: Option<Compressor>,
    pub index: Option<Compressor>,
}

/// The whole session state.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuKv {
    pub ctx: usize,
    pub max_batch: usize,
    pub n_tokens: usize,
    pub layers: Vec<LayerKv>,
}

impl CpuKv {
    pub fn new(cfg: &Config, ctx: usize, max_batch: usize) -> Self {
        // A batch writes all its raw rows before attending, and its first
        // token still needs window−1 older rows.
        let capacity = cfg.sliding_window + max_batch;
        let layers = (0..cfg.n_layer)
            .map(|il| {
                let ratio = cfg.compress_ratios[il];
                let kind = cfg.attention_kind(il);
                let overlap = kind == AttentionKind::Sparse;
                LayerKv {
                    raw: RawWindow {
                        capacity,
                        dim: cfg.head_dim,
                        rows: vec![0.0; capacity * cfg.head_dim],
                    },
                    attn: (kind != AttentionKind::Window)
                        .then(|| Compressor::new(ratio, cfg.head_dim, overlap, ctx)),
                    index: (kind == AttentionKind::Sparse)
                        .then(|| Compressor::new(ratio, cfg.indexer_head_dim, true, ctx)),
                }
            })
            .collect();
        Self {
            ctx,
            max_batch,
            n_tokens: 0,
            layers,
        }
    }
}
