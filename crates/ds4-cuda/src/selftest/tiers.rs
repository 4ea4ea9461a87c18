//! The tiny_a oracle tiers (as ds4-cpu's oracle_tiny_a tests) on the GPU,
//! and run-to-run determinism.

use std::path::Path;

use ds4_model::backend::{Backend, Export};
use ds4_model::forward::{forward, forward_chunked, Logits};
use ds4_model::numerics::Numerics;
use ds4_model::payload::KvState;
use ds4_model::Model;

use super::{argmax_agreement, read_npy_f32, rel_l2, Report};
use crate::CudaBackend;

pub fn tokens(data: &Path) -> anyhow::Result<Vec<u32>> {
    let path = data.join("tokens.i32");
    let bytes =
        std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as u32)
        .collect())
}

/// Token-by-token decode, all logits.
fn decode(gpu: &CudaBackend, model: &Model, tokens: &[u32]) -> anyhow::Result<Vec<f32>> {
    let mut kv = gpu.new_kv(256, 1)?;
    let mut logits = Vec::new();
    for &t in tokens {
        logits.extend(forward(gpu, &model.weights, &mut kv, &[t], Logits::Last)?);
    }
    Ok(logits)
}

pub fn run(
    model: &Model,
    gpu: &mut CudaBackend,
    data: &Path,
    tokens: &[u32],
    report: &mut Report,
) -> anyhow::Result<()> {
    let vocab = model.config.vocab_size;
    let n = tokens.len();

    // Exact numerics vs plain transformers (f32, no simulations).
    gpu.set_numerics(Numerics::Exact);
    let (_, hf) = read_npy_f32(&data.join("hf_none_logits.npy"))?;
    let mut kv = gpu.new_kv(256, n)?;
    let t0 = std::time::Instant::now();
    let batched = forward(gpu, &model.weights, &mut kv, tokens, Logits::All)?;
    let secs = t0.elapsed().as_secs_f64();
    let rel = rel_l2(&batched, &hf);
    let agree = argmax_agreement(&batched, &hf, vocab);
    report.push(
        "tier exact batched vs hf_none_logits",
        format!(
            "rel L2 {rel:.2e} (limit 1e-4), argmax {agree}/{n} (need {n}), {:.1} ms",
            secs * 1e3
        ),
        rel < 1e-4 && agree == n,
    );

    let decoded = decode(gpu, model, tokens)?;
    let rel = rel_l2(&decoded, &hf);
    let agree = argmax_agreement(&decoded, &hf, vocab);
    report.push(
        "tier exact token-by-token vs hf_none",
        format!("rel L2 {rel:.2e} (limit 1e-4), argmax {agree}/{n}"),
        rel < 1e-4 && agree == n,
    );
    for chunk in [7, 64] {
        let mut kv = gpu.new_kv(256, chunk)?;
        let logits = forward_chunked(gpu, &model.weights, &mut kv, tokens, chunk, true)?;
        let rel = rel_l2(&logits, &decoded);
        report.push(
            format!("tier exact chunk {chunk} vs token-by-token"),
            format!("rel L2 {rel:.2e} (limit 1e-5)"),
            rel < 1e-5,
        );
    }

    // Official numerics, free-running token by token, vs ds4's own run.
    gpu.set_numerics(Numerics::Official);
    let (_, ds4) = read_npy_f32(&data.join("ds4_faithful_decode_logits.npy"))?;
    let official = decode(gpu, model, tokens)?;
    let agree = argmax_agreement(&official, &ds4, vocab);
    report.push(
        "tier official free-running vs ds4",
        format!(
            "argmax {agree}/{n} (need >= 75%), rel L2 {:.2e}",
            rel_l2(&official, &ds4)
        ),
        agree * 100 >= 75 * n,
    );
    // The same run on the CPU reference: how closely the two backends track.
    let cpu = ds4_cpu::CpuBackend::new(
        model,
        ds4_cpu::CpuOptions {
            numerics: Numerics::Official,
            threads: std::thread::available_parallelism().map_or(1, |p| p.get()),
        },
    );
    let mut kv = cpu.new_kv(256, 1)?;
    let mut cpu_logits = Vec::new();
    for &t in tokens {
        cpu_logits.extend(forward(&cpu, &model.weights, &mut kv, &[t], Logits::Last)?);
    }
    let agree = argmax_agreement(&official, &cpu_logits, vocab);
    report.push(
        "tier official GPU vs CPU backend",
        format!(
            "argmax {agree}/{n} (need >= 75%), rel L2 {:.2e}",
            rel_l2(&official, &cpu_logits)
        ),
        agree * 100 >= 75 * n,
    );
    Ok(())
}

/// Tier 2 (../shared/oracle/README.md): official numerics, each layer half
/// run for all positions from ds4's input state to that half, against
/// transformers' output of the same half (`hf_tf_kv_hc.npy`). Limits as the
/// CPU reference's test: global relative error <= 1e-3 per half and >= 95%
/// of positions within 1e-4.
pub fn teacher_forced(
    model: &Model,
    gpu: &mut CudaBackend,
    oracle: &Path,
    tokens: &[u32],
    report: &mut Report,
) -> anyhow::Result<()> {
    let hc_path = oracle.join("ds4_faithful_decode_hc.npy");
    let tf_path = oracle.join("hf_tf_kv_hc.npy");
    if !hc_path.exists() || !tf_path.exists() {
        println!(
            "[SKIP] tier 2 teacher-forced: {} lacks ds4_faithful_decode_hc.npy / hf_tf_kv_hc.npy \
             (pass --oracle ../shared/oracle/tiny_a)",
            oracle.display()
        );
        return Ok(());
    }
    gpu.set_numerics(Numerics::Official);
    let cfg = &model.config;
    let (n, layers) = (tokens.len(), cfg.n_layer);
    let width = cfg.n_hc * cfg.d_model;
    let (shape, ds4_hc) = read_npy_f32(&hc_path)?;
    let (tf_shape, want) = read_npy_f32(&tf_path)?;
    let expect_shape = vec![n, layers, 2, width];
    anyhow::ensure!(
        shape == expect_shape && tf_shape == expect_shape,
        "oracle shapes {shape:?} / {tf_shape:?}, expected {expect_shape:?}"
    );
    let state = |src: &[f32], l: usize, half: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|p| src[((p * layers + l) * 2 + half) * width..][..width].to_vec())
            .collect()
    };
    let embedded = gpu.embed(&model.weights.token_embd, tokens, 0)?;
    let embedded = gpu.download_act(&embedded)?;
    for l in 0..layers {
        for half in 0..2 {
            let input = match (l, half) {
                (0, 0) => embedded.clone(),
                (_, 0) => state(&ds4_hc, l - 1, 1),
                (_, _) => state(&ds4_hc, l, 0),
            };
            let mut x = gpu.upload_act(n, width, &input)?;
            let layer = &model.weights.layers[l];
            if half == 0 {
                let mut kv = gpu.new_kv(256, n)?;
                ds4_model::forward::attention_half(gpu, l, layer, &mut x, &mut kv, 0)?;
            } else {
                ds4_model::forward::ffn_half(gpu, l, layer, &mut x, tokens)?;
            }
            let got = gpu.download_act(&x)?;
            let expect = state(&want, l, half);
            let global = rel_l2(&got, &expect);
            let close = got
                .chunks_exact(width)
                .zip(expect.chunks_exact(width))
                .filter(|(a, e)| rel_l2(a, e) <= 1e-4)
                .count();
            report.push(
                format!("tier 2 layer {l} {}", ["attention", "ffn"][half]),
                format!(
                    "global rel {global:.2e} (limit 1e-3), {close}/{n} positions within 1e-4 \
                     (need 95%)"
                ),
                global <= 1e-3 && close * 100 >= 95 * n,
            );
        }
    }
    Ok(())
}

/// The same prompt twice (batched prefill and token-by-token decode, in
/// official numerics): the logits must be bit-identical.
pub fn determinism(
    model: &Model,
    gpu: &mut CudaBackend,
    tokens: &[u32],
    report: &mut Report,
) -> anyhow::Result<()> {
    gpu.set_numerics(Numerics::Official);
    let n = tokens.len();
    let run_batched = |gpu: &CudaBackend| -> anyhow::Result<Vec<f32>> {
        let mut kv = gpu.new_kv(256, n)?;
        Ok(forward(gpu, &model.weights, &mut kv, tokens, Logits::All)?)
    };
    let a = run_batched(gpu)?;
    let b = run_batched(gpu)?;
    report.identical("determinism batched prefill (official)", &a, &b);
    let a = decode(gpu, model, tokens)?;
    let b = decode(gpu, model, tokens)?;
    report.identical("determinism token-by-token (official)", &a, &b);
    Ok(())
}

/// The project's own transformers fixtures (tests/data/fixtures_*: HCA
/// ratio 128, Q4_K experts, long indexer selections) in exact numerics, as
/// ds4-cpu's oracle_own tests: one batch, and chunks of 61 tokens.
pub fn own_fixtures(
    dirs: &[std::path::PathBuf],
    device: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    for dir in dirs {
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let model = Model::open(dir.join("model.gguf"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let gpu = CudaBackend::new(
            &model,
            crate::CudaOptions {
                numerics: Numerics::Exact,
                device,
                ..crate::CudaOptions::default()
            },
        )?;
        let tokens = tokens(dir)?;
        let (_, want) = read_npy_f32(&dir.join("logits.npy"))?;
        let (n, vocab) = (tokens.len(), model.config.vocab_size);
        let mut kv = gpu.new_kv(n, n)?;
        let t0 = std::time::Instant::now();
        let logits = forward(&gpu, &model.weights, &mut kv, &tokens, Logits::All)?;
        let secs = t0.elapsed().as_secs_f64();
        let rel = rel_l2(&logits, &want);
        let agree = argmax_agreement(&logits, &want, vocab);
        report.push(
            format!("tier {name} exact batched"),
            format!(
                "rel L2 {rel:.2e} (limit 1e-4), argmax {agree}/{n}, {:.1} ms",
                secs * 1e3
            ),
            rel < 1e-4 && agree == n,
        );
        let chunk = 61;
        let mut kv = gpu.new_kv(n, chunk)?;
        let logits = forward_chunked(&gpu, &model.weights, &mut kv, &tokens, chunk, true)?;
        let rel = rel_l2(&logits, &want);
        let agree = argmax_agreement(&logits, &want, vocab);
        report.push(
            format!("tier {name} exact chunks of {chunk}"),
            format!("rel L2 {rel:.2e} (limit 1e-4), argmax {agree}/{n}"),
            rel < 1e-4 && agree == n,
        );
    }
    Ok(())
}

/// The production-width model end to end: GPU vs CPU logits of a prompt in
/// exact numerics, bit-identical reruns in official numerics, and decode
/// speed (informational: the kernels are not tuned yet).
pub fn wide(model: &Model, gpu: &mut CudaBackend, report: &mut Report) -> anyhow::Result<()> {
    let (vocab, n) = (model.config.vocab_size, 64);
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (i * 2_654_435_761) % vocab as u32)
        .collect();
    gpu.set_numerics(Numerics::Exact);
    let cpu = ds4_cpu::CpuBackend::new(
        model,
        ds4_cpu::CpuOptions {
            numerics: Numerics::Exact,
            threads: std::thread::available_parallelism().map_or(1, |p| p.get()),
        },
    );
    let mut kv = cpu.new_kv(n, n)?;
    let want = forward(&cpu, &model.weights, &mut kv, &tokens, Logits::All)?;
    let mut kv = gpu.new_kv(n, n)?;
    let got = forward(gpu, &model.weights, &mut kv, &tokens, Logits::All)?;
    let rel = rel_l2(&got, &want);
    let agree = argmax_agreement(&got, &want, vocab);
    report.push(
        "wide exact prompt GPU vs CPU",
        format!("rel L2 {rel:.2e} (limit 1e-3), argmax {agree}/{n}"),
        rel < 1e-3 && agree * 100 >= 95 * n,
    );

    gpu.set_numerics(Numerics::Official);
    let run = |gpu: &CudaBackend| -> anyhow::Result<Vec<f32>> {
        let mut kv = gpu.new_kv(n, n)?;
        Ok(forward(gpu, &model.weights, &mut kv, &tokens, Logits::All)?)
    };
    let a = run(gpu)?;
    let b = run(gpu)?;
    report.identical("wide determinism prompt (official)", &a, &b);

    let steps = 32;
    let mut kv = gpu.new_kv(n + steps, n)?;
    forward(gpu, &model.weights, &mut kv, &tokens, Logits::None)?;
    let mut times = Vec::with_capacity(steps);
    let mut next = tokens[n - 1];
    for _ in 0..steps {
        let t0 = std::time::Instant::now();
        let logits = forward(gpu, &model.weights, &mut kv, &[next], Logits::Last)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        next = super::argmax(&logits) as u32;
    }
    times.sort_by(f64::total_cmp);
    let median = times[steps / 2];
    report.push(
        "wide decode speed (info)",
        format!(
            "median {median:.2} ms/token over {steps} steps for {} layers (untuned kernels)",
            model.config.n_layer
        ),
        true,
    );
    Ok(())
}

/// All values of a state, in a fixed order (for comparing two backends).
fn state_values(s: &KvState) -> Vec<f32> {
    let mut out = Vec::new();
    for l in &s.layers {
        out.extend(&l.raw);
        for c in [&l.attn, &l.index].into_iter().flatten() {
            out.extend(&c.rows);
            out.extend(&c.state_kv);
            // Empty slots hold −1e30 on both sides; keep them out of the scale.
            out.extend(
                c.state_score
                    .iter()
                    .map(|&v| if v <= -1e29 { 0.0 } else { v }),
            );
        }
    }
    out
}

/// Session state moves (the engine's snapshots, rewinds and disk cache):
/// export/import and rewind must continue exactly like an uninterrupted
/// run, and the GPU's exported state must match the CPU's.
pub fn session(
    model: &Model,
    gpu: &mut CudaBackend,
    tokens: &[u32],
    report: &mut Report,
) -> anyhow::Result<()> {
    let (chunk, cut, w) = (32, 96, &model.weights);
    let n = tokens.len();
    gpu.set_numerics(Numerics::Official);
    let mut kv = gpu.new_kv(256, chunk)?;
    let reference = forward_chunked(gpu, w, &mut kv, tokens, chunk, true)?;
    let vocab = model.config.vocab_size;

    // Snapshot at `cut`, restore into a fresh session, continue.
    let mut kv = gpu.new_kv(256, chunk)?;
    let mut logits = forward_chunked(gpu, w, &mut kv, &tokens[..cut], chunk, true)?;
    let snap = gpu.kv_export(&kv, Export::Full)?;
    let mut restored = gpu.new_kv(256, chunk)?;
    gpu.kv_import(&mut restored, &snap)?;
    logits.extend(forward_chunked(
        gpu,
        w,
        &mut restored,
        &tokens[cut..],
        chunk,
        true,
    )?);
    report.identical("session export/import then continue", &logits, &reference);

    // Rewind point at 64, a different continuation, rewind, the real one.
    let mut kv = gpu.new_kv(256, chunk)?;
    forward_chunked(gpu, w, &mut kv, &tokens[..64], chunk, false)?;
    let point = gpu.kv_export(&kv, Export::RewindPoint)?;
    let detour: Vec<u32> = tokens[64..128].iter().rev().copied().collect();
    forward_chunked(gpu, w, &mut kv, &detour, chunk, false)?;
    gpu.kv_rewind(&mut kv, &point)?;
    let logits = forward_chunked(gpu, w, &mut kv, &tokens[64..], chunk, true)?;
    report.identical(
        "session rewind then re-evaluate",
        &logits,
        &reference[64 * vocab..n * vocab],
    );

    // The same state exported by both backends (exact numerics), and a CPU
    // state imported into the GPU continuing like the CPU.
    gpu.set_numerics(Numerics::Exact);
    let cpu = ds4_cpu::CpuBackend::new(
        model,
        ds4_cpu::CpuOptions {
            numerics: Numerics::Exact,
            threads: std::thread::available_parallelism().map_or(1, |p| p.get()),
        },
    );
    let mut kc = cpu.new_kv(256, chunk)?;
    forward_chunked(&cpu, w, &mut kc, &tokens[..cut], chunk, false)?;
    let mut kg = gpu.new_kv(256, chunk)?;
    forward_chunked(gpu, w, &mut kg, &tokens[..cut], chunk, false)?;
    let sc = cpu.kv_export(&kc, Export::Full)?;
    let sg = gpu.kv_export(&kg, Export::Full)?;
    let counts = |s: &KvState| -> Vec<usize> {
        s.layers
            .iter()
            .flat_map(|l| [&l.attn, &l.index].into_iter().flatten().map(|c| c.n_rows))
            .collect()
    };
    let same_shape = counts(&sc) == counts(&sg) && sc.n_tokens == sg.n_tokens;
    let err = super::max_rel(&state_values(&sg), &state_values(&sc));
    report.push(
        "session exported state GPU vs CPU",
        format!(
            "max rel err {err:.2e} (limit {:.0e}), row counts {}",
            super::STAGE_LIMIT,
            if same_shape { "equal" } else { "DIFFER" }
        ),
        same_shape && err <= super::STAGE_LIMIT,
    );
    let mut kg = gpu.new_kv(256, chunk)?;
    gpu.kv_import(&mut kg, &sc)?;
    let got = forward_chunked(gpu, w, &mut kg, &tokens[cut..], chunk, true)?;
    let want = forward_chunked(&cpu, w, &mut kc, &tokens[cut..], chunk, true)?;
    let rel = rel_l2(&got, &want);
    let agree = argmax_agreement(&got, &want, vocab);
    report.push(
        "session CPU state continued on the GPU",
        format!(
            "rel L2 {rel:.2e} vs the CPU's continuation (limit 1e-4), argmax {agree}/{}",
            n - cut
        ),
        rel < 1e-4 && agree == n - cut,
    );
    Ok(())
}
