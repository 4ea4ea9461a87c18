//! VRAM planning: what a model and a context need on the GPU, and a clear
//! error when that does not fit (the ~81 GiB q2 file on an 80 GB H100, say).

use std::fmt::Write as _;

use ds4_gguf::GgmlType;
use ds4_model::layout::{self, ExpertRole, ExpertTypes, TypeRule};
use ds4_model::{AttentionKind, Config};

use crate::error::{CudaError, Result};

/// Bytes the driver, the module and allocator fragmentation take beyond
/// what the plan counts (measured contexts take ~500 MiB on Hopper).
pub const RESERVE_BYTES: u64 = 768 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Weight bytes per GGML type, largest first.
    pub weights_by_type: Vec<(GgmlType, u64)>,
    pub weights: u64,
    /// Session state for `ctx` tokens (raw rings, compressed rows, compressor state).
    pub kv: u64,
    /// Largest transient activations of one batch of `max_batch` tokens.
    pub scratch: u64,
    pub ctx: usize,
    pub max_batch: usize,
}

const GIB: f64 = (1u64 << 30) as f64;

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / GIB)
}

impl MemoryPlan {
    /// The plan for the given tensors (type, bytes) at a context and batch size.
    pub fn new(
        cfg: &Config,
        tensors: impl IntoIterator<Item = (GgmlType, u64)>,
        ctx: usize,
        max_batch: usize,
    ) -> Self {
        let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
        for (t, bytes) in tensors {
            match by_type.iter_mut().find(|(x, _)| *x == t) {
                Some((_, b)) => *b += bytes,
                None => by_type.push((t, bytes)),
            }
        }
        by_type.sort_by_key(|b| std::cmp::Reverse(b.1));
        let weights = by_type.iter().map(|(_, b)| b).sum();
        Self {
            weights_by_type: by_type,
            weights,
            kv: kv_bytes(cfg, ctx, max_batch),
            scratch: scratch_bytes(cfg, ctx, max_batch),
            ctx,
            max_batch,
        }
    }

    /// The plan of a file with the published layout and the given routed
    /// expert types (no file needed: for planning before a download).
    pub fn for_layout(cfg: &Config, experts: ExpertTypes, ctx: usize, max_batch: usize) -> Self {
        let tensors = layout::main_layout(cfg).into_iter().map(|s| {
            let t = match s.rule {
                TypeRule::Exact(t) => t,
                TypeRule::Routed(ExpertRole::Down) => experts.down,
                TypeRule::Routed(_) => experts.gate_up,
                TypeRule::F16OrF32 => GgmlType::F16,
            };
            let rows: u64 = s.dims[1..].iter().product();
            let bytes = t
                .row_bytes(s.dims[0])
                .expect("layout rows are whole blocks")
                * rows;
            (t, bytes)
        });
        Self::new(cfg, tensors, ctx, max_batch)
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.scratch + RESERVE_BYTES
    }

    /// One line per item, for `ds4` to print.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "weights {}:", gib(self.weights));
        for (t, b) in &self.weights_by_type {
            let _ = writeln!(s, "  {:<8} {}", t.to_string(), gib(*b));
        }
        let _ = writeln!(s, "KV for {} tokens: {}", self.ctx, gib(self.kv));
        let _ = writeln!(
            s,
            "scratch (batch {}): {}",
            self.max_batch,
            gib(self.scratch)
        );
        let _ = writeln!(s, "driver reserve: {}", gib(RESERVE_BYTES));
        let _ = write!(s, "total: {}", gib(self.total()));
        s
    }

    /// Checks the plan against the device's free memory.
    pub fn check(&self, free: u64, total_on_device: u64, device: &str) -> Result<()> {
        if self.total() <= free {
            return Ok(());
        }
        let mut msg = format!(
            "the model does not fit on {device}: it needs {} but {} of {} are free\n{}",
            gib(self.total()),
            gib(free),
            gib(total_on_device),
            self.report()
        );
        if self.weights + RESERVE_BYTES > free {
            msg.push_str(
                "\nthe weights alone do not fit: use a smaller quantisation, a GPU with more \
                 memory (an H200 has 141 GB), or the CPU backend",
            );
        } else {
            msg.push_str("\na shorter context (--ctx) or a smaller prefill batch would fit");
        }
        Err(CudaError::OutOfMemory(msg))
    }
}

/// Rows of the raw KV ring: a batch writes all its rows before attending,
/// and its first token still needs window − 1 older rows.
pub fn raw_capacity(cfg: &Config, max_batch: usize) -> usize {
    cfg.sliding_window + max_batch
}

/// Compressed-row capacity of a compressor of `ratio` for `ctx` tokens.
pub fn comp_capacity(ctx: usize, ratio: usize) -> usize {
    ctx / ratio + 2
}

/// Bytes of the session state (f32 everywhere, as the CPU reference keeps it).
pub fn kv_bytes(cfg: &Config, ctx: usize, max_batch: usize) -> u64 {
    let f = 4u64;
    let hd = cfg.head_dim as u64;
    let mut total = 0u64;
    for il in 0..cfg.n_layer {
        total += raw_capacity(cfg, max_batch) as u64 * hd * f;
        let r = cfg.compress_ratios[il];
        match cfg.attention_kind(il) {
            AttentionKind::Window => {}
            kind => {
                let c = if kind == AttentionKind::Sparse { 2 } else { 1 };
                let width = c * hd;
                total += comp_capacity(ctx, r) as u64 * hd * f;
                total += 2 * (c * r as u64) * width * f;
                if kind == AttentionKind::Sparse {
                    let id = cfg.indexer_head_dim as u64;
                    total += comp_capacity(ctx, r) as u64 * id * f;
                    total += 2 * (2 * r as u64) * (2 * id) * f;
                }
            }
        }
    }
    total
}

/// An upper bound of the transient buffers alive at once during one batch.
pub fn scratch_bytes(cfg: &Config, ctx: usize, max_batch: usize) -> u64 {
    let t = max_batch as u64;
    let f = 4u64;
    let d = cfg.d_model as u64;
    let hc = cfg.n_hc as u64 * d;
    let q = (cfg.n_head * cfg.head_dim) as u64;
    let k = cfg.n_expert_used as u64;
    let ff = cfg.d_ff_expert as u64;
    // HC state, its normed copy and the next state; q, attention output and its copy.
    let hc_part = 3 * t * hc;
    let attn = 3 * t * q + t * (cfg.n_out_group * cfg.o_lora_rank) as u64;
    let experts = t * k * (3 * ff + d) + t * (3 * ff + 2 * d);
    let indexer = t * (ctx as u64 / 4 + 1)
        + t * (cfg.indexer_heads * cfg.indexer_head_dim) as u64
        + t * cfg.indexer_top_k as u64;
    let logits = t * cfg.vocab_size as u64;
    (hc_part + attn + experts.max(indexer) + logits) * f
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100_FREE: u64 = 81_559 * (1 << 20) - (500 << 20);

    #[test]
    fn q2_weights_match_the_published_size() {
        let plan = MemoryPlan::for_layout(&Config::flash(), ExpertTypes::Q2, 4096, 256);
        let w = plan.weights as f64 / GIB;
        assert!((w - 80.76).abs() < 0.05, "q2 weights {w} GiB");
        let q4 = MemoryPlan::for_layout(&Config::flash(), ExpertTypes::Q4, 4096, 256);
        let w4 = q4.weights as f64 / GIB;
        assert!((w4 - 153.32).abs() < 0.05, "q4 weights {w4} GiB");
    }

    #[test]
    fn q2_does_not_fit_an_h100_and_says_why() {
        let plan = MemoryPlan::for_layout(&Config::flash(), ExpertTypes::Q2, 32_768, 256);
        let err = plan
            .check(H100_FREE, 81_559 << 20, "NVIDIA H100 80GB HBM3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit"), "{err}");
        assert!(err.contains("weights alone"), "{err}");
        assert!(err.contains("IQ2_XXS"), "{err}");
        eprintln!("{err}");
    }

    #[test]
    fn q2_fits_an_h200_with_a_long_context() {
        let plan = MemoryPlan::for_layout(&Config::flash(), ExpertTypes::Q2, 262_144, 512);
        plan.check(140 << 30, 141 << 30, "NVIDIA H200").unwrap();
    }

    #[test]
    fn kv_matches_the_spec_table() {
        // MODEL.md 5.2: ~452 MiB of f32 state at 32768 tokens (raw ring of 128 rows).
        let kv = kv_bytes(&Config::flash(), 32_768, 0) as f64 / (1u64 << 20) as f64;
        assert!((kv - 452.0).abs() < 3.0, "kv {kv} MiB");
    }
}
