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
    /// Timed as HC-pre (the fused launch forms the HC-post too).
    fn hc_post_pre_norm(
        &self,
        x: &mut CudaAct,
        f: &CudaAct,
        mix: &CudaMix,
        next: &HcWeights,
        norm: &Tensor,
    ) -> BResult<(CudaAct, CudaMix)> {
        self.run(Stage::HcPre, || {
            self.b.hc_post_pre_norm(x, f, mix, next, norm)
        })
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

/// One weight product of a decode step timed on its own by
/// [`decode_products`].
pub struct ProductTiming {
    pub name: &'static str,
    /// Weight format and shape, e.g. `Q8_0 32768x1024`.
    pub what: String,
    /// Weight bytes one launch reads.
    pub bytes: usize,
    /// Median µs per launch.
    pub us: f64,
}

/// Times every weight product of one decode step (one token, random
/// activations, the same launches as the forward pass: multi-product GEMVs,
/// grouped output projection, six routed experts with their ids on the
/// device): `reps` launches back to back between two events (so consecutive
/// launches overlap as in decode), `runs` times, median. Launch `i` uses
/// layer `i % n_layer`'s matrices, so with a few layers the weights come
/// from DRAM as in decode, not from L2 (an 8-layer synthetic file moves
/// ~280 MB per product kind, L2 holds ~50 MB; with one layer, matrices
/// under ~50 MB are L2 hits after the first launch).
pub fn decode_products(
    b: &CudaBackend,
    w: &Weights,
    reps: usize,
    runs: usize,
) -> Result<Vec<ProductTiming>> {
    use crate::ops::{Items, Mat};
    let cfg = &b.cfg;
    if w.layers.is_empty() {
        return Err(crate::CudaError::Invalid("the model has no layers".into()));
    }
    let (d, hd, heads, rank) = (cfg.d_model, cfg.head_dim, cfg.n_head, cfg.q_lora_rank);
    let (groups, o_rank, k) = (cfg.n_out_group, cfg.o_lora_rank, cfg.n_expert_used);
    let random = |rows: usize, width: usize, seed: u64| -> Result<CudaAct> {
        let mut rng = ds4_model::synth::Rng::for_chunk(seed, 0, 0);
        let data: Vec<f32> = (0..rows * width)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        b.upload_act(rows, width, &data)
    };
    let ff = b.mat(&w.layers[0].ffn.gate_exps)?.n_rows;
    let x_d = random(1, d, 1)?;
    let x_rank = random(1, rank, 2)?;
    let x_o = random(1, heads * hd, 3)?;
    let x_low = random(1, groups * o_rank, 4)?;
    let x_ff = random(k, ff, 5)?;
    let ids: Vec<i32> = (0..k)
        .map(|i| ((i * 37 + 11) % cfg.n_expert) as i32)
        .collect();
    let ids = b.gpu.upload(&ids)?;
    let ids = b.gpu.ptr(&ids);
    let head = b.mat(&w.output)?;
    let y = b.new_act(k, (heads * hd).max(head.n_rows).max(2 * ff))?;
    let y2 = b.new_act(k, (heads * hd).max(2 * ff))?;
    let (py, py2) = (b.ptr(&y), b.ptr(&y2));
    let plain = |x: &CudaAct, rows: usize, out: u64| Items::plain(1, b.ptr(x), x.width, out, rows);
    let experts = |m: Mat, x: u64, x_stride: usize, x_div: usize, out: u64| Items {
        mat_ids: ids,
        x_div,
        ..Items::plain(k, x, x_stride, out, m.n_rows)
    };
    let bytes = |m: &Mat| m.n_rows * m.row_bytes;
    let what = |m: &Mat, n: usize| {
        let mats = if n > 1 {
            format!("{n} x ")
        } else {
            String::new()
        };
        format!("{mats}{} {}x{}", m.ggml_type, m.n_rows, m.row_len)
    };
    type Job = Vec<(Mat, Items)>;
    // (name, what, weight bytes, launches) of each product of a layer.
    type Products = Vec<(&'static str, String, usize, Job)>;
    let layer_jobs = |layer: &ds4_model::weights::LayerWeights| -> Result<Products> {
        let at = &layer.attn;
        let ffn = &layer.ffn;
        let (qa, kv, qb) = (b.mat(&at.q_a)?, b.mat(&at.kv)?, b.mat(&at.q_b)?);
        let (oa, ob) = (b.mat(&at.output_a)?, b.mat(&at.output_b)?);
        let router = b.mat(&ffn.router)?;
        let (mg, mu, md) = (
            b.mat(&ffn.gate_exps)?,
            b.mat(&ffn.up_exps)?,
            b.mat(&ffn.down_exps)?,
        );
        let (sg, su, sd) = (
            b.mat(&ffn.gate_shared)?,
            b.mat(&ffn.up_shared)?,
            b.mat(&ffn.down_shared)?,
        );
        let oa_all = oa.rows(0, groups * o_rank);
        let mut jobs: Products = vec![
            (
                "attn q_a + kv",
                format!("{} + {}", what(&qa, 1), what(&kv, 1)),
                bytes(&qa) + bytes(&kv),
                vec![
                    (qa, plain(&x_d, qa.n_rows, py)),
                    (kv, plain(&x_d, kv.n_rows, py2)),
                ],
            ),
            (
                "attn q_b",
                what(&qb, 1),
                bytes(&qb),
                vec![(qb, plain(&x_rank, qb.n_rows, py))],
            ),
            (
                "attn output_a (grouped)",
                what(&oa_all, 1),
                bytes(&oa_all),
                vec![(
                    oa_all,
                    Items {
                        x_grp: Some((o_rank, heads / groups * hd)),
                        ..plain(&x_o, oa_all.n_rows, py)
                    },
                )],
            ),
            (
                "attn output_b",
                what(&ob, 1),
                bytes(&ob),
                vec![(ob, plain(&x_low, ob.n_rows, py))],
            ),
            (
                "router",
                what(&router, 1),
                bytes(&router),
                vec![(router, plain(&x_d, router.n_rows, py))],
            ),
            (
                "routed gate + up",
                format!("{} + {}", what(&mg, k), what(&mu, k)),
                k * (bytes(&mg) + bytes(&mu)),
                vec![
                    (mg, experts(mg, b.ptr(&x_d), d, k, py)),
                    (mu, experts(mu, b.ptr(&x_d), d, k, py2)),
                ],
            ),
            (
                "routed down",
                what(&md, k),
                k * bytes(&md),
                vec![(md, experts(md, b.ptr(&x_ff), ff, 1, py))],
            ),
            (
                "shared gate + up",
                format!("{} + {}", what(&sg, 1), what(&su, 1)),
                bytes(&sg) + bytes(&su),
                vec![
                    (sg, plain(&x_d, sg.n_rows, py)),
                    (su, plain(&x_d, su.n_rows, py2)),
                ],
            ),
            (
                "shared down",
                what(&sd, 1),
                bytes(&sd),
                vec![(sd, plain(&x_ff, sd.n_rows, py))],
            ),
            (
                "output head",
                what(&head, 1),
                bytes(&head),
                vec![(head, plain(&x_d, head.n_rows, py))],
            ),
        ];
        if let Some(c) = &at.compressor {
            let (ck, cg) = (b.mat(&c.kv)?, b.mat(&c.gate)?);
            jobs.push((
                "compressor kv + gate",
                format!("{} + {}", what(&ck, 1), what(&cg, 1)),
                bytes(&ck) + bytes(&cg),
                vec![
                    (ck, plain(&x_d, ck.n_rows, py)),
                    (cg, plain(&x_d, cg.n_rows, py2)),
                ],
            ));
        }
        Ok(jobs)
    };
    let per_layer = w
        .layers
        .iter()
        .map(layer_jobs)
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(per_layer[0].len());
    for (p, (name, what, bytes, _)) in per_layer[0].iter().enumerate() {
        let job = |i: usize| &per_layer[i % per_layer.len()][p].3;
        b.products(job(0))?; // warm-up
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let (r, span) = b.gpu.span(|| -> Result<()> {
                for i in 0..reps.max(1) {
                    b.products(job(i))?;
                }
                Ok(())
            })?;
            r?;
            times.push(f64::from(span.ms()?) * 1e3 / reps.max(1) as f64);
        }
        times.sort_by(f64::total_cmp);
        out.push(ProductTiming {
            name,
            what: what.clone(),
            bytes: *bytes,
            us: times[times.len() / 2],
        });
    }
    Ok(out)
}
