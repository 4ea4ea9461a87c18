//! Q4_K: super-blocks of 256 = 8 sub-blocks of 32 weights.
//!
//! Layout (144 bytes): `d: f16`, `dmin: f16`, `scales: u8[12]` (eight 6-bit
//! scales and eight 6-bit mins, packed), `qs: u8[128]`. Sub-block `sb` uses
//! bytes `qs[32·(sb/2)..][..32]`, low nibbles for even `sb`, high for odd;
//! `x = d·sc·q − dmin·m`.

use crate::qkx2::{make_qkx2_quants, Search};
use crate::{check_lengths, f16_to_f32, f32_to_f16, nearest_int, read_f16, Acc8};
use crate::{BlockFormat, QuantError, QK_K};

/// Bytes per block.
pub const BLOCK_BYTES: usize = 144;
/// Offset of the packed scales.
pub const SCALES: usize = 4;
/// Offset of `qs`.
pub const QS: usize = 16;

/// The 6-bit scale and min of sub-block `j` (ggml's `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Dequantises whole blocks (`dst.len()` elements).
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::Q4_K, src.len(), dst.len())?;
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        dequantize_block(b, y);
    }
    Ok(())
}

/// Same operations as gguf-py: `dl = d·sc`, `ml = dmin·m`, `x = dl·q − ml`.
#[inline]
fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let dmin = read_f16(b, 2);
    let scales = &b[SCALES..SCALES + 12];
    for p in 0..4 {
        let qs = &b[QS + 32 * p..QS + 32 * p + 32];
        for half in 0..2 {
            let (sc, m) = scale_min(2 * p + half, scales);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            let out = &mut y[64 * p + 32 * half..][..32];
            for (o, &q) in out.iter_mut().zip(qs) {
                let q = (q >> (4 * half)) & 0xf;
                *o = dl * q as f32 - ml;
            }
        }
    }
}

/// ggml's `quantize_row_q4_K_ref` (no importance weights): per sub-block
/// weights `sqrt(mean(x²)) + |x|`, `make_qkx2_quants(nmax 15, rmin −1,
/// rdelta 0.1, 20 steps, squared error)`, scales and mins quantised to 6 bits
/// against their maxima, then levels recomputed from the stored scales.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::Q4_K, dst.len(), src.len())?;
    for (x, b) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block(x, b);
    }
    Ok(())
}

fn quantize_block(x: &[f32], b: &mut [u8]) {
    let search = Search {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(xs, &weights, &mut l[32 * j..32 * j + 32], &search);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    b.fill(0);
    {
        let sc = &mut b[SCALES..SCALES + 12];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
    }
    b[0..2].copy_from_slice(&f32_to_f16(max_scale / 63.0).to_le_bytes());
    b[2..4].copy_from_slice(&f32_to_f16(max_min / 63.0).to_le_bytes());
    let d_all = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    let dmin_all = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
    for j in 0..8 {
        let (sc, m) = scale_min(j, &b[SCALES..SCALES + 12]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15) as u8;
        }
    }
    for p in 0..4 {
        for i in 0..32 {
            b[QS + 32 * p + i] = l[64 * p + i] | (l[64 * p + 32 + i] << 4);
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
