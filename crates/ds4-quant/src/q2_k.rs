//! Q2_K: super-blocks of 256 = 16 sub-blocks of 16 weights.
//!
//! Layout (84 bytes): `scales: u8[16]` (low nibble scale, high nibble min),
//! `qs: u8[64]` (2-bit levels), `d: f16`, `dmin: f16` (at the end).
//! Element `e`: `h = e/128`, `j = (e%128)/32`, `i = e%32`,
//! `q = (qs[32h+i] >> 2j) & 3`, `sc = scales[8h + 2j + i/16]`,
//! `x = d·(sc&15)·q − dmin·(sc>>4)`.

use crate::qkx2::{make_qkx2_quants, Search};
use crate::{check_lengths, f16_to_f32, f32_to_f16, nearest_int, read_f16, Acc8};
use crate::{BlockFormat, QuantError, QK_K};

/// Bytes per block.
pub const BLOCK_BYTES: usize = 84;
/// Offset of `qs`.
pub const QS: usize = 16;
/// Offset of `d` (then `dmin` at `D + 2`).
pub const D: usize = 80;

/// Dequantises whole blocks (`dst.len()` elements).
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::Q2_K, src.len(), dst.len())?;
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        dequantize_block(b, y);
    }
    Ok(())
}

/// Same operations as gguf-py: `dl = d·(sc&15)`, `ml = dmin·(sc>>4)`,
/// `x = dl·q − ml`, each rounded to f32.
#[inline]
fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, D);
    let dmin = read_f16(b, D + 2);
    for h in 0..2 {
        let qs = &b[QS + 32 * h..QS + 32 * h + 32];
        for j in 0..4 {
            for half in 0..2 {
                let sc = b[8 * h + 2 * j + half];
                let dl = d * (sc & 15) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let out = &mut y[128 * h + 32 * j + 16 * half..][..16];
                for (i, o) in out.iter_mut().enumerate() {
                    let q = (qs[16 * half + i] >> (2 * j)) & 3;
                    *o = dl * q as f32 - ml;
                }
            }
        }
    }
}

/// ggml's `quantize_row_q2_K_ref` (no importance weights): per sub-block
/// `make_qkx2_quants(nmax 3, weights |x|, rmin −0.5, rdelta 0.1, 15 steps,
/// absolute error)`, scales and mins quantised to 4 bits against their
/// maxima, then levels recomputed from the stored (f16-rounded) scales.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::Q2_K, dst.len(), src.len())?;
    for (x, b) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block(x, b);
    }
    Ok(())
}

fn quantize_block(x: &[f32], b: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    let search = Search {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let mut weights = [0f32; 16];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        let (s, m) = make_qkx2_quants(xs, &weights, &mut l[16 * j..16 * j + 16], &search);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    b.fill(0);
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            b[j] = nearest_int(iscale * scales[j]) as u8;
        }
        b[D..D + 2].copy_from_slice(&f32_to_f16(max_scale / Q4SCALE).to_le_bytes());
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            b[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        b[D + 2..D + 4].copy_from_slice(&f32_to_f16(max_min / Q4SCALE).to_le_bytes());
    }
    let d_all = f16_to_f32(u16::from_le_bytes([b[D], b[D + 1]]));
    let dmin_all = f16_to_f32(u16::from_le_bytes([b[D + 2], b[D + 3]]));
    for j in 0..16 {
        let d = d_all * (b[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * (b[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    for h in 0..2 {
        for i in 0..32 {
            let base = 128 * h + i;
            b[QS + 32 * h + i] =
                l[base] | (l[base + 32] << 2) | (l[base + 64] << 4) | (l[base + 96] << 6);
        }
    }
}

/// Scalar reference dot: each block is dequantised exactly as
/// [`dequantize_row`] does, then multiplied into eight lanes.
pub(crate) fn dot_scalar(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = Acc8::default();
    let mut w = [0f32; QK_K];
    for (b, xb) in row.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(QK_K)) {
        dequantize_block(b, &mut w);
        acc.add_products(&w, xb);
    }
    acc.sum()
}
