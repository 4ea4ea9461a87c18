//! Random weight rows and activations shared by the integration tests.

#![allow(dead_code)]

use ds4_quant::{f32_to_f16, float::f32_to_bf16, BlockFormat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A finite f16 scale: log-uniform magnitude 1e-4..1, random sign.
fn scale(rng: &mut ChaCha8Rng) -> [u8; 2] {
    let mag = 10f32.powf(rng.random_range(-4.0..0.0));
    let v = if rng.random_bool(0.2) { -mag } else { mag };
    f32_to_f16(v).to_le_bytes()
}

/// Offsets of the f16 scale fields inside one block.
fn scale_offsets(format: BlockFormat) -> &'static [usize] {
    match format {
        BlockFormat::Q8_0 | BlockFormat::IQ2_XXS => &[0],
        BlockFormat::Q4_K => &[0, 2],
        BlockFormat::Q2_K => &[80, 82],
        _ => &[],
    }
}

/// `n` elements of `format` as bytes: random bytes with sane scales for
/// block formats, random finite normal-ish values for float formats.
pub fn random_row(rng: &mut ChaCha8Rng, format: BlockFormat, n: usize) -> Vec<u8> {
    let bytes = format.row_bytes(n).expect("whole blocks");
    match format {
        BlockFormat::F32 => random_x(rng, n)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        BlockFormat::F16 => random_x(rng, n)
            .iter()
            .flat_map(|v| f32_to_f16(*v).to_le_bytes())
            .collect(),
        BlockFormat::BF16 => random_x(rng, n)
            .iter()
            .flat_map(|v| f32_to_bf16(*v).to_le_bytes())
            .collect(),
        _ => {
            let mut row: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
            for b in row.chunks_exact_mut(format.block_bytes()) {
                for &o in scale_offsets(format) {
                    b[o..o + 2].copy_from_slice(&scale(rng));
                }
            }
            row
        }
    }
}

/// Activations: uniform in ±1 times a per-row magnitude, with a few outliers.
pub fn random_x(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mag = 10f32.powf(rng.random_range(-2.0..2.0));
    (0..n)
        .map(|_| {
            let v = rng.random_range(-1.0f32..1.0) * mag;
            if rng.random_bool(0.01) {
                v * 30.0
            } else {
                v
            }
        })
        .collect()
}

/// Zeroes the bytes `[at, at+2)` of every block (used to split K-quant
/// weights into their scale and min parts).
pub fn zero_field(row: &[u8], format: BlockFormat, at: usize) -> Vec<u8> {
    let mut r = row.to_vec();
    for b in r.chunks_exact_mut(format.block_bytes()) {
        b[at..at + 2].fill(0);
    }
    r
}
