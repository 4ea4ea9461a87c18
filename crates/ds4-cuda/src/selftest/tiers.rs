//! The tiny_a oracle tiers (as ds4-cpu's oracle_tiny_a tests) on the GPU,
//! and run-to-run determinism.

use std::path::Path;

use ds4_model::backend::Backend;
use ds4_model::forward::{forward, forward_chunked, Logits};
use ds4_model::numerics::Numerics;
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
        format!("rel L2 {rel:.2e} (limit 1e-4), argmax {agree}/{n} (need {n}), {secs:.2} s"),
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
