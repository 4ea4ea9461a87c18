//! Q8_0: blocks of 32 weights, `d: f16` then `q: i8[32]`; `x = d·q`.

use crate::{check_lengths, f32_to_f16, read_f16, Acc8, BlockFormat, QuantError};

/// Elements per block.
pub const BLOCK_ELEMS: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 34;

/// Dequantises whole blocks (`dst.len()` elements).
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::Q8_0, src.len(), dst.len())?;
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(BLOCK_ELEMS))
    {
        dequantize_block(b, y);
    }
    Ok(())
}

#[inline]
fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..BLOCK_BYTES]) {
        *y = q as i8 as f32 * d;
    }
}

/// ggml's `quantize_row_q8_0_ref`: `d = amax/127`, `q = roundf(x/d)` (ties
/// away from zero), d stored as f16. Identical to gguf-py's Q8_0 quantiser.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::Q8_0, dst.len(), src.len())?;
    for (x, b) in src
        .chunks_exact(BLOCK_ELEMS)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for (q, &v) in b[2..].iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
    Ok(())
}

/// Scalar reference dot: the block is dequantised exactly as
/// [`dequantize_row`] does, then multiplied into eight lanes.
pub(crate) fn dot_scalar(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = Acc8::default();
    let mut w = [0f32; BLOCK_ELEMS];
    for (b, xb) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(x.chunks_exact(BLOCK_ELEMS))
    {
        dequantize_block(b, &mut w);
        acc.add_products(&w, xb);
    }
    acc.sum()
}
