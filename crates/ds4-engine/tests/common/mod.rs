//! Shared helpers: an engine on tiny_a, token sequences, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

use ds4_cpu::{CpuBackend, CpuOptions};
use ds4_engine::{Engine, EngineOptions};
use ds4_model::numerics::Numerics;
use ds4_model::Model;

pub type CpuEngine = Engine<CpuBackend>;

pub fn tiny_a_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny_a/tiny_ds4.gguf")
}

/// Small options: chunks of 8, a rewind point every 16 tokens.
pub fn small_opts() -> EngineOptions {
    EngineOptions {
        ctx: 96,
        prefill_chunk: 8,
        checkpoint_interval: 16,
        max_rewind_points: 8,
    }
}

pub fn engine_with(numerics: Numerics, opts: EngineOptions) -> CpuEngine {
    let model = Model::open(tiny_a_path()).expect("tiny_a binds");
    let backend = CpuBackend::new(
        &model,
        CpuOptions {
            numerics,
            threads: 1,
        },
    );
    Engine::new(model, backend, opts).expect("engine")
}

pub fn engine(numerics: Numerics) -> CpuEngine {
    engine_with(numerics, small_opts())
}

pub const BOTH: [Numerics; 2] = [Numerics::Exact, Numerics::Official];

/// A deterministic token sequence (tiny_a has 1024 tokens).
pub fn tokens(seed: u32, n: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % 1024
        })
        .collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn assert_bit_identical(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    assert!(
        bits(a) == bits(b),
        "{what}: not bit-identical (rel {:.3e})",
        rel_l2(a, b)
    );
}

pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Text of tokens for the disk cache (the engine has no tokenizer here).
pub fn text_of(tokens: &[u32]) -> String {
    tokens.iter().map(|t| format!("<{t}>")).collect()
}
