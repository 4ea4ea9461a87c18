//! Embedding, hyper-connections and the output head (MODEL.md 3.1, 3.9).

use ds4_gguf::GgmlType;
use ds4_model::backend::{BackendError, Result as BResult};
use ds4_model::weights::HcWeights;
use ds4_model::{Tensor, Weights};

use crate::error::{CudaError, Result};
use crate::gpu::{offset, Arg, DevBuf, NULL};
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
        let ids = self.token_ids(tokens)?;
        let x = self.new_act(tokens.len(), cfg.n_hc * cfg.d_model)?;
        self.gpu.launch(
            "embed_f16",
            ((cfg.d_model as u32).div_ceil(BLOCK), tokens.len() as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.ptr(&x)),
                Arg::Ptr(self.addr(t)?),
                Arg::Ptr(ids),
                Arg::I32(cfg.d_model as i32),
                Arg::I32(cfg.n_hc as i32),
            ],
        )?;
        Ok(x)
    }

    /// The flat HC state's width, which the mix rows `func` must have (F16).
    fn hc_width(&self, func: &Tensor) -> Result<usize> {
        let width = self.cfg.n_hc * self.cfg.d_model;
        if func.ggml_type != GgmlType::F16 || func.row_len() != width {
            return Err(CudaError::Unsupported(format!(
                "{}: HC mixing needs F16 rows of {width}",
                func.name
            )));
        }
        Ok(width)
    }

    /// Split-k partial products of the `fn` rows with the flat HC state of
    /// `rows` tokens at `x`, and partial sums of squares (see `hc_dots`).
    fn hc_dots(
        &self,
        func: &Tensor,
        x: u64,
        rows: usize,
    ) -> Result<(DevBuf<f32>, DevBuf<f64>, usize)> {
        let width = self.hc_width(func)?;
        let n_rows = func.n_rows();
        // Splits of 1024 values keep ~400 blocks busy on the 24 mix rows.
        let splits = hc_splits(width, 1024);
        let part = self.gpu.buf::<f32>(rows * n_rows * splits)?;
        let ss = self.gpu.buf::<f64>(rows * splits)?;
        if rows >= 8 {
            let len = width / splits;
            self.gpu.launch(
                "hc_dots_batch",
                (rows.div_ceil(8) as u32, splits as u32, 1),
                BLOCK,
                (8 * len * 4) as u32,
                &[
                    Arg::Ptr(self.addr(func)?),
                    Arg::Ptr(x),
                    Arg::I32(width as i32),
                    Arg::I32(n_rows as i32),
                    Arg::I32(splits as i32),
                    Arg::I32(rows as i32),
                    Arg::Ptr(self.gpu.ptr(&part)),
                    Arg::Ptr(self.gpu.ptr(&ss)),
                ],
            )?;
        } else {
            self.gpu.launch(
                "hc_dots",
                (n_rows as u32, splits as u32, rows as u32),
                BLOCK,
                0,
                &[
                    Arg::Ptr(self.addr(func)?),
                    Arg::Ptr(x),
                    Arg::I32(width as i32),
                    Arg::I32(n_rows as i32),
                    Arg::I32(splits as i32),
                    Arg::Ptr(self.gpu.ptr(&part)),
                    Arg::Ptr(self.gpu.ptr(&ss)),
                ],
            )?;
        }
        Ok((part, ss, splits))
    }

    /// HC-pre; with `norm`, the output row is RMS-normalised (with those
    /// weights) in the same launch.
    pub(crate) fn hc_pre_impl(
        &self,
        w: &HcWeights,
        x: &CudaAct,
        norm: Option<&Tensor>,
    ) -> Result<(CudaAct, CudaMix)> {
        let cfg = &self.cfg;
        let (n, d, t) = (cfg.n_hc, cfg.d_model, x.rows);
        if 2 * n + n * n > 96 {
            return Err(CudaError::Unsupported(format!("{n} HC streams")));
        }
        let mix = CudaMix {
            rows: t,
            buf: self.gpu.buf(t * (n + n * n))?,
        };
        let y = self.new_act(t, d)?;
        let threads = hc_threads(d);
        let norm = match norm {
            Some(t) => Arg::Ptr(self.addr(t)?),
            None => NULL,
        };
        if t == 1 {
            self.hc_pre_one(w, x, &mix, &y, norm, threads, None)?;
            return Ok((y, mix));
        }
        let (part, ss, splits) = self.hc_dots(&w.func, self.ptr(x), t)?;
        self.gpu.launch(
            "hc_pre_finish",
            (t as u32, 1, 1),
            threads,
            0,
            &[
                Arg::Ptr(self.gpu.ptr(&part)),
                Arg::Ptr(self.gpu.ptr(&ss)),
                Arg::I32(splits as i32),
                Arg::Ptr(self.addr(&w.scale)?),
                Arg::Ptr(self.addr(&w.base)?),
                Arg::Ptr(self.ptr(x)),
            ]
            .into_iter()
            .chain(self.hc_pre_out_args(&mix, &y, norm))
            .collect::<Vec<_>>(),
        )?;
        Ok((y, mix))
    }

    /// HC-post of the previous sublayer's output `f` (with its mix) into
    /// `x`, then HC-pre and norm: for one token with 4 streams in one
    /// `hc_pre_one` launch that forms the new state itself.
    pub(crate) fn hc_post_pre_norm_impl(
        &self,
        x: &mut CudaAct,
        f: &CudaAct,
        prev: &CudaMix,
        w: &HcWeights,
        norm: &Tensor,
    ) -> Result<(CudaAct, CudaMix)> {
        let (n, d) = (self.cfg.n_hc, self.cfg.d_model);
        let threads = hc_threads(d);
        let width = self.hc_width(&w.func)?;
        // The kernel's fused path: 4 streams, 4 values per thread exactly
        // and 16-byte weight rows (its `vec` test; the activations are
        // allocations, aligned).
        let per = 4 * threads as usize;
        let fused = x.rows == 1
            && f.rows == 1
            && f.width == d
            && n == 4
            && d % 4 == 0
            && width / hc_splits(width, per) == per
            && self.addr(&w.func)?.is_multiple_of(16);
        if !fused {
            self.hc_post_impl(x, f, prev)?;
            return self.hc_pre_impl(w, x, Some(norm));
        }
        let mix = CudaMix {
            rows: 1,
            buf: self.gpu.buf(n + n * n)?,
        };
        let y = self.new_act(1, d)?;
        let state = self.new_act(1, x.width)?;
        let norm = Arg::Ptr(self.addr(norm)?);
        self.hc_pre_one(w, x, &mix, &y, norm, threads, Some((f, prev, &state)))?;
        *x = state;
        Ok((y, mix))
    }

    /// HC-pre of a single token in one launch (`hc_pre_one`): blocks of
    /// `threads` threads take 4 values each per split of the flat state.
    /// With `post` = (f, its mix, new state), the launch first forms the
    /// HC-post of f into the new state and reads that.
    #[allow(clippy::too_many_arguments)]
    fn hc_pre_one(
        &self,
        w: &HcWeights,
        x: &CudaAct,
        mix: &CudaMix,
        y: &CudaAct,
        norm: Arg,
        threads: u32,
        post: Option<(&CudaAct, &CudaMix, &CudaAct)>,
    ) -> Result<()> {
        let func = &w.func;
        let width = self.hc_width(func)?;
        let n_rows = func.n_rows();
        let splits = hc_splits(width, 4 * threads as usize);
        let post_args = match post {
            Some((f, prev, state)) => [
                Arg::Ptr(self.ptr(f)),
                Arg::Ptr(self.gpu.ptr(&prev.buf)),
                Arg::Ptr(self.ptr(state)),
            ],
            None => [NULL, NULL, NULL],
        };
        let part = self.gpu.buf::<f32>(n_rows * splits)?;
        let ss = self.gpu.buf::<f64>(splits)?;
        self.gpu.launch(
            "hc_pre_one",
            (n_rows as u32, splits as u32, 1),
            threads,
            0,
            &[
                Arg::Ptr(self.addr(func)?),
                Arg::Ptr(self.ptr(x)),
                Arg::I32(width as i32),
                Arg::I32(n_rows as i32),
                Arg::I32(splits as i32),
                Arg::Ptr(self.gpu.ptr(&part)),
                Arg::Ptr(self.gpu.ptr(&ss)),
                Arg::Ptr(self.gpu.ptr(&self.hc_done)),
                Arg::Ptr(self.addr(&w.scale)?),
                Arg::Ptr(self.addr(&w.base)?),
            ]
            .into_iter()
            .chain(self.hc_pre_out_args(mix, y, norm))
            .chain(post_args)
            .collect::<Vec<_>>(),
        )?;
        Ok(())
    }

    /// The last arguments of `hc_pre_finish` and `hc_pre_one`: where the mix
    /// and y go, the norm weights, the shapes and constants.
    fn hc_pre_out_args(&self, mix: &CudaMix, y: &CudaAct, norm: Arg) -> [Arg; 8] {
        let cfg = &self.cfg;
        [
            Arg::Ptr(self.gpu.ptr(&mix.buf)),
            Arg::Ptr(self.ptr(y)),
            norm,
            Arg::I32(cfg.d_model as i32),
            Arg::I32(cfg.n_hc as i32),
            Arg::I32(cfg.sinkhorn_iters as i32),
            Arg::F32(cfg.hc_eps),
            Arg::F32(cfg.rms_eps),
        ]
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
        let (part, ss, splits) = self.hc_dots(&hc.func, xs, r)?;
        let z = self.new_act(r, d)?;
        let threads = (d / 4).next_multiple_of(32).clamp(128, 1024) as u32;
        self.gpu.launch(
            "head_finish",
            (r as u32, 1, 1),
            threads,
            0,
            &[
                Arg::Ptr(self.gpu.ptr(&part)),
                Arg::Ptr(self.gpu.ptr(&ss)),
                Arg::I32(splits as i32),
                Arg::Ptr(self.addr(&hc.scale)?),
                Arg::Ptr(self.addr(&hc.base)?),
                Arg::Ptr(xs),
                Arg::I64(x.width as i64),
                Arg::Ptr(self.addr(&weights.output_norm)?),
                Arg::Ptr(self.ptr(&z)),
                Arg::I32(d as i32),
                Arg::I32(n as i32),
                Arg::F32(cfg.hc_eps),
                Arg::F32(cfg.rms_eps),
            ],
        )?;
        let out = self.mat(&weights.output)?;
        let logits = self.new_act(r, out.n_rows)?;
        self.matvec(
            out,
            Items::plain(r, self.ptr(&z), d, self.ptr(&logits), out.n_rows),
        )?;
        self.download_act(&logits)
    }
}

/// Threads of an HC-pre block (`hc_pre_one`, `hc_pre_finish`): one per 4
/// values of a stream, within 128..=1024.
fn hc_threads(d: usize) -> u32 {
    (d / 4).next_multiple_of(32).clamp(128, 1024) as u32
}

/// Splits of about `per` values that divide `width` (1 to 32 of them).
fn hc_splits(width: usize, per: usize) -> usize {
    let mut splits = (width / per).clamp(1, 32);
    while !width.is_multiple_of(splits) {
        splits -= 1;
    }
    splits
}
