//! The CPU backend: the reference implementation of every model stage.
//!
//! Weights are read in place from the mapped GGUF; activations stay in f32
//! (no 8-bit activation rounding), which keeps this backend within ~1e-6 of
//! a plain f32 transformers run on the same weights. Speed comes from the
//! SIMD dot kernels of `ds4-quant` and from splitting matrix rows over threads.

mod act;
mod attention;
mod ffn;
mod hc;
pub mod kernels;
pub mod kv;
mod matmul;
mod payload;
mod pool;

use std::sync::Arc;

use ds4_gguf::GgufFile;
use ds4_model::backend::{AttentionInputs, Backend, BackendError, CompressorKind, Export, Result};
use ds4_model::numerics::{Numerics, Rope};
use ds4_model::payload::KvState;
use ds4_model::weights::{
    AttentionWeights, CompressorWeights, FfnWeights, HcWeights, IndexerWeights,
};
use ds4_model::{Config, Model, Tensor, Weights};

pub use act::Act;
pub use ffn::Routes;
pub use hc::Mix;
pub use kv::CpuKv;

/// Options of the CPU backend.
#[derive(Clone, Debug)]
pub struct CpuOptions {
    pub numerics: Numerics,
    /// Worker threads for matrix products (≥ 1).
    pub threads: usize,
}

impl Default for CpuOptions {
    fn default() -> Self {
        Self {
            numerics: Numerics::Official,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

pub struct CpuBackend {
    file: Arc<GgufFile>,
    cfg: Config,
    opts: CpuOptions,
    ropes: Vec<Rope>,
}

/// Per token, the compressed rows it may attend to (`None`: all visible rows).
pub type Selection = Vec<Option<Vec<u32>>>;

impl CpuBackend {
    pub fn new(model: &Model, opts: CpuOptions) -> Self {
        let cfg = model.config.clone();
        let ropes = (0..cfg.n_layer)
            .map(|il| Rope::for_layer(&cfg, il))
            .collect();
        Self {
            file: Arc::clone(&model.file),
            cfg,
            opts: CpuOptions {
                threads: opts.threads.max(1),
                ..opts
            },
            ropes,
        }
    }

    pub fn numerics(&self) -> Numerics {
        self.opts.numerics
    }

    fn bytes(&self, t: &Tensor) -> &[u8] {
        t.bytes(&self.file)
    }

    fn f32s(&self, t: &Tensor) -> std::borrow::Cow<'_, [f32]> {
        kernels::f32_values(self.bytes(t))
    }

    fn rows(&self, t: &Tensor) -> matmul::WeightRows<'_> {
        matmul::WeightRows::of(t, self.bytes(t), 0)
    }

    fn matmul(&self, t: &Tensor, x: &Act) -> Act {
        matmul::matmul(self.rows(t), x, self.opts.threads)
    }

    /// Rounds a row for storage in the KV cache as the numerics mode says.
    fn store_round(&self, row: &mut [f32]) {
        if self.opts.numerics == Numerics::Official {
            row.iter_mut()
                .for_each(|v| *v = ds4_model::numerics::f16_round(*v));
        }
    }
}

impl Backend for CpuBackend {
    type Act = Act;
    type Mix = Mix;
    type Kv = CpuKv;
    type Selection = Selection;
    type Routes = Routes;

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn new_kv(&self, ctx: usize, max_batch: usize) -> Result<CpuKv> {
        if ctx == 0 || max_batch == 0 {
            return Err(BackendError::Other(
                "context and batch size must be at least 1".into(),
            ));
        }
        Ok(CpuKv::new(&self.cfg, ctx, max_batch))
    }

    fn kv_len(&self, kv: &CpuKv) -> usize {
        kv.n_tokens
    }

    fn kv_advance(&self, kv: &mut CpuKv, n: usize) -> Result<()> {
        kv.n_tokens += n;
        Ok(())
    }

    fn kv_export(&self, kv: &CpuKv, what: Export) -> Result<KvState> {
        Ok(payload::export(&self.cfg, kv, what))
    }

    fn kv_import(&self, kv: &mut CpuKv, state: &KvState) -> Result<()> {
        payload::import(&self.cfg, kv, state)
    }

    fn kv_rewind(&self, kv: &mut CpuKv, point: &KvState) -> Result<()> {
        payload::rewind(&self.cfg, kv, point)
    }

    fn kv_bytes(&self, kv: &CpuKv) -> usize {
        payload::bytes(kv)
    }

    fn embed(&self, token_embd: &Tensor, tokens: &[u32], pos0: usize) -> Result<Act> {
        hc::embed(self, token_embd, tokens, pos0)
    }

    fn hc_pre(&self, w: &HcWeights, x: &Act) -> Result<(Act, Mix)> {
        Ok(hc::pre(self, w, x))
    }

    fn hc_post(&self, x: &mut Act, f: &Act, mix: &Mix) -> Result<()> {
        hc::post(&self.cfg, x, f, mix);
        Ok(())
    }

    fn rms_norm(&self, x: &Act, weight: &Tensor) -> Result<Act> {
        let w = self.f32s(weight);
        let mut out = Act::zeros(x.rows, x.width);
        for t in 0..x.rows {
            kernels::rms_norm(x.row(t), Some(&w), self.cfg.rms_eps, out.row_mut(t));
        }
        Ok(out)
    }

    fn attention_inputs(
        &self,
        layer: usize,
        w: &AttentionWeights,
        n: &Act,
        pos0: usize,
    ) -> Result<AttentionInputs<Act>> {
        Ok(attention::inputs(self, layer, w, n, pos0))
    }

    fn append_raw(&self, kv: &mut CpuKv, layer: usize, rows: &Act, pos0: usize) -> Result<()> {
        attention::append_raw(self, kv, layer, rows, pos0)
    }

    fn compress(
        &self,
        kv: &mut CpuKv,
        layer: usize,
        kind: CompressorKind,
        w: &CompressorWeights,
        n: &Act,
        pos0: usize,
    ) -> Result<()> {
        attention::compress(self, kv, layer, kind, w, n, pos0);
        Ok(())
    }

    fn index(
        &self,
        kv: &CpuKv,
        layer: usize,
        w: &IndexerWeights,
        n: &Act,
        q_latent: &Act,
        pos0: usize,
    ) -> Result<Selection> {
        Ok(attention::index(self, kv, layer, w, n, q_latent, pos0))
    }

    fn attend(
        &self,
        kv: &CpuKv,
        layer: usize,
        q: &Act,
        sinks: &Tensor,
        selection: Option<&Selection>,
        pos0: usize,
    ) -> Result<Act> {
        Ok(attention::attend(
            self, kv, layer, q, sinks, selection, pos0,
        ))
    }

    fn attention_output(
        &self,
        layer: usize,
        w: &AttentionWeights,
        o: &Act,
        pos0: usize,
    ) -> Result<Act> {
        Ok(attention::output(self, layer, w, o, pos0))
    }

    fn route(&self, layer: usize, w: &FfnWeights, n: &Act, tokens: &[u32]) -> Result<Routes> {
        ffn::route(self, layer, w, n, tokens)
    }

    fn experts(&self, layer: usize, w: &FfnWeights, n: &Act, routes: &Routes) -> Result<Act> {
        Ok(ffn::experts(self, layer, w, n, routes))
    }

    fn output_head(
        &self,
        weights: &Weights,
        x: &Act,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        Ok(hc::output_head(self, weights, x, rows))
    }
}
