//! The self-test's production-width model: generated, bound, and run on the
//! CPU reference (ignored by default: it writes ~0.9 GB; run with
//! `cargo test --release -p ds4-cuda --test wide_model -- --ignored`).

use ds4_model::backend::Backend;
use ds4_model::forward::{forward, Logits};
use ds4_model::numerics::Numerics;

#[test]
#[ignore]
fn wide_model_binds_and_stays_finite_on_the_cpu() {
    let t0 = std::time::Instant::now();
    let model = ds4_cuda::selftest::wide::model().unwrap();
    eprintln!("generated in {:.1} s", t0.elapsed().as_secs_f64());
    let flash = ds4_model::Config::flash();
    let cfg = &model.config;
    assert_eq!(
        (cfg.d_model, cfg.n_head, cfg.head_dim, cfg.indexer_top_k),
        (
            flash.d_model,
            flash.n_head,
            flash.head_dim,
            flash.indexer_top_k
        )
    );
    let cpu = ds4_cpu::CpuBackend::new(
        &model,
        ds4_cpu::CpuOptions {
            numerics: Numerics::Official,
            threads: 2,
        },
    );
    let tokens: Vec<u32> = (0..16).map(|i| i * 97 % 4096).collect();
    let mut kv = cpu.new_kv(64, 16).unwrap();
    let t0 = std::time::Instant::now();
    let logits = forward(&cpu, &model.weights, &mut kv, &tokens, Logits::All).unwrap();
    eprintln!("CPU prompt of 16 in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(logits.iter().all(|v| v.is_finite()));
    let rms = (logits.iter().map(|v| v * v).sum::<f32>() / logits.len() as f32).sqrt();
    eprintln!("logit rms {rms}");
    assert!(rms > 1e-3 && rms < 1e3, "logit rms {rms}");
}
