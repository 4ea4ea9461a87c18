//! The mixture-of-experts sublayer (MODEL.md 3.8).

use ds4_model::weights::{FfnWeights, Routing};

use crate::error::Result;
use crate::gpu::{Arg, NULL};
use crate::ops::{Items, BLOCK};
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
        let scores = self.gpu.alloc::<f32>(t * e)?;
        let routes = CudaRoutes {
            rows: t,
            ids: self.gpu.alloc(t * k)?,
            weights: self.gpu.alloc(t * k)?,
        };
        // Hash layers need the token ids on the device; learned ones do not.
        let (tid2eid, bias, token_buf) = match &w.routing {
            Routing::Hash { tid2eid } => {
                let ids: Vec<i32> = tokens.iter().map(|&x| x as i32).collect();
                (
                    Arg::Ptr(self.addr(tid2eid)?),
                    NULL,
                    Some(self.gpu.upload(&ids)?),
                )
            }
            Routing::Learned { bias: Some(b) } => (NULL, Arg::Ptr(self.addr(b)?), None),
            Routing::Learned { bias: None } => (NULL, NULL, None),
        };
        self.gpu.launch(
            "route",
            ((t as u32).div_ceil(64), 1, 1),
            64,
            0,
            &[
                Arg::Ptr(self.ptr(&logits)),
                Arg::Ptr(self.gpu.ptr(&scores)),
                bias,
                tid2eid,
                token_buf
                    .as_ref()
                    .map_or(NULL, |b| Arg::Ptr(self.gpu.ptr(b))),
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

    /// `h = w · silu(min(g, c)) ⊙ clamp(u, −c, c)` over `items` rows.
    fn swiglu(&self, g: &CudaAct, u: &CudaAct, weights: Arg, clamp: f32) -> Result<CudaAct> {
        let h = self.new_act(g.rows, g.width)?;
        self.gpu.launch(
            "swiglu",
            ((g.width as u32).div_ceil(BLOCK), g.rows as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.ptr(&h)),
                Arg::Ptr(self.ptr(g)),
                Arg::Ptr(self.ptr(u)),
                weights,
                Arg::I32(g.width as i32),
                Arg::F32(clamp),
            ],
        )?;
        Ok(h)
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
        // Gate and up of every (token, slot) in one launch each: the item's
        // expert id picks the matrix, its token the activation row.
        let project = |tensor, x: &CudaAct, x_div: usize| -> Result<CudaAct> {
            let m = self.mat(tensor)?;
            let y = self.new_act(items, m.n_rows)?;
            self.matvec(
                m,
                Items {
                    n: items,
                    mat_ids: ids,
                    x: self.ptr(x),
                    x_stride: x.width,
                    x_div,
                    y: self.ptr(&y),
                    y_stride: m.n_rows,
                },
            )?;
            Ok(y)
        };
        let g = project(&w.gate_exps, n, k)?;
        let u = project(&w.up_exps, n, k)?;
        let h = self.swiglu(&g, &u, Arg::Ptr(self.gpu.ptr(&routes.weights)), clamp)?;
        let y = project(&w.down_exps, &h, 1)?;
        let gs = self.matmul(&w.gate_shared, n)?;
        let us = self.matmul(&w.up_shared, n)?;
        let hs = self.swiglu(&gs, &us, NULL, clamp)?;
        let ys = self.matmul(&w.down_shared, &hs)?;
        let out = self.new_act(t, d)?;
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
