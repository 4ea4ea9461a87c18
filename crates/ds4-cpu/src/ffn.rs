//! The mixture-of-experts sublayer (MODEL.md §3.8).

use ds4_model::backend::{BackendError, Result};
use ds4_model::weights::{FfnWeights, Routing};

use crate::act::Act;
use crate::kernels::{silu, softplus, top_k};
use crate::matmul::{matmul, WeightRows};
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
    for (t, &token) in tokens.iter().enumerate().take(n.rows) {
        let scores: Vec<f32> = logits.row(t).iter().map(|&l| softplus(l).sqrt()).collect();
        let ids: Vec<u32> = match &w.routing {
            Routing::Hash { tid2eid } => {
                let table = b.bytes(tid2eid);
                let tok = token as usize;
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

/// `w · silu(min(g, c)) ⊙ clamp(u, −c, c)`, in place in `g`.
fn swiglu(g: &mut [f32], u: &[f32], weight: f32, clamp: f32) {
    for (gv, &uv) in g.iter_mut().zip(u) {
        *gv = weight * silu(gv.min(clamp)) * uv.clamp(-clamp, clamp);
    }
}

/// Routed experts plus the shared expert. Tokens are grouped by expert so
/// that each expert's weights are read once per batch; every token still
/// sums its experts in expert-id order, so a batch gives exactly what
/// token-by-token evaluation gives.
pub fn experts(b: &CpuBackend, layer: usize, w: &FfnWeights, n: &Act, routes: &Routes) -> Act {
    let cfg = &b.cfg;
    let k = cfg.n_expert_used;
    let clamp = cfg.swiglu_clamp[layer];
    let threads = b.opts.threads;
    let mut out = Act::zeros(n.rows, cfg.d_model);
    let (gb, ub, db) = (
        b.bytes(&w.gate_exps),
        b.bytes(&w.up_exps),
        b.bytes(&w.down_exps),
    );
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); cfg.n_expert];
    for t in 0..n.rows {
        for j in 0..k {
            by_expert[routes.ids[t * k + j] as usize].push((t, routes.weights[t * k + j]));
        }
    }
    for (e, users) in by_expert.iter().enumerate() {
        if users.is_empty() {
            continue;
        }
        let mut x = Act::zeros(users.len(), n.width);
        for (i, &(t, _)) in users.iter().enumerate() {
            x.row_mut(i).copy_from_slice(n.row(t));
        }
        let mut g = matmul(WeightRows::of(&w.gate_exps, gb, e), &x, threads);
        let u = matmul(WeightRows::of(&w.up_exps, ub, e), &x, threads);
        for (i, &(_, weight)) in users.iter().enumerate() {
            swiglu(g.row_mut(i), u.row(i), weight, clamp);
        }
        let y = matmul(WeightRows::of(&w.down_exps, db, e), &g, threads);
        for (i, &(t, _)) in users.iter().enumerate() {
            out.row_mut(t)
                .iter_mut()
                .zip(y.row(i))
                .for_each(|(o, v)| *o += v);
        }
    }
    let mut g = b.matmul(&w.gate_shared, n);
    let u = b.matmul(&w.up_shared, n);
    for t in 0..n.rows {
        swiglu(g.row_mut(t), u.row(t), 1.0, clamp);
    }
    let y = b.matmul(&w.down_shared, &g);
    out.data.iter_mut().zip(&y.data).for_each(|(o, v)| *o += v);
    out
}
