//! Embedding, hyper-connections and the output head (MODEL.md 3.1, 3.9).

use ds4_model::backend::{BackendError, Result as BResult};
use ds4_model::weights::HcWeights;
use ds4_model::{Tensor, Weights};

use crate::error::Result;
use crate::gpu::{offset, Arg, NULL};
use crate::ops::{Items, BLOCK};
use crate::{CudaAct, CudaBackend, CudaMix};

impl CudaBackend {
    pub(crate) fn embed_impl(&self, t: &Tensor, tokens: &[u32], pos0: usize) -> BResult<CudaAct> {
        let cfg = &self.cfg;
        for (i, &id) in tokens.iter().enumerate() {
            if id as usize >= cfg.vocab_size {
                return Err(BackendError::TokenOutOfRange {
                    id,
                    pos: pos0 + i,
                    vocab: cfg.vocab_size,
                });
            }
        }
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let ids = self.gpu.upload(&ids)?;
        let x = self.new_act(tokens.len(), cfg.n_hc * cfg.d_model)?;
        self.gpu.launch(
            "embed_f16",
            ((cfg.d_model as u32).div_ceil(BLOCK), tokens.len() as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.ptr(&x)),
                Arg::Ptr(self.addr(t)?),
                Arg::Ptr(self.gpu.ptr(&ids)),
                Arg::I32(cfg.d_model as i32),
                Arg::I32(cfg.n_hc as i32),
            ],
        )?;
        Ok(x)
    }

    /// `fn · RMSNorm(flatten(x))` per token: the mix values, `[T × fn rows]`.
    fn mix_values(&self, func: &Tensor, x: u64, rows: usize) -> Result<CudaAct> {
        let width = self.cfg.n_hc * self.cfg.d_model;
        let normed = self.new_act(rows, width)?;
        self.rms_raw(self.ptr(&normed), x, NULL, rows, width)?;
        self.matmul(func, &normed)
    }

    pub(crate) fn hc_pre_impl(&self, w: &HcWeights, x: &CudaAct) -> Result<(CudaAct, CudaMix)> {
        let cfg = &self.cfg;
        let (n, d, t) = (cfg.n_hc, cfg.d_model, x.rows);
        let m = self.mix_values(&w.func, self.ptr(x), t)?;
        let mix = CudaMix {
            rows: t,
            buf: self.gpu.alloc(t * (n + n * n))?,
        };
        let pre = self.gpu.alloc::<f32>(t * n)?;
        self.gpu.launch(
            "hc_mix",
            ((t as u32).div_ceil(64), 1, 1),
            64,
            0,
            &[
                Arg::Ptr(self.ptr(&m)),
                Arg::Ptr(self.addr(&w.scale)?),
                Arg::Ptr(self.addr(&w.base)?),
                Arg::Ptr(self.gpu.ptr(&mix.buf)),
                Arg::Ptr(self.gpu.ptr(&pre)),
                Arg::I32(t as i32),
                Arg::I32(n as i32),
                Arg::I32(cfg.sinkhorn_iters as i32),
                Arg::F32(cfg.hc_eps),
            ],
        )?;
        let y = self.new_act(t, d)?;
        self.weighted_streams(self.ptr(&y), self.ptr(x), self.gpu.ptr(&pre), t)?;
        Ok((y, mix))
    }

    /// `y[t] = Σ_h a[t][h] · x[t][stream h]`.
    fn weighted_streams(&self, y: u64, x: u64, a: u64, rows: usize) -> Result<()> {
        let (n, d) = (self.cfg.n_hc, self.cfg.d_model);
        self.gpu.launch(
            "hc_weighted_sum",
            ((d as u32).div_ceil(BLOCK), rows as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(y),
                Arg::Ptr(x),
                Arg::Ptr(a),
                Arg::I32(d as i32),
                Arg::I32(n as i32),
            ],
        )
    }

    pub(crate) fn hc_post_impl(&self, x: &mut CudaAct, f: &CudaAct, mix: &CudaMix) -> Result<()> {
        let (n, d) = (self.cfg.n_hc, self.cfg.d_model);
        let out = self.new_act(x.rows, x.width)?;
        self.gpu.launch(
            "hc_post",
            (((n * d) as u32).div_ceil(BLOCK), x.rows as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.ptr(&out)),
                Arg::Ptr(self.ptr(x)),
                Arg::Ptr(self.ptr(f)),
                Arg::Ptr(self.gpu.ptr(&mix.buf)),
                Arg::I32(d as i32),
                Arg::I32(n as i32),
            ],
        )?;
        *x = out;
        Ok(())
    }

    pub(crate) fn output_head_impl(
        &self,
        weights: &Weights,
        x: &CudaAct,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (n, d) = (cfg.n_hc, cfg.d_model);
        let r = rows.len();
        if r == 0 {
            return Ok(Vec::new());
        }
        let xs = offset::<f32>(self.ptr(x), rows.start * x.width);
        let hc = &weights.output_hc;
        let m = self.mix_values(&hc.func, xs, r)?;
        let a = self.gpu.alloc::<f32>(r * n)?;
        self.gpu.launch(
            "head_weights",
            (((r * n) as u32).div_ceil(64), 1, 1),
            64,
            0,
            &[
                Arg::Ptr(self.ptr(&m)),
                Arg::Ptr(self.addr(&hc.scale)?),
                Arg::Ptr(self.addr(&hc.base)?),
                Arg::Ptr(self.gpu.ptr(&a)),
                Arg::I32(r as i32),
                Arg::I32(n as i32),
                Arg::F32(cfg.hc_eps),
            ],
        )?;
        let z = self.new_act(r, d)?;
        self.weighted_streams(self.ptr(&z), xs, self.gpu.ptr(&a), r)?;
        self.rms_rows(&z, &z, Some(&weights.output_norm))?;
        let out = self.mat(&weights.output)?;
        let logits = self.new_act(r, out.n_rows)?;
        self.matvec(
            out,
            Items {
                n: r,
                mat_ids: 0,
                x: self.ptr(&z),
                x_stride: d,
                x_div: 1,
                y: self.ptr(&logits),
                y_stride: out.n_rows,
            },
        )?;
        self.download_act(&logits)
    }
}
