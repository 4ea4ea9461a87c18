//! Per-session state on the GPU (MODEL.md 5.1). Row counts are tracked on
//! the host: they follow from the positions alone, so no stage ever needs
//! to read a counter back from the device.

use cudarc::driver::CudaSlice;
use ds4_model::{AttentionKind, Config};

use crate::error::Result;
use crate::gpu::Gpu;
use crate::memory::{comp_capacity, raw_capacity};

/// Initial compressor score, ds4's "minus infinity" (see ds4-cpu's kv.rs).
pub const NEG_INF: f32 = -1e30;

/// One compressor instance: rolling window state and the emitted rows.
pub struct GpuCompressor {
    pub ratio: usize,
    pub dim: usize,
    pub width: usize,
    /// `(c·ratio) × width` projected values and scores.
    pub state_kv: CudaSlice<f32>,
    pub state_score: CudaSlice<f32>,
    /// `capacity × dim`, append-only.
    pub rows: CudaSlice<f32>,
    pub capacity: usize,
    pub n_rows: usize,
}

impl GpuCompressor {
    fn new(gpu: &Gpu, ratio: usize, dim: usize, overlap: bool, ctx: usize) -> Result<Self> {
        let c = if overlap { 2 } else { 1 };
        let width = c * dim;
        let n_state = c * ratio * width;
        let state_score = gpu.alloc::<f32>(n_state)?;
        gpu.fill(&state_score, n_state, NEG_INF)?;
        let capacity = comp_capacity(ctx, ratio);
        Ok(Self {
            ratio,
            dim,
            width,
            state_kv: gpu.zeros(n_state)?,
            state_score,
            rows: gpu.zeros(capacity * dim)?,
            capacity,
            n_rows: 0,
        })
    }

    pub fn overlapping(&self) -> bool {
        self.width == 2 * self.dim
    }
}

pub struct GpuLayerKv {
    /// Ring of raw rows, slot = position mod capacity.
    pub raw: CudaSlice<f32>,
    pub raw_capacity: usize,
    pub attn: Option<GpuCompressor>,
    pub index: Option<GpuCompressor>,
}

/// The whole session state of the CUDA backend.
pub struct CudaKv {
    pub ctx: usize,
    pub max_batch: usize,
    pub n_tokens: usize,
    pub layers: Vec<GpuLayerKv>,
}

impl CudaKv {
    pub fn new(gpu: &Gpu, cfg: &Config, ctx: usize, max_batch: usize) -> Result<Self> {
        let cap = raw_capacity(cfg, max_batch);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let ratio = cfg.compress_ratios[il];
            let kind = cfg.attention_kind(il);
            let sparse = kind == AttentionKind::Sparse;
            layers.push(GpuLayerKv {
                raw: gpu.zeros(cap * cfg.head_dim)?,
                raw_capacity: cap,
                attn: match kind {
                    AttentionKind::Window => None,
                    _ => Some(GpuCompressor::new(gpu, ratio, cfg.head_dim, sparse, ctx)?),
                },
                index: match sparse {
                    true => Some(GpuCompressor::new(
                        gpu,
                        ratio,
                        cfg.indexer_head_dim,
                        true,
                        ctx,
                    )?),
                    false => None,
                },
            });
        }
        Ok(Self {
            ctx,
            max_batch,
            n_tokens: 0,
            layers,
        })
    }
}
