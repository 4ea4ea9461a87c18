//! Q8_K: blocks of 256, `d: f32`, `q: i8[256]`, `bsums: i16[16]`. Used only
//! for activations (ggml's partner format of the K-quant dot products).

use crate::{check_lengths, nearest_int, BlockFormat, QuantError, QK_K};

/// Bytes per block.
pub const BLOCK_BYTES: usize = 4 + QK_K + 2 * (QK_K / 16);

/// Dequantises whole blocks: `x = d·q` (ggml's `dequantize_row_q8_K`).
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::Q8_K, src.len(), dst.len())?;
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (y, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
            *y = d * q as i8 as f32;
        }
    }
    Ok(())
}

/// ggml's `quantize_row_q8_K_ref`: `mx` = the element of largest |x| (first
/// one on ties, sign kept), `iscale = −127/mx`, `q = min(127,
/// round_half_even(iscale·x))`, `d = 1/iscale`, `bsums` = sums of 16 q.
/// An all-zero block gets `d = 0` and zero q and sums.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::Q8_K, dst.len(), src.len())?;
    for (x, b) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        b.fill(0);
        if amax == 0.0 {
            continue;
        }
        let iscale = -127.0 / max;
        let mut sums = [0i32; QK_K / 16];
        for (j, &v) in x.iter().enumerate() {
            let q = nearest_int(iscale * v).min(127);
            b[4 + j] = q as i8 as u8;
            sums[j / 16] += q as i8 as i32;
        }
        b[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for (j, s) in sums.iter().enumerate() {
            let at = 4 + QK_K + 2 * j;
            b[at..at + 2].copy_from_slice(&(*s as i16).to_le_bytes());
        }
    }
    Ok(())
}
