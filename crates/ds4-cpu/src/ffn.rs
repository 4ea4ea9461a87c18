//! The mixture-of-experts sublayer (MODEL.md §3.8).

use ds4_model::backend::{BackendError, Result};
use ds4_model::weights::{FfnWeights, Routing};

use crate::act::Act;
use crate::kernels::{silu, softplus, top_k};
use crate::matmul::{matvec, WeightRows};
use crate::CpuBackend;

/// Per token, `n_expert_used` expert ids and their mixing weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Routes {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

/// Router weights are renormalised by at least this sum (2⁻¹⁴), as ds4 does.
const MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

pub fn route(
    b: &CpuBackend,
    layer: usize,
    w: &FfnWeights,
    n: &Act,
    tokens: &[u32],
) -> Result<Routes> {
    let cfg = &b.cfg;
    let k = cfg.n_expert_used;
    let logits = b.matmul(&w.router, n);
    let bias = match &w.routing {
        Routing::Learned { bias: Some(t) } => Some(b.f32s(t)),
        _ => None,
    };
    let mut routes = Routes {
        ids: Vec::with_capacity(n.rows * k),
        weights: Vec::with_capacity(n.rows * k),
    };
    for t in 0..n.rows {
        let scores: Vec<f32> = logits.row(t).iter().map(|&l| softplus(l).sqrt()).collect();
        let ids: Vec<u32> = match &w.routing {
            Routing::Hash { tid2eid } => {
                let table = b.bytes(tid2eid);
                let tok = tokens[t] as usize;
                (0..k)
                    .map(|j| {
                        let at = (tok * k + j) * 4;
                        let id = i32::from_le_bytes(table[at..at + 4].try_into().expect("4 bytes"));
                        if id < 0 || id as usize >= cfg.n_expert {
                            Err(BackendError::Other(format!(
                                "layer {layer}: tid2eid maps token {tok} to expert {id}, outside 0..{}",
                                cfg.n_expert
                            )))
                        } else {
                            Ok(id as u32)
                        }
                    })
                    .collect::<Result<_>>()?
            }
            Routing::Learned { .. } => {
                let biased: Vec<f32> = match &bias {
                    Some(bias) => scores.iter().zip(bias.iter()).map(|(s, b)| s + b).collect(),
                    None => scores.clone(),
                };
                top_k(&biased, k)
            }
        };
        let sum: f32 = ids.iter().map(|&e| scores[e as usize]).sum();
        let norm = sum.max(MIN_WEIGHT_SUM);
        for &e in &ids {
            routes.ids.push(e);
            routes
                .weights
                .push(scores[e as usize] / norm * cfg.expert_weights_scale);
        }
    }
    Ok(routes)
}

/// `down · (w · silu(min(gate·n, c)) ⊙ clamp(up·n, −c, c))` for one expert matrix triple.
fn swiglu_expert(
    gate: WeightRows<'_>,
    up: WeightRows<'_>,
    down: WeightRows<'_>,
    x: &[f32],
    weight: f32,
    clamp: f32,
    out: &mut [f32],
) {
    let f = gate.n_rows;
    let mut g = vec![0f32; f];
    let mut u = vec![0f32; f];
    matvec(gate, x, &mut g);
    matvec(up, x, &mut u);
    for (gv, &uv) in g.iter_mut().zip(&u) {
        *gv = weight * silu(gv.min(clamp)) * uv.clamp(-clamp, clamp);
    }
    matvec(down, &g, out);
}

pub fn experts(b: &CpuBackend, layer: usize, w: &FfnWeights, n: &Act, routes: &Routes) -> Act {
    let cfg = &b.cfg;
    let k = cfg.n_expert_used;
    let clamp = cfg.swiglu_clamp[layer];
    let d = cfg.d_model;
    let mut out = Act::zeros(n.rows, d);
    let (gb, ub, db) = (
        b.bytes(&w.gate_exps),
        b.bytes(&w.up_exps),
        b.bytes(&w.down_exps),
    );
    let shared = (
        b.rows(&w.gate_shared),
        b.rows(&w.up_shared),
        b.rows(&w.down_shared),
    );
    let mut y = vec![0f32; d];
    for t in 0..n.rows {
        let x = n.row(t);
        let ot = out.row_mut(t);
        for j in 0..k {
            let e = routes.ids[t * k + j] as usize;
            swiglu_expert(
                WeightRows::of(&w.gate_exps, gb, e),
                WeightRows::of(&w.up_exps, ub, e),
                WeightRows::of(&w.down_exps, db, e),
                x,
                routes.weights[t * k + j],
                clamp,
                &mut y,
            );
            ot.iter_mut().zip(&y).for_each(|(o, v)| *o += v);
        }
        swiglu_expert(shared.0, shared.1, shared.2, x, 1.0, clamp, &mut y);
        ot.iter_mut().zip(&y).for_each(|(o, v)| *o += v);
    }
    out
}
