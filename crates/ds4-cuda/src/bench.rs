//! Measuring the backend: a [`Backend`] wrapper that brackets every stage
//! with CUDA events (for the per-stage breakdown of a decode step), the
//! bytes each stage must move, and a device-to-device copy as the
//! bandwidth ceiling. Used by `ds4-cuda-bench`.

use std::cell::{Cell, RefCell};

use ds4_model::backend::{AttentionInputs, Backend, CompressorKind, Export, Result as BResult};
use ds4_model::payload::KvState;
use ds4_model::weights::{
    AttentionWeights, CompressorWeights, FfnWeights, HcWeights, IndexerWeights, Routing,
};
use ds4_model::{AttentionKind, Config, Tensor, Weights};

use crate::error::Result;
use crate::gpu::Span;
use crate::{CudaAct, CudaBackend, CudaKv, CudaMix, CudaRoutes, CudaSelection};

/// The stage kinds of a forward pass, in the order a layer runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Embed,
    HcPre,
    RmsNorm,
    AttentionInputs,
    AppendRaw,
    CompressAttention,
    CompressIndexer,
    Index,
    Attend,
    AttentionOutput,
    HcPost,
    Route,
    Experts,
    OutputHead,
}

impl Stage {
    pub const ALL: [Stage; 14] = [
        Stage::Embed,
        Stage::HcPre,
        Stage::RmsNorm,
        Stage::AttentionInputs,
        Stage::AppendRaw,
        Stage::CompressAttention,
        Stage::CompressIndexer,
        Stage::Index,
        Stage::Attend,
        Stage::AttentionOutput,
        Stage::HcPost,
        Stage::Route,
        Stage::Experts,
        Stage::OutputHead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Embed => "embed",
            Stage::HcPre => "hc_pre",
            Stage::RmsNorm => "rms_norm",
            Stage::AttentionInputs => "attention_inputs",
            Stage::AppendRaw => "append_raw",
            Stage::CompressAttention => "compress (attention)",
            Stage::CompressIndexer => "compress (indexer)",
            Stage::Index => "index",
            Stage::Attend => "attend",
            Stage::AttentionOutput => "attention_output",
            Stage::HcPost => "hc_post",
            Stage::Route => "route",
            Stage::Experts => "experts",
            Stage::OutputHead => "output_head",
        }
    }
}

/// Time and calls per stage kind.
#[derive(Clone, Debug, Default)]
pub struct StageTimes {
    pub ms: [f64; 14],
    pub calls: [usize; 14],
}

/// A backend that records an event pair around every stage while `on`.
pub struct Timed<'a> {
    pub b: &'a CudaBackend,
    pub on: Cell<bool>,
    spans: RefCell<Vec<(Stage, Span)>>,
}

impl<'a> Timed<'a> {
    pub fn new(b: &'a CudaBackend) -> Self {
        Self {
            b,
            on: Cell::new(false),
            spans: RefCell::new(Vec::new()),
        }
    }

    fn run<R>(&self, stage: Stage, f: impl FnOnce() -> BResult<R>) -> BResult<R> {
        if !self.on.get() {
            return f();
        }
        let (r, span) = self.b.gpu().span(f)?;
        self.spans.borrow_mut().push((stage, span));
        r
    }

    /// Sums the recorded spans per stage (waits for the GPU) and clears them.
    pub fn take(&self) -> Result<StageTimes> {
        let mut t = StageTimes::default();
        for (stage, span) in self.spans.borrow_mut().drain(..) {
            let i = stage as usize;
            t.ms[i] += f64::from(span.ms()?);
            t.calls[i] += 1;
        }
        Ok(t)
    }
}

impl Backend for Timed<'_> {
    type Act = CudaAct;
    type Mix = CudaMix;
    type Kv = CudaKv;
    type Selection = CudaSelection;
    type Routes = CudaRoutes;

    fn config(&self) -> &Config {
        self.b.config()
    }
    fn new_kv(&self, ctx: usize, max_batch: usize) -> BResult<CudaKv> {
        self.b.new_kv(ctx, max_batch)
    }
    fn kv_len(&self, kv: &CudaKv) -> usize {
        self.b.kv_len(kv)
    }
    fn kv_advance(&self, kv: &mut CudaKv, n: usize) -> BResult<()> {
        self.b.kv_advance(kv, n)
    }
    fn kv_export(&self, kv: &CudaKv, what: Export) -> BResult<KvState> {
        self.b.kv_export(kv, what)
    }
    fn kv_import(&self, kv: &mut CudaKv, state: &KvState) -> BResult<()> {
        self.b.kv_import(kv, state)
    }
    fn kv_rewind(&self, kv: &mut CudaKv, point: &KvState) -> BResult<()> {
        self.b.kv_rewind(kv, point)
    }
    fn kv_bytes(&self, kv: &CudaKv) -> usize {
        self.b.kv_bytes(kv)
    }
    fn embed(&self, t: &Tensor, tokens: &[u32], pos0: usize) -> BResult<CudaAct> {
        self.run(Stage::Embed, || self.b.embed(t, tokens, pos0))
    }
    fn hc_pre(&self, w: &HcWeights, x: &CudaAct) -> BResult<(CudaAct, CudaMix)> {
        self.run(Stage::HcPre, || self.b.hc_pre(w, x))
    }
    fn hc_pre_norm(
        &self,
        w: &HcWeights,
        x: &CudaAct,
        norm: &Tensor,
    ) -> BResult<(CudaAct, CudaMix)> {
        self.run(Stage::HcPre, || self.b.hc_pre_norm(w, x, norm))
    }
    fn hc_post(&self, x: &mut CudaAct, f: &CudaAct, mix: &CudaMix) -> BResult<()> {
        self.run(Stage::HcPost, || self.b.hc_post(x, f, mix))
    }
    fn rms_norm(&self, x: &CudaAct, weight: &Tensor) -> BResult<CudaAct> {
        self.run(Stage::RmsNorm, || self.b.rms_norm(x, weight))
    }
    fn attention_inputs(
        &self,
        layer: usize,
        w: &AttentionWeights,
        n: &CudaAct,
        pos0: usize,
    ) -> BResult<AttentionInputs<CudaAct>> {
        self.run(Stage::AttentionInputs, || {
            self.b.attention_inputs(layer, w, n, pos0)
        })
    }
    fn append_raw(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        rows: &CudaAct,
        pos0: usize,
    ) -> BResult<()> {
        self.run(Stage::AppendRaw, || {
            self.b.append_raw(kv, layer, rows, pos0)
        })
    }
    fn compress(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        kind: CompressorKind,
        w: &CompressorWeights,
        n: &CudaAct,
        pos0: usize,
    ) -> BResult<()> {
        let stage = match kind {
            CompressorKind::Attention => Stage::CompressAttention,
            CompressorKind::Indexer => Stage::CompressIndexer,
        };
        self.run(stage, || self.b.compress(kv, layer, kind, w, n, pos0))
    }
    fn index(
        &self,
        kv: &CudaKv,
        layer: usize,
        w: &IndexerWeights,
        n: &CudaAct,
        q_latent: &CudaAct,
        pos0: usize,
    ) -> BResult<CudaSelection> {
        self.run(Stage::Index, || {
            self.b.index(kv, layer, w, n, q_latent, pos0)
        })
    }
    fn attend(
        &self,
        kv: &CudaKv,
        layer: usize,
        q: &CudaAct,
        sinks: &Tensor,
        selection: Option<&CudaSelection>,
        pos0: usize,
    ) -> BResult<CudaAct> {
        self.run(Stage::Attend, || {
            self.b.attend(kv, layer, q, sinks, selection, pos0)
        })
    }
    fn attention_output(
        &self,
        layer: usize,
        w: &AttentionWeights,
        o: &CudaAct,
        pos0: usize,
    ) -> BResult<CudaAct> {
        self.run(Stage::AttentionOutput, || {
            self.b.attention_output(layer, w, o, pos0)
        })
    }
    fn route(
        &self,
        layer: usize,
        w: &FfnWeights,
        n: &CudaAct,
        tokens: &[u32],
    ) -> BResult<CudaRoutes> {
        self.run(Stage::Route, || self.b.route(layer, w, n, tokens))
    }
    fn experts(
        &self,
        layer: usize,
        w: &FfnWeights,
        n: &CudaAct,
        routes: &CudaRoutes,
    ) -> BResult<CudaAct> {
        self.run(Stage::Experts, || self.b.experts(layer, w, n, routes))
    }
    fn output_head(
        &self,
        weights: &Weights,
        x: &CudaAct,
        rows: std::ops::Range<usize>,
    ) -> BResult<Vec<f32>> {
        self.run(Stage::OutputHead, || self.b.output_head(weights, x, rows))
    }
}

/// Bytes each stage must move in one decode step at position `pos` (the
/// token's own position): weights it reads once, and the KV rows attention
/// and the indexer read. Activations (a few hundred KB per layer) are left
/// out.
pub fn decode_stage_bytes(w: &Weights, cfg: &Config, pos: usize) -> [u64; 14] {
    let mut b = [0u64; 14];
    let all = |t: &Tensor| t.size as u64;
    let hc = |h: &HcWeights| all(&h.func) + all(&h.scale) + all(&h.base);
    let comp = |c: &CompressorWeights| all(&c.ape) + all(&c.kv) + all(&c.gate) + all(&c.norm);
    b[Stage::Embed as usize] += w.token_embd.row_bytes() as u64;
    let seen = pos + 1;
    for (il, l) in w.layers.iter().enumerate() {
        let a = &l.attn;
        b[Stage::HcPre as usize] += hc(&l.hc_attn) + hc(&l.hc_ffn);
        b[Stage::RmsNorm as usize] += all(&a.norm) + all(&l.ffn.norm);
        b[Stage::AttentionInputs as usize] +=
            all(&a.q_a) + all(&a.q_a_norm) + all(&a.q_b) + all(&a.kv) + all(&a.kv_norm);
        if let Some(c) = &a.compressor {
            b[Stage::CompressAttention as usize] += comp(c);
        }
        let ratio = cfg.compress_ratios[il];
        let visible = seen.checked_div(ratio).unwrap_or(0);
        let raw = seen.min(cfg.sliding_window);
        let mut comp_keys = visible;
        if let Some(ix) = &a.indexer {
            b[Stage::CompressIndexer as usize] += comp(&ix.compressor);
            if cfg.attention_kind(il) == AttentionKind::Sparse && visible > cfg.indexer_top_k {
                b[Stage::Index as usize] +=
                    all(&ix.q_b) + all(&ix.proj) + (visible * cfg.indexer_head_dim * 4) as u64;
                comp_keys = cfg.indexer_top_k;
            }
        }
        b[Stage::Attend as usize] += ((raw + comp_keys) * cfg.head_dim * 4) as u64 + all(&a.sinks);
        b[Stage::AttentionOutput as usize] += all(&a.output_a) + all(&a.output_b);
        let f = &l.ffn;
        b[Stage::Route as usize] += all(&f.router)
            + match &f.routing {
                Routing::Hash { tid2eid } => tid2eid.row_bytes() as u64,
                Routing::Learned { bias } => bias.as_ref().map_or(0, all),
            };
        let k = cfg.n_expert_used as u64;
        b[Stage::Experts as usize] += k
            * (f.gate_exps.matrix_bytes() + f.up_exps.matrix_bytes() + f.down_exps.matrix_bytes())
                as u64
            + all(&f.gate_shared)
            + all(&f.up_shared)
            + all(&f.down_shared);
    }
    b[Stage::OutputHead as usize] += hc(&w.output_hc) + all(&w.output_norm) + all(&w.output);
    b
}

/// Device-to-device copy bandwidth in GB/s (bytes read + written), over
/// `bytes` per copy, median of `reps` timed copies after a warm-up.
pub fn copy_bandwidth(b: &CudaBackend, bytes: usize, reps: usize) -> Result<f64> {
    let gpu = b.gpu();
    let n = bytes / 4;
    let src = gpu.alloc::<f32>(n)?;
    gpu.fill(&src, n, 1.5)?;
    let mut dst = gpu.alloc::<f32>(n)?;
    gpu.stream.memcpy_dtod(&src, &mut dst)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (r, span) = gpu.span(|| gpu.stream.memcpy_dtod(&src, &mut dst))?;
        r?;
        times.push(f64::from(span.ms()?));
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    Ok(2.0 * (n * 4) as f64 / (ms * 1e-3) / 1e9)
}

/// Blocks the stream for `ns` nanoseconds (so that the host can queue a
/// whole step before the GPU starts it: the step's GPU time then has no
/// launch gaps).
pub fn gate(b: &CudaBackend, ns: u64) -> Result<()> {
    b.gpu()
        .launch("spin_ns", (1, 1, 1), 32, 0, &[crate::gpu::Arg::U64(ns)])
}
