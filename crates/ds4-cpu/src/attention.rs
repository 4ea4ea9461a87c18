//! The attention sublayer's stages (MODEL.md §3.2-3.7).

use ds4_model::backend::{check_batch_fits, AttentionInputs, CompressorKind, Result};
use ds4_model::numerics::{fp4_round_trip, fp8_kv_round_trip, hadamard, Numerics};
use ds4_model::weights::{AttentionWeights, CompressorWeights, IndexerWeights};
use ds4_model::Tensor;

use crate::act::Act;
use crate::kernels::{dequantize_all, rms_norm_in_place, top_k};
use crate::kv::{Compressor, CpuKv};
use crate::matmul::{matmul, matvec, WeightRows};
use crate::pool::map_ranges;
use crate::{CpuBackend, Selection};

pub fn inputs(
    b: &CpuBackend,
    layer: usize,
    w: &AttentionWeights,
    n: &Act,
    pos0: usize,
) -> AttentionInputs<Act> {
    let cfg = &b.cfg;
    let hd = cfg.head_dim;
    let rope = &b.ropes[layer];
    let mut q_latent = b.matmul(&w.q_a, n);
    let qa_norm = b.f32s(&w.q_a_norm);
    for t in 0..q_latent.rows {
        rms_norm_in_place(q_latent.row_mut(t), Some(&qa_norm), cfg.rms_eps);
    }
    let mut q = b.matmul(&w.q_b, &q_latent);
    for t in 0..q.rows {
        for head in q.row_mut(t).chunks_exact_mut(hd) {
            rms_norm_in_place(head, None, cfg.rms_eps);
            rope.apply(head, pos0 + t, false);
        }
    }
    let mut kv = b.matmul(&w.kv, n);
    let kv_norm = b.f32s(&w.kv_norm);
    for t in 0..kv.rows {
        let row = kv.row_mut(t);
        rms_norm_in_place(row, Some(&kv_norm), cfg.rms_eps);
        rope.apply(row, pos0 + t, false);
        if b.opts.numerics == Numerics::Official {
            fp8_kv_round_trip(row, hd - cfg.n_rot);
        }
    }
    AttentionInputs { q, q_latent, kv }
}

pub fn append_raw(
    b: &CpuBackend,
    kv: &mut CpuKv,
    layer: usize,
    rows: &Act,
    pos0: usize,
) -> Result<()> {
    check_batch_fits(pos0, rows.rows, kv.ctx, kv.max_batch)?;
    let raw = &mut kv.layers[layer].raw;
    for t in 0..rows.rows {
        let dst = raw.row_mut(pos0 + t);
        dst.copy_from_slice(rows.row(t));
        b.store_round(dst);
    }
    Ok(())
}

pub fn compress(
    b: &CpuBackend,
    kv: &mut CpuKv,
    layer: usize,
    kind: CompressorKind,
    w: &CompressorWeights,
    n: &Act,
    pos0: usize,
) {
    let cfg = &b.cfg;
    let rope = &b.ropes[layer];
    let numerics = b.opts.numerics;
    let a = b.matmul(&w.kv, n);
    let mut score = b.matmul(&w.gate, n);
    let ape = dequantize_all(&w.ape, b.bytes(&w.ape));
    let norm = b.f32s(&w.norm);
    let layer_kv = &mut kv.layers[layer];
    let c: &mut Compressor = match kind {
        CompressorKind::Attention => layer_kv.attn.as_mut(),
        CompressorKind::Indexer => layer_kv.index.as_mut(),
    }
    .expect("the layer's kind has this compressor");
    let (r, d, width) = (c.ratio, c.dim, c.width);
    let mut pooled = vec![0f32; d];
    for t in 0..n.rows {
        let p = pos0 + t;
        let phase = p % r;
        let sc = score.row_mut(t);
        for (s, &e) in sc.iter_mut().zip(&ape[phase * width..(phase + 1) * width]) {
            *s += e;
        }
        let slot = if c.overlapping() { r + phase } else { phase };
        c.state_kv[slot * width..(slot + 1) * width].copy_from_slice(a.row(t));
        c.state_score[slot * width..(slot + 1) * width].copy_from_slice(score.row(t));
        if !(p + 1).is_multiple_of(r) {
            continue;
        }
        // Window complete: softmax-pool every dim over its candidates.
        for (j, out) in pooled.iter_mut().enumerate() {
            let candidates = |i: usize| -> (f32, f32) {
                if c.overlapping() {
                    // Previous window's first half, then this window's second half.
                    if i < r {
                        (c.state_score[i * width + j], c.state_kv[i * width + j])
                    } else {
                        (
                            c.state_score[i * width + d + j],
                            c.state_kv[i * width + d + j],
                        )
                    }
                } else {
                    (c.state_score[i * width + j], c.state_kv[i * width + j])
                }
            };
            let count = if c.overlapping() { 2 * r } else { r };
            let mx = (0..count)
                .map(|i| candidates(i).0)
                .fold(f32::NEG_INFINITY, f32::max);
            let (mut num, mut den) = (0f32, 0f32);
            for i in 0..count {
                let (s, v) = candidates(i);
                let e = (s - mx).exp();
                num += e * v;
                den += e;
            }
            *out = if den > 0.0 { num / den } else { 0.0 };
        }
        let mut row = pooled.clone();
        rms_norm_in_place(&mut row, Some(&norm), cfg.rms_eps);
        rope.apply(&mut row, p + 1 - r, false);
        if numerics == Numerics::Official {
            match kind {
                CompressorKind::Attention => fp8_kv_round_trip(&mut row, d - cfg.n_rot),
                CompressorKind::Indexer => {
                    hadamard(&mut row);
                    fp4_round_trip(&mut row);
                }
            }
        }
        b.store_round(&mut row);
        c.rows.extend_from_slice(&row);
        c.n_rows += 1;
        if c.overlapping() {
            // The current window becomes the previous one.
            c.state_kv.copy_within(r * width..2 * r * width, 0);
            c.state_score.copy_within(r * width..2 * r * width, 0);
        }
    }
}

pub fn index(
    b: &CpuBackend,
    kv: &CpuKv,
    layer: usize,
    w: &IndexerWeights,
    n: &Act,
    q_latent: &Act,
    pos0: usize,
) -> Selection {
    let cfg = &b.cfg;
    let (heads, id) = (cfg.indexer_heads, cfg.indexer_head_dim);
    let rows = kv.layers[layer]
        .index
        .as_ref()
        .expect("sparse layer has an indexer");
    let rope = &b.ropes[layer];
    let scale = 1.0 / ((heads * id) as f32).sqrt();
    let q_rows = WeightRows::of(&w.q_b, b.bytes(&w.q_b), 0);
    let proj_rows = WeightRows::of(&w.proj, b.bytes(&w.proj), 0);
    let select = |t: usize| -> Option<Vec<u32>> {
        let p = pos0 + t;
        let visible = (p + 1) / rows.ratio;
        if visible <= cfg.indexer_top_k {
            return None;
        }
        let mut q = vec![0f32; heads * id];
        let mut weights = vec![0f32; heads];
        matvec(q_rows, q_latent.row(t), &mut q);
        for head in q.chunks_exact_mut(id) {
            rope.apply(head, p, false);
            if b.opts.numerics == Numerics::Official {
                hadamard(head);
                fp4_round_trip(head);
            }
        }
        matvec(proj_rows, n.row(t), &mut weights);
        let scores: Vec<f32> = (0..visible)
            .map(|c| {
                let k = rows.row(c);
                q.chunks_exact(id)
                    .zip(&weights)
                    .map(|(qh, &wh)| {
                        let dot: f32 = qh.iter().zip(k).map(|(a, b)| a * b).sum();
                        wh * scale * dot.max(0.0)
                    })
                    .sum()
            })
            .collect();
        let mut chosen = top_k(&scores, cfg.indexer_top_k);
        chosen.sort_unstable();
        Some(chosen)
    };
    map_ranges(b.opts.threads, n.rows, 4, |a, z| {
        (a..z).map(select).collect::<Vec<_>>()
    })
    .into_iter()
    .flat_map(|(_, _, part)| part)
    .collect()
}

pub fn attend(
    b: &CpuBackend,
    kv: &CpuKv,
    layer: usize,
    q: &Act,
    sinks: &Tensor,
    selection: Option<&Selection>,
    pos0: usize,
) -> Act {
    let cfg = &b.cfg;
    let hd = cfg.head_dim;
    let sinks = b.f32s(sinks);
    let lkv = &kv.layers[layer];
    let scale = 1.0 / (hd as f32).sqrt();
    // The rows token t attends to: its raw window, then the visible (or selected) compressed rows.
    let keys_of = |t: usize| -> Vec<&[f32]> {
        let p = pos0 + t;
        let first = (p + 1).saturating_sub(cfg.sliding_window);
        let mut keys: Vec<&[f32]> = (first..=p).map(|pos| lkv.raw.row(pos)).collect();
        if let Some(c) = &lkv.attn {
            match selection.and_then(|s| s[t].as_ref()) {
                Some(chosen) => keys.extend(chosen.iter().map(|&i| c.row(i as usize))),
                None => keys.extend((0..(p + 1) / c.ratio).map(|i| c.row(i))),
            }
        }
        keys
    };
    let head_out = |qh: &[f32], keys: &[&[f32]], sink: f32, oh: &mut [f32]| {
        let scores: Vec<f32> = keys
            .iter()
            .map(|k| qh.iter().zip(*k).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let mx = scores.iter().fold(sink, |m, &s| m.max(s));
        let mut den = (sink - mx).exp();
        for (k, &s) in keys.iter().zip(&scores) {
            let e = (s - mx).exp();
            den += e;
            for (o, &v) in oh.iter_mut().zip(*k) {
                *o += e * v;
            }
        }
        oh.iter_mut().for_each(|o| *o /= den);
    };
    let threads = b.opts.threads;
    let mut out = Act::zeros(q.rows, q.width);
    if q.rows == 1 {
        // Decode: split the heads over threads.
        let keys = keys_of(0);
        let parts = map_ranges(threads, cfg.n_head, 8, |a, z| {
            let mut o = vec![0f32; (z - a) * hd];
            for h in a..z {
                head_out(
                    &q.row(0)[h * hd..(h + 1) * hd],
                    &keys,
                    sinks[h],
                    &mut o[(h - a) * hd..(h - a + 1) * hd],
                );
            }
            o
        });
        for (a, _, o) in parts {
            out.data[a * hd..a * hd + o.len()].copy_from_slice(&o);
        }
    } else {
        // Prefill: split the tokens over threads.
        let parts = map_ranges(threads, q.rows, 4, |a, z| {
            let mut o = vec![0f32; (z - a) * q.width];
            for t in a..z {
                let keys = keys_of(t);
                for h in 0..cfg.n_head {
                    let at = (t - a) * q.width + h * hd;
                    head_out(
                        &q.row(t)[h * hd..(h + 1) * hd],
                        &keys,
                        sinks[h],
                        &mut o[at..at + hd],
                    );
                }
            }
            o
        });
        for (a, _, o) in parts {
            out.data[a * q.width..a * q.width + o.len()].copy_from_slice(&o);
        }
    }
    out
}

pub fn output(b: &CpuBackend, layer: usize, w: &AttentionWeights, o: &Act, pos0: usize) -> Act {
    let cfg = &b.cfg;
    let hd = cfg.head_dim;
    let rope = &b.ropes[layer];
    let group_in = cfg.heads_per_group() * hd;
    let mut o = o.clone();
    for t in 0..o.rows {
        for head in o.row_mut(t).chunks_exact_mut(hd) {
            rope.apply(head, pos0 + t, true);
        }
    }
    let out_a = WeightRows::of(&w.output_a, b.bytes(&w.output_a), 0);
    let mut low = Act::zeros(o.rows, cfg.n_out_group * cfg.o_lora_rank);
    for g in 0..cfg.n_out_group {
        let mut xg = Act::zeros(o.rows, group_in);
        for t in 0..o.rows {
            xg.row_mut(t)
                .copy_from_slice(&o.row(t)[g * group_in..(g + 1) * group_in]);
        }
        let yg = matmul(
            out_a.slice(g * cfg.o_lora_rank, cfg.o_lora_rank),
            &xg,
            b.opts.threads,
        );
        for t in 0..o.rows {
            low.row_mut(t)[g * cfg.o_lora_rank..(g + 1) * cfg.o_lora_rank]
                .copy_from_slice(yg.row(t));
        }
    }
    b.matmul(&w.output_b, &low)
}
