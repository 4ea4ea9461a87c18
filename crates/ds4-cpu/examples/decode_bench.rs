//! Decode speed of the CPU backend on a model file:
//! `cargo run --release -p ds4-cpu --example decode_bench -- MODEL.gguf [TOKENS]`
//!
//! Prefills a short prompt, then times single-token decode steps with 1 and
//! 2 threads (or `--threads N,M,...`), printing tokens/s and the weight bytes
//! each step reads.

use std::time::Instant;

use ds4_cpu::{CpuBackend, CpuOptions};
use ds4_model::backend::Backend;
use ds4_model::forward::{forward, Logits};
use ds4_model::numerics::Numerics;
use ds4_model::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: decode_bench MODEL.gguf [STEPS] [--threads 1,2]")?;
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let threads: Vec<usize> = match args.iter().position(|a| a == "--threads") {
        Some(i) => args
            .get(i + 1)
            .ok_or("--threads needs a list")?
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()?,
        None => vec![1, 2],
    };
    let model = Model::open(path)?;
    let bytes = model.weights.decode_bytes_per_token(&model.config);
    println!(
        "model {path}: {} layers, weight bytes read per decode token: {:.3} GB",
        model.config.n_layer,
        bytes as f64 / 1e9
    );
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..16).map(|i| (1000 + i * 7) % vocab).collect();
    for &t in &threads {
        let b = CpuBackend::new(
            &model,
            CpuOptions {
                numerics: Numerics::Official,
                threads: t,
            },
        );
        let mut kv = b.new_kv(4096, prompt.len())?;
        let logits = forward(&b, &model.weights, &mut kv, &prompt, Logits::Last)?;
        let mut next = argmax(&logits);
        // One untimed step to fault the weights in.
        next = argmax(&forward(
            &b,
            &model.weights,
            &mut kv,
            &[next],
            Logits::Last,
        )?);
        let start = Instant::now();
        for _ in 0..steps {
            next = argmax(&forward(
                &b,
                &model.weights,
                &mut kv,
                &[next],
                Logits::Last,
            )?);
        }
        let secs = start.elapsed().as_secs_f64();
        let tps = steps as f64 / secs;
        println!(
            "threads {t}: decode {tps:.2} tokens/s ({:.1} ms/token, {:.2} GB/s of weights)",
            1e3 / tps,
            bytes as f64 * tps / 1e9
        );
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0 as u32
}
