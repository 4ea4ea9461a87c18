//! Stage parity: every GPU stage against the CPU reference on the same
//! random inputs, with the tiny_a weights (and random Q4_K blocks, a format
//! tiny_a lacks). Continuous stages are compared in exact numerics; the
//! quantisation simulations are checked for bit-identity on their own,
//! since a 1-ulp input difference may move an FP8/FP4 value by a whole step.

use ds4_cpu::{Act, CpuBackend, CpuKv, CpuOptions};
use ds4_gguf::GgmlType;
use ds4_model::backend::{Backend, CompressorKind};
use ds4_model::numerics::{f16_round, fp4_round_trip, fp8_kv_round_trip, hadamard, Numerics};
use ds4_model::{AttentionKind, Model, Tensor};
use ds4_quant::BlockFormat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Report;
use crate::{CudaAct, CudaBackend, CudaKv, Simulation};

type Res<T> = anyhow::Result<T>;

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn format_of(t: GgmlType) -> BlockFormat {
    ds4_cpu::kernels::block_format(t)
}

struct Ctx<'a> {
    model: &'a Model,
    gpu: &'a CudaBackend,
    cpu: CpuBackend,
    rng: ChaCha8Rng,
}

impl Ctx<'_> {
    fn bytes(&self, t: &Tensor) -> &[u8] {
        self.model.bytes(t)
    }

    /// The same random rows on both backends.
    fn act(&mut self, rows: usize, width: usize, scale: f32) -> Res<(Act, CudaAct)> {
        let data = uniform(&mut self.rng, rows * width, scale);
        let g = self.gpu.upload_act(rows, width, &data)?;
        Ok((Act::from_vec(rows, width, data), g))
    }

    fn down(&self, a: &CudaAct) -> Res<Vec<f32>> {
        Ok(self.gpu.download_act(a)?)
    }
}

pub fn run(model: &Model, gpu: &mut CudaBackend, report: &mut Report) -> Res<()> {
    gpu.set_numerics(Numerics::Exact);
    let cpu = CpuBackend::new(
        model,
        CpuOptions {
            numerics: Numerics::Exact,
            threads: std::thread::available_parallelism().map_or(1, |p| p.get()),
        },
    );
    let mut c = Ctx {
        model,
        gpu: &*gpu,
        cpu,
        rng: ChaCha8Rng::seed_from_u64(0x0d5_4cda),
    };
    formats(&mut c, report)?;
    simulations(&mut c, report)?;
    hyper_connections(&mut c, report)?;
    index_kernels(&mut c, report)?;
    layers(&mut c, report, &Plan::TINY)
}

/// The stages at production widths (see `wide`): hyper-connections, every
/// attention kind over more than 4 × 512 tokens (so the indexer selects 512
/// of 640 rows), both routings and the experts.
pub fn run_wide(model: &Model, gpu: &mut CudaBackend, report: &mut Report) -> Res<()> {
    gpu.set_numerics(Numerics::Exact);
    let mut c = Ctx {
        model,
        gpu: &*gpu,
        cpu: CpuBackend::new(
            model,
            CpuOptions {
                numerics: Numerics::Exact,
                threads: std::thread::available_parallelism().map_or(1, |p| p.get()),
            },
        ),
        rng: ChaCha8Rng::seed_from_u64(0x0d5_3de),
    };
    hyper_connections(&mut c, report)?;
    layers(&mut c, report, &Plan::WIDE)
}

/// How long the KV sequences of the attention checks run.
struct Plan {
    batches: &'static [usize],
    /// Tokens whose indexer choice may differ from the CPU's: exact near-ties
    /// of 640 continuous scores can fall either way at f32 precision.
    sel_mismatch_permille: usize,
}

impl Plan {
    const TINY: Plan = Plan {
        batches: &[48, 1, 1, 1, 1, 1, 1],
        sel_mismatch_permille: 0,
    };
    const WIDE: Plan = Plan {
        batches: &[512, 512, 512, 512, 512, 1, 1, 1],
        sel_mismatch_permille: 10,
    };
}

fn layers(c: &mut Ctx, report: &mut Report, plan: &Plan) -> Res<()> {
    let cfg = c.model.config.clone();
    for kind in [
        AttentionKind::Window,
        AttentionKind::Sparse,
        AttentionKind::Heavy,
    ] {
        if let Some(il) = (0..cfg.n_layer).find(|&il| cfg.attention_kind(il) == kind) {
            attention(c, report, il, plan)?;
        }
    }
    ffn(c, report, 0)?;
    if cfg.n_hash_layer < cfg.n_layer {
        ffn(c, report, cfg.n_hash_layer)?;
    }
    Ok(())
}

/// The three indexer-score kernels on the same random inputs: every written
/// score bit-identical (the one-row-per-warp kernel is the one the stage
/// checks compare with the CPU), at production widths and with a head
/// count below 64, partial row tiles and token groups included.
fn index_kernels(c: &mut Ctx, report: &mut Report) -> Res<()> {
    use crate::attention::IndexScoresKernel;
    // (heads, ratio, first position, tokens)
    for (heads, ratio, pos0, tokens) in [(64, 4, 4093, 37), (64, 4, 69_999, 1), (17, 128, 300, 9)] {
        let visible_last = (pos0 + tokens) / ratio;
        let q = uniform(&mut c.rng, tokens * heads * 128, 1.0);
        let w = uniform(&mut c.rng, tokens * heads, 1.0);
        let keys = uniform(&mut c.rng, visible_last * 128, 1.0);
        let runs = IndexScoresKernel::ALL
            .iter()
            .map(|&k| {
                c.gpu
                    .index_scores_on_host_data(k, heads, pos0, ratio, &q, &w, &keys)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Entries each token must have: rows below its visible count.
        let mut written = 0usize;
        let mut differ = 0usize;
        for t in 0..tokens {
            let visible = (pos0 + t + 1) / ratio;
            for r in 0..visible {
                let at = t * visible_last + r;
                let bits = runs[0][at].to_bits();
                written += 1;
                if runs[0][at].is_nan() || runs[1..].iter().any(|run| run[at].to_bits() != bits) {
                    differ += 1;
                }
            }
        }
        report.push(
            format!("index_scores kernels ({heads} heads, {tokens} tok)"),
            format!("{differ} of {written} scores differ between the 3 kernels (or unwritten)"),
            differ == 0 && written > 0,
        );
    }
    Ok(())
}

/// Every block format: dequantisation bit-identical to ds4-quant, and the
/// matrix kernel within tolerance of ds4-quant's matvec.
fn formats(c: &mut Ctx, report: &mut Report) -> Res<()> {
    let w = &c.model.weights;
    let l0 = &w.layers[0];
    let samples: Vec<&Tensor> = vec![
        &l0.attn.norm,
        &l0.hc_attn.func,
        &l0.attn.q_a,
        &l0.ffn.down_exps,
        &l0.ffn.gate_exps,
    ];
    let mut cases: Vec<(String, GgmlType, usize, usize, Vec<u8>)> = samples
        .into_iter()
        .map(|t| {
            let bytes = c.bytes(t)[..t.matrix_bytes()].to_vec();
            (t.name.clone(), t.ggml_type, t.row_len(), t.n_rows(), bytes)
        })
        .collect();
    // Q4_K is not in tiny_a: random weights through ds4-quant's quantiser.
    let (rows, len) = (48, 512);
    let values = uniform(&mut c.rng, rows * len, 0.05);
    let mut q4 = vec![0u8; rows * (len / 256) * 144];
    ds4_quant::quantize(BlockFormat::Q4_K, &values, &mut q4)?;
    cases.push(("random".into(), GgmlType::Q4_K, len, rows, q4));
    // Production widths (the 16-byte GEMV kernels and full GEMM tiles).
    for (t, row_len, n_rows) in [
        (GgmlType::Q8_0, 4096, 160),
        (GgmlType::IQ2_XXS, 4096, 136),
        (GgmlType::Q2_K, 2048, 130),
        (GgmlType::Q4_K, 4096, 40),
        (GgmlType::F16, 4096, 72),
    ] {
        let bytes = random_blocks(&mut c.rng, t, row_len, n_rows);
        cases.push((format!("random {row_len}"), t, row_len, n_rows, bytes));
    }
    for (name, t, row_len, n_rows, bytes) in cases {
        let mut want = vec![0f32; row_len * n_rows];
        ds4_quant::dequantize(format_of(t), &bytes, &mut want)?;
        let got = c.gpu.dequantize_host(t, row_len, n_rows, &bytes)?;
        report.identical(&format!("dequant {t} ({name})"), &got, &want);
        // 3 rows: the GEMV; 37: the tensor-core GEMM (a partial tile).
        for n_tok in [3, 37] {
            let x = uniform(&mut c.rng, n_tok * row_len, 1.0);
            let got = c.gpu.matmul_host(t, row_len, n_rows, &bytes, &x)?;
            let mut want = vec![0f32; n_tok * n_rows];
            for (xt, yt) in x.chunks_exact(row_len).zip(want.chunks_exact_mut(n_rows)) {
                ds4_quant::matvec(format_of(t), &bytes, n_rows, xt, yt)?;
            }
            report.compare(&format!("matvec {t} x{n_tok} ({name})"), &got, &want);
        }
        if matches!(t, GgmlType::IQ2_XXS | GgmlType::Q2_K) && row_len >= 1024 {
            planes_range(c, report, &name, t, row_len, n_rows, &bytes)?;
        }
    }
    Ok(())
}

/// The expert GEMVs on int8 activation planes (matvec_i8.cu) keep each x
/// to 21 bits below its 32-value group's largest |x|: with groups spread
/// over 2^±20 (and an all-zero group) the products stay within 1e-5 of
/// ds4-quant's f32 matvec.
fn planes_range(
    c: &mut Ctx,
    report: &mut Report,
    name: &str,
    t: GgmlType,
    row_len: usize,
    n_rows: usize,
    bytes: &[u8],
) -> Res<()> {
    let n_tok = 3;
    let mut x = uniform(&mut c.rng, n_tok * row_len, 1.0);
    for (g, group) in x.chunks_exact_mut(32).enumerate() {
        let scale = if g % 37 == 5 {
            0.0
        } else {
            2f32.powi(c.rng.random_range(-20..=20))
        };
        group.iter_mut().for_each(|v| *v *= scale);
    }
    let got = c.gpu.matmul_host(t, row_len, n_rows, bytes, &x)?;
    let mut want = vec![0f32; n_tok * n_rows];
    for (xt, yt) in x.chunks_exact(row_len).zip(want.chunks_exact_mut(n_rows)) {
        ds4_quant::matvec(format_of(t), bytes, n_rows, xt, yt)?;
    }
    report.compare_within(
        &format!("matvec {t} x{n_tok} ({name}, x over 2^±20)"),
        &got,
        &want,
        1e-5,
    );
    Ok(())
}

/// Random blocks of a format with sane scales (f16 values ~1e-2).
fn random_blocks(rng: &mut ChaCha8Rng, t: GgmlType, row_len: usize, n_rows: usize) -> Vec<u8> {
    let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
    if t == GgmlType::F16 {
        return (0..row_len * n_rows)
            .flat_map(|_| f16(rng.random_range(-0.05f32..0.05)))
            .collect();
    }
    let (elems, bytes) = (t.block_elems() as usize, t.block_bytes() as usize);
    let n_blocks = row_len / elems * n_rows;
    let mut out = vec![0u8; n_blocks * bytes];
    rng.fill(&mut out[..]);
    for blk in out.chunks_exact_mut(bytes) {
        let mut put = |at: usize, v: f32| blk[at..at + 2].copy_from_slice(&f16(v));
        match t {
            GgmlType::Q8_0 | GgmlType::IQ2_XXS => put(0, rng.random_range(0.001f32..0.02)),
            GgmlType::Q2_K => {
                put(80, rng.random_range(0.001f32..0.02));
                put(82, rng.random_range(0.001f32..0.02));
            }
            GgmlType::Q4_K => {
                put(0, rng.random_range(0.001f32..0.02));
                put(2, rng.random_range(0.001f32..0.02));
            }
            _ => {}
        }
    }
    out
}

/// The official numerics' simulations must be bit-identical to numerics.rs.
fn simulations(c: &mut Ctx, report: &mut Report) -> Res<()> {
    let (rows, width, nope) = (64, 512, 448);
    let mut data = Vec::with_capacity(rows * width);
    for r in 0..rows {
        // Magnitudes from 1e-7 (subnormal FP8 scales) to 1e4 (clamping).
        let scale = 10f32.powf(-7.0 + 11.0 * r as f32 / rows as f32);
        let mut row = uniform(&mut c.rng, width, scale);
        if r % 8 == 0 {
            row[..64].iter_mut().for_each(|v| *v = 0.0);
        }
        if r % 8 == 1 {
            // Exact midpoints between FP8 codes at unit scale: ties to even.
            for (i, v) in row[64..128].iter_mut().enumerate() {
                *v = 1.0 + (2 * (i % 8) + 1) as f32 / 16.0;
            }
        }
        data.extend(row);
    }
    let mut want = data.clone();
    want.chunks_exact_mut(width)
        .for_each(|r| fp8_kv_round_trip(r, nope));
    let got = c
        .gpu
        .simulate(Simulation::Fp8 { n_nope: nope }, width, &data)?;
    report.identical("sim FP8 E4M3 KV round trip", &got, &want);

    let n = 128;
    let mut data = Vec::new();
    for r in 0..rows {
        let scale = 10f32.powf(-6.0 + 9.0 * r as f32 / rows as f32);
        data.extend(uniform(&mut c.rng, n, scale));
    }
    for fp4 in [false, true] {
        let mut want = data.clone();
        for row in want.chunks_exact_mut(n) {
            hadamard(row);
            if fp4 {
                fp4_round_trip(row);
            }
        }
        let got = c.gpu.simulate(Simulation::HadamardFp4 { fp4 }, n, &data)?;
        let name = if fp4 {
            "sim Hadamard128 + FP4 E2M1"
        } else {
            "sim Hadamard128"
        };
        report.identical(name, &got, &want);
    }
    let mut data = uniform(&mut c.rng, 4096, 70000.0);
    data.extend(uniform(&mut c.rng, 4096, 1e-5));
    let want: Vec<f32> = data.iter().map(|&v| f16_round(v)).collect();
    let got = c.gpu.simulate(Simulation::F16Round, 4096, &data)?;
    report.identical("sim f16 round", &got, &want);
    Ok(())
}

fn hyper_connections(c: &mut Ctx, report: &mut Report) -> Res<()> {
    let cfg = c.model.config.clone();
    let w = &c.model.weights;
    let (t, d, hc) = (5, cfg.d_model, cfg.n_hc * cfg.d_model);
    let tokens: Vec<u32> = (0..t)
        .map(|_| c.rng.random_range(0..cfg.vocab_size as u32))
        .collect();
    let want = c.cpu.embed(&w.token_embd, &tokens, 0)?;
    let got = c.gpu.embed(&w.token_embd, &tokens, 0)?;
    report.identical("stage embed", &c.down(&got)?, &want.data);

    let (xc, xg) = c.act(t, d, 2.0)?;
    let layer = &w.layers[0];
    let want = c.cpu.rms_norm(&xc, &layer.attn.norm)?;
    let got = c.gpu.rms_norm(&xg, &layer.attn.norm)?;
    report.compare("stage rms_norm", &c.down(&got)?, &want.data);

    let (mut xc, mut xg) = c.act(t, hc, 1.0)?;
    let (yc, mixc) = c.cpu.hc_pre(&layer.hc_attn, &xc)?;
    let (yg, mixg) = c.gpu.hc_pre(&layer.hc_attn, &xg)?;
    report.compare("stage hc_pre", &c.down(&yg)?, &yc.data);
    let (nc, _) = c.cpu.hc_pre_norm(&layer.hc_attn, &xc, &layer.attn.norm)?;
    let (ng, _) = c.gpu.hc_pre_norm(&layer.hc_attn, &xg, &layer.attn.norm)?;
    report.compare("stage hc_pre_norm (fused)", &c.down(&ng)?, &nc.data);
    let (fc, fg) = c.act(t, d, 1.0)?;
    c.cpu.hc_post(&mut xc, &fc, &mixc)?;
    c.gpu.hc_post(&mut xg, &fg, &mixg)?;
    report.compare("stage hc_post", &c.down(&xg)?, &xc.data);

    let want = c.cpu.output_head(w, &xc, 1..t)?;
    let got = c.gpu.output_head(w, &xg, 1..t)?;
    report.compare("stage output_head", &got, &want);

    // One token's HC-post then the next sublayer's HC-pre and norm (one
    // launch when decoding): the same bits as the two stages on the GPU.
    let (mut xc, xg) = c.act(1, hc, 1.0)?;
    let (fc, fg) = c.act(1, d, 1.0)?;
    let (_, mixc) = c.cpu.hc_pre(&layer.hc_attn, &xc)?;
    let (_, mixg) = c.gpu.hc_pre(&layer.hc_attn, &xg)?;
    let state = c.down(&xg)?;
    let (next, norm) = (&layer.hc_ffn, &layer.ffn.norm);
    let mut sep = c.gpu.upload_act(1, hc, &state)?;
    c.gpu.hc_post(&mut sep, &fg, &mixg)?;
    let (n_sep, _) = c.gpu.hc_pre_norm(next, &sep, norm)?;
    let mut fused = c.gpu.upload_act(1, hc, &state)?;
    let (n_fused, _) = c.gpu.hc_post_pre_norm(&mut fused, &fg, &mixg, next, norm)?;
    let (n_cpu, _) = c.cpu.hc_post_pre_norm(&mut xc, &fc, &mixc, next, norm)?;
    report.identical(
        "stage hc_post + hc_pre_norm, fused vs separate (state)",
        &c.down(&fused)?,
        &c.down(&sep)?,
    );
    report.identical(
        "stage hc_post + hc_pre_norm, fused vs separate (output)",
        &c.down(&n_fused)?,
        &c.down(&n_sep)?,
    );
    report.compare(
        "stage hc_post + hc_pre_norm, fused vs CPU",
        &c.down(&n_fused)?,
        &n_cpu.data,
    );
    Ok(())
}

/// One layer's attention stages, over a prefill batch and then single-token
/// decode steps, with the KV state of both backends fed the same rows.
fn attention(c: &mut Ctx, report: &mut Report, il: usize, plan: &Plan) -> Res<()> {
    let cfg = c.model.config.clone();
    let kind = cfg.attention_kind(il);
    let tag = format!("L{il} {kind:?}");
    let w = &c.model.weights.layers[il].attn;
    let (d, hd, q_width) = (cfg.d_model, cfg.head_dim, cfg.n_head * cfg.head_dim);

    let (nc, ng) = c.act(4, d, 1.7)?;
    let want = c.cpu.attention_inputs(il, w, &nc, 3)?;
    let got = c.gpu.attention_inputs(il, w, &ng, 3)?;
    report.compare(
        &format!("stage attention_inputs q ({tag})"),
        &c.down(&got.q)?,
        &want.q.data,
    );
    report.compare(
        &format!("stage attention_inputs q_latent ({tag})"),
        &c.down(&got.q_latent)?,
        &want.q_latent.data,
    );
    report.compare(
        &format!("stage attention_inputs kv ({tag})"),
        &c.down(&got.kv)?,
        &want.kv.data,
    );

    let prefill = plan.batches.iter().copied().max().unwrap_or(1);
    let ctx: usize = plan.batches.iter().sum::<usize>() + 8;
    let mut kc: CpuKv = c.cpu.new_kv(ctx, prefill)?;
    let mut kg: CudaKv = c.gpu.new_kv(ctx, prefill)?;
    let (mut worst_attend, mut worst_part, mut sel_diff, mut sel_total) =
        (0f64, 0f64, 0usize, 0usize);
    let mut part_tokens = 0usize;
    let mut comp_worst = [0f64; 2];
    let mut pos0 = 0;
    for &batch in plan.batches {
        let (nc, ng) = c.act(batch, d, 1.7)?;
        let (rc, rg) = c.act(batch, hd, 1.0)?;
        let (qc, qg) = c.act(batch, q_width, 1.0)?;
        let (lc, lg) = c.act(batch, cfg.q_lora_rank, 1.7)?;
        c.cpu.append_raw(&mut kc, il, &rc, pos0)?;
        c.gpu.append_raw(&mut kg, il, &rg, pos0)?;
        if let Some(cw) = &w.compressor {
            c.cpu
                .compress(&mut kc, il, CompressorKind::Attention, cw, &nc, pos0)?;
            c.gpu
                .compress(&mut kg, il, CompressorKind::Attention, cw, &ng, pos0)?;
            let cpu_rows = kc.layers[il]
                .attn
                .as_ref()
                .map(|x| x.rows.clone())
                .unwrap_or_default();
            let gpu_rows = c.gpu.compressed_rows(&kg, il, CompressorKind::Attention)?;
            comp_worst[0] = comp_worst[0].max(super::max_rel(&gpu_rows, &cpu_rows));
            if gpu_rows.len() != cpu_rows.len() {
                comp_worst[0] = f64::INFINITY;
            }
        }
        let (sc, sg) = match (&w.indexer, kind) {
            (Some(ix), AttentionKind::Sparse) => {
                c.cpu.compress(
                    &mut kc,
                    il,
                    CompressorKind::Indexer,
                    &ix.compressor,
                    &nc,
                    pos0,
                )?;
                c.gpu.compress(
                    &mut kg,
                    il,
                    CompressorKind::Indexer,
                    &ix.compressor,
                    &ng,
                    pos0,
                )?;
                let cpu_rows = kc.layers[il]
                    .index
                    .as_ref()
                    .map(|x| x.rows.clone())
                    .unwrap_or_default();
                let gpu_rows = c.gpu.compressed_rows(&kg, il, CompressorKind::Indexer)?;
                comp_worst[1] = comp_worst[1].max(super::max_rel(&gpu_rows, &cpu_rows));
                if gpu_rows.len() != cpu_rows.len() {
                    comp_worst[1] = f64::INFINITY;
                }
                let sc = c.cpu.index(&kc, il, ix, &nc, &lc, pos0)?;
                let sg = c.gpu.index(&kg, il, ix, &ng, &lg, pos0)?;
                let host = c.gpu.selection_to_host(&sg, il)?;
                sel_total += sc.iter().filter(|s| s.is_some()).count();
                sel_diff += sc.iter().zip(&host).filter(|(a, b)| a != b).count();
                // Attention gets the CPU's choice on both sides, so a
                // near-tie flip in the indexer does not show up here too.
                let shared = c.gpu.selection_from_host(&sc, il, pos0)?;
                (Some(sc), Some(shared))
            }
            _ => (None, None),
        };
        let oc = c.cpu.attend(&kc, il, &qc, &w.sinks, sc.as_ref(), pos0)?;
        let og = c.gpu.attend(&kg, il, &qg, &w.sinks, sg.as_ref(), pos0)?;
        worst_attend = worst_attend.max(super::max_rel(&c.down(&og)?, &oc.data));
        // Batches go to the tensor cores by default; attend_part serves
        // them with the option off (and key lists too long for attend_mma).
        if batch >= 4 {
            let op = c
                .gpu
                .attend_with(&kg, il, &qg, &w.sinks, sg.as_ref(), pos0, false)?;
            worst_part = worst_part.max(super::max_rel(&c.down(&op)?, &oc.data));
            part_tokens += batch;
        }
        pos0 += batch;
    }
    let limit = super::STAGE_LIMIT;
    if w.compressor.is_some() {
        report.push(
            format!("stage compress attention ({tag})"),
            format!(
                "max rel err {:.2e} over {pos0} tokens (limit {limit:.0e})",
                comp_worst[0]
            ),
            comp_worst[0] <= limit,
        );
    }
    if kind == AttentionKind::Sparse {
        report.push(
            format!("stage compress indexer ({tag})"),
            format!("max rel err {:.2e} (limit {limit:.0e})", comp_worst[1]),
            comp_worst[1] <= limit,
        );
        report.push(
            format!("stage index top-k ({tag})"),
            format!(
                "{sel_diff} of {sel_total} selecting tokens differ from the CPU's choice (allowed {}‰)",
                plan.sel_mismatch_permille
            ),
            sel_diff * 1000 <= plan.sel_mismatch_permille * sel_total && sel_total > 0,
        );
    }
    report.push(
        format!("stage attend ({tag})"),
        format!("max rel err {worst_attend:.2e} over {pos0} tokens (limit {limit:.0e})"),
        worst_attend <= limit,
    );
    report.push(
        format!("stage attend, batches by attend_part ({tag})"),
        format!("max rel err {worst_part:.2e} over {part_tokens} tokens (limit {limit:.0e})"),
        worst_part <= limit && part_tokens > 0,
    );

    let (oc, og) = c.act(3, q_width, 1.0)?;
    let want = c.cpu.attention_output(il, w, &oc, 17)?;
    let got = c.gpu.attention_output(il, w, &og, 17)?;
    report.compare(
        &format!("stage attention_output ({tag})"),
        &c.down(&got)?,
        &want.data,
    );
    Ok(())
}

fn ffn(c: &mut Ctx, report: &mut Report, il: usize) -> Res<()> {
    // 6 tokens: the decode kernels; 40: experts grouped on the tensor cores.
    for t in [6, 40] {
        ffn_batch(c, report, il, t)?;
    }
    Ok(())
}

fn ffn_batch(c: &mut Ctx, report: &mut Report, il: usize, t: usize) -> Res<()> {
    let cfg = c.model.config.clone();
    let tag = if il < cfg.n_hash_layer {
        format!("hash, {t} tokens")
    } else {
        format!("learned, {t} tokens")
    };
    let w = &c.model.weights.layers[il].ffn;
    let tokens: Vec<u32> = (0..t)
        .map(|_| c.rng.random_range(0..cfg.vocab_size as u32))
        .collect();
    let (nc, ng) = c.act(t, cfg.d_model, 1.7)?;
    let rc = c.cpu.route(il, w, &nc, &tokens)?;
    let rg = c.gpu.route(il, w, &ng, &tokens)?;
    let (ids, weights) = c.gpu.routes_to_host(&rg)?;
    let same_ids = ids == rc.ids;
    report.push(
        format!("stage route ids (L{il} {tag})"),
        format!(
            "{} of {} choices equal the CPU's",
            ids.iter().zip(&rc.ids).filter(|(a, b)| a == b).count(),
            rc.ids.len()
        ),
        same_ids,
    );
    report.compare(
        &format!("stage route weights (L{il} {tag})"),
        &weights,
        &rc.weights,
    );
    if same_ids {
        let want = c.cpu.experts(il, w, &nc, &rc)?;
        let got = c.gpu.experts(il, w, &ng, &rg)?;
        report.compare(
            &format!("stage experts (L{il} {tag})"),
            &c.down(&got)?,
            &want.data,
        );
    }
    Ok(())
}
