//! The mixture-of-experts sublayer (MODEL.md 3.8).
//!
//! Decode: the shared expert's gate and up are one launch, gate and up of
//! the routed experts another (the item's expert id picks the matrix),
//! one SwiGLU over both, then the routed down projection and the shared
//! one, whose epilogue also sums the routed outputs. Batches: the routed
//! items are grouped by expert on the GPU and every expert's tile of tokens
//! goes through the tensor-core GEMM, so each expert's weights are read
//! once per tile instead of once per token.

use ds4_model::weights::{FfnWeights, Routing};

use crate::error::Result;
use crate::gpu::{offset, Arg, NULL};
use crate::ops::{Items, BLOCK, GEMM_MIN_ITEMS, WARPS};
use crate::{CudaAct, CudaBackend, CudaRoutes};

impl CudaBackend {
    pub(crate) fn route_impl(
        &self,
        _layer: usize,
        w: &FfnWeights,
        n: &CudaAct,
        tokens: &[u32],
    ) -> Result<CudaRoutes> {
        let cfg = &self.cfg;
        let (t, e, k) = (n.rows, cfg.n_expert, cfg.n_expert_used);
        let logits = self.matmul(&w.router, n)?;
        let scores = self.gpu.buf::<f32>(t * e)?;
        let routes = CudaRoutes {
            rows: t,
            ids: self.gpu.buf(t * k)?,
            weights: self.gpu.buf(t * k)?,
        };
        // Hash layers need the token ids on the device; learned ones do not.
        let (tid2eid, bias, token_ids) = match &w.routing {
            Routing::Hash { tid2eid } => (
                Arg::Ptr(self.addr(tid2eid)?),
                NULL,
                Arg::Ptr(self.token_ids(tokens)?),
            ),
            Routing::Learned { bias: Some(b) } => (NULL, Arg::Ptr(self.addr(b)?), NULL),
            Routing::Learned { bias: None } => (NULL, NULL, NULL),
        };
        if e > 32 * 256 {
            return Err(crate::error::CudaError::Unsupported(format!(
                "{e} experts (routing handles at most 8192)"
            )));
        }
        self.gpu.launch(
            "route",
            ((t as u32).div_ceil(WARPS), 1, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.ptr(&logits)),
                Arg::Ptr(self.gpu.ptr(&scores)),
                bias,
                tid2eid,
                token_ids,
                Arg::Ptr(self.gpu.ptr(&routes.ids)),
                Arg::Ptr(self.gpu.ptr(&routes.weights)),
                Arg::I32(t as i32),
                Arg::I32(e as i32),
                Arg::I32(k as i32),
                Arg::F32(cfg.expert_weights_scale),
            ],
        )?;
        Ok(routes)
    }

    pub(crate) fn experts_impl(
        &self,
        layer: usize,
        w: &FfnWeights,
        n: &CudaAct,
        routes: &CudaRoutes,
    ) -> Result<CudaAct> {
        let cfg = &self.cfg;
        let (t, k, d) = (n.rows, cfg.n_expert_used, cfg.d_model);
        let clamp = cfg.swiglu_clamp[layer];
        let items = t * k;
        let ids = self.gpu.ptr(&routes.ids);
        let (mg, mu, md) = (
            self.mat(&w.gate_exps)?,
            self.mat(&w.up_exps)?,
            self.mat(&w.down_exps)?,
        );
        let (sg, su, sd) = (
            self.mat(&w.gate_shared)?,
            self.mat(&w.up_shared)?,
            self.mat(&w.down_shared)?,
        );
        let ff = mg.n_rows;
        // Rows 0..items: routed (token, slot) items; items..items + t: shared.
        let g = self.new_act(items + t, ff)?;
        let u = self.new_act(items + t, ff)?;
        let h = self.new_act(items + t, ff)?;
        let (pn, pg, pu, ph) = (self.ptr(n), self.ptr(&g), self.ptr(&u), self.ptr(&h));
        let routed = |m, y, x, x_stride, x_div| Items {
            mat_ids: ids,
            x_div,
            ..Items::plain(items, x, x_stride, y, m)
        };
        let shared_g = offset::<f32>(pg, items * ff);
        let shared_u = offset::<f32>(pu, items * ff);
        let shared_h = offset::<f32>(ph, items * ff);
        let tiles = if t >= GEMM_MIN_ITEMS {
            Some(self.expert_tiles(ids, items)?)
        } else {
            None
        };
        // The shared expert first: its dense GEMV loads weights before the
        // dependent-launch wait, overlapping the routing kernel.
        self.products(&[
            (sg, Items::plain(t, pn, d, shared_g, ff)),
            (su, Items::plain(t, pn, d, shared_u, ff)),
        ])?;
        let up = [
            (mg, routed(ff, pg, pn, d, k)),
            (mu, routed(ff, pu, pn, d, k)),
        ];
        if !match &tiles {
            Some(tl) => self.grouped(&up, tl)?,
            None => false,
        } {
            self.products(&up)?;
        }
        self.gpu.launch(
            "swiglu",
            ((ff as u32).div_ceil(BLOCK), (items + t) as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(ph),
                Arg::Ptr(pg),
                Arg::Ptr(pu),
                Arg::Ptr(self.gpu.ptr(&routes.weights)),
                Arg::I32(items as i32),
                Arg::I32(ff as i32),
                Arg::F32(clamp),
            ],
        )?;
        let y = self.new_act(items, d)?;
        let down = [(md, routed(d, self.ptr(&y), ph, ff, 1))];
        if !match &tiles {
            Some(tl) => self.grouped(&down, tl)?,
            None => false,
        } {
            self.products(&down)?;
        }
        let out = self.new_act(t, d)?;
        if tiles.is_none() {
            // The shared down projection's epilogue adds the routed outputs
            // (in slot order, as the CPU sums them) before its own product.
            self.products(&[(
                sd,
                Items {
                    add: Some((self.ptr(&y), k, d)),
                    ..Items::plain(t, shared_h, ff, self.ptr(&out), d)
                },
            )])?;
            return Ok(out);
        }
        let ys = self.new_act(t, d)?;
        self.products(&[(sd, Items::plain(t, shared_h, ff, self.ptr(&ys), d))])?;
        self.gpu.launch(
            "sum_experts",
            ((d as u32).div_ceil(BLOCK), t as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.ptr(&out)),
                Arg::Ptr(self.ptr(&y)),
                Arg::Ptr(self.ptr(&ys)),
                Arg::I32(d as i32),
                Arg::I32(k as i32),
            ],
        )?;
        Ok(out)
    }
}
