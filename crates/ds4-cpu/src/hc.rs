//! Hyper-connections (MODEL.md §3.1), the embedding and the output head (§3.9).

use ds4_model::backend::{BackendError, Result};
use ds4_model::weights::HcWeights;
use ds4_model::{Config, Tensor, Weights};

use crate::act::Act;
use crate::kernels::{rms_norm, sigmoid};
use crate::matmul::{matmul, WeightRows};
use crate::CpuBackend;

/// Per token: `post` (n_hc) then the Sinkhorn matrix `comb` (n_hc × n_hc,
/// `comb[i·n + j]` = weight of input stream i in output stream j).
#[derive(Clone, Debug)]
pub struct Mix {
    pub per_token: Vec<f32>,
}

pub fn embed(b: &CpuBackend, w: &Tensor, tokens: &[u32], pos0: usize) -> Result<Act> {
    let cfg = &b.cfg;
    let d = cfg.d_model;
    let rows = WeightRows::of(w, b.bytes(w), 0);
    let mut x = Act::zeros(tokens.len(), cfg.n_hc * d);
    let mut e = vec![0f32; d];
    for (t, &id) in tokens.iter().enumerate() {
        if id as usize >= cfg.vocab_size {
            return Err(BackendError::TokenOutOfRange {
                id,
                pos: pos0 + t,
                vocab: cfg.vocab_size,
            });
        }
        let r = rows.slice(id as usize, 1);
        ds4_quant::dequantize(r.format, r.bytes, &mut e).expect("validated");
        for s in x.row_mut(t).chunks_exact_mut(d) {
            s.copy_from_slice(&e);
        }
    }
    Ok(x)
}

/// The mixing values of a batch: `fn · RMSNorm(flatten(X))` per token.
fn mix_values(b: &CpuBackend, func: &Tensor, x: &Act) -> Act {
    let mut normed = Act::zeros(x.rows, x.width);
    for t in 0..x.rows {
        rms_norm(x.row(t), None, b.cfg.rms_eps, normed.row_mut(t));
    }
    matmul(
        WeightRows::of(func, b.bytes(func), 0),
        &normed,
        b.opts.threads,
    )
}

pub fn pre(b: &CpuBackend, w: &HcWeights, x: &Act) -> (Act, Mix) {
    let cfg = &b.cfg;
    let (n, d, eps) = (cfg.n_hc, cfg.d_model, cfg.hc_eps);
    let scale = b.f32s(&w.scale);
    let base = b.f32s(&w.base);
    let m = mix_values(b, &w.func, x);
    let mut y = Act::zeros(x.rows, d);
    let per = n + n * n;
    let mut mix = Mix {
        per_token: vec![0.0; x.rows * per],
    };
    let mut c = vec![0f32; n * n];
    for t in 0..x.rows {
        let m = m.row(t);
        let out = &mut mix.per_token[t * per..(t + 1) * per];
        for h in 0..n {
            out[h] = 2.0 * sigmoid(m[n + h] * scale[1] + base[n + h]);
        }
        for i in 0..n {
            let row = &mut c[i * n..(i + 1) * n];
            for (j, v) in row.iter_mut().enumerate() {
                *v = m[2 * n + i * n + j] * scale[2] + base[2 * n + i * n + j];
            }
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - mx).exp();
                sum += *v;
            }
            for v in row.iter_mut() {
                *v = *v / sum + eps;
            }
        }
        normalize_columns(&mut c, n, eps);
        for _ in 1..cfg.sinkhorn_iters {
            for i in 0..n {
                let row = &mut c[i * n..(i + 1) * n];
                let s: f32 = row.iter().sum::<f32>() + eps;
                row.iter_mut().for_each(|v| *v /= s);
            }
            normalize_columns(&mut c, n, eps);
        }
        out[n..].copy_from_slice(&c);
        let yt = y.row_mut(t);
        for h in 0..n {
            let pre_h = sigmoid(m[h] * scale[0] + base[h]) + eps;
            for (o, &v) in yt.iter_mut().zip(&x.row(t)[h * d..(h + 1) * d]) {
                *o += pre_h * v;
            }
        }
    }
    (y, mix)
}

fn normalize_columns(c: &mut [f32], n: usize, eps: f32) {
    for j in 0..n {
        let s: f32 = (0..n).map(|i| c[i * n + j]).sum::<f32>() + eps;
        for i in 0..n {
            c[i * n + j] /= s;
        }
    }
}

pub fn post(cfg: &Config, x: &mut Act, f: &Act, mix: &Mix) {
    let (n, d) = (cfg.n_hc, cfg.d_model);
    let per = n + n * n;
    let mut next = vec![0f32; n * d];
    for t in 0..x.rows {
        let m = &mix.per_token[t * per..(t + 1) * per];
        let (post, comb) = m.split_at(n);
        let xt = x.row(t);
        let ft = f.row(t);
        for j in 0..n {
            let out = &mut next[j * d..(j + 1) * d];
            for (o, &v) in out.iter_mut().zip(ft) {
                *o = post[j] * v;
            }
            for i in 0..n {
                let cij = comb[i * n + j];
                for (o, &v) in out.iter_mut().zip(&xt[i * d..(i + 1) * d]) {
                    *o += cij * v;
                }
            }
        }
        x.row_mut(t).copy_from_slice(&next);
    }
}

pub fn output_head(
    b: &CpuBackend,
    weights: &Weights,
    x: &Act,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    let cfg = &b.cfg;
    let (n, d) = (cfg.n_hc, cfg.d_model);
    let sub = Act::from_vec(
        rows.len(),
        x.width,
        x.data[rows.start * x.width..rows.end * x.width].to_vec(),
    );
    let hc = &weights.output_hc;
    let scale = b.f32s(&hc.scale);
    let base = b.f32s(&hc.base);
    let norm_w = b.f32s(&weights.output_norm);
    let m = mix_values(b, &hc.func, &sub);
    let mut z = Act::zeros(sub.rows, d);
    for t in 0..sub.rows {
        let zt = z.row_mut(t);
        for h in 0..n {
            let a = sigmoid(m.row(t)[h] * scale[0] + base[h]) + cfg.hc_eps;
            for (o, &v) in zt.iter_mut().zip(&sub.row(t)[h * d..(h + 1) * d]) {
                *o += a * v;
            }
        }
        crate::kernels::rms_norm_in_place(zt, Some(&norm_w), cfg.rms_eps);
    }
    let out_rows = WeightRows::of(&weights.output, b.bytes(&weights.output), 0);
    matmul(out_rows, &z, b.opts.threads).data
}
