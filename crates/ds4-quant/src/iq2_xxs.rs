//! IQ2_XXS: super-blocks of 256 = 8 groups of 32 = 32 lanes-of-8.
//!
//! Layout (66 bytes): `d: f16`, `qs: u16[32]`. Group `g` reads bytes
//! `2 + 8g..` as two u32: `a0` holds four grid indices (one byte per 8
//! weights), `a1` holds four 7-bit sign indices (bits `7l..7l+7`) and a 4-bit
//! scale `s = a1 >> 28`; `x = d·(0.5 + s)·0.25 · grid[idx][k] · ±1`.

use crate::tables::{IQ2XXS_GRID, KSIGNS_IQ2XS};
use crate::{check_lengths, read_f16, Acc8, BlockFormat, QuantError, QK_K};

/// Bytes per block.
pub const BLOCK_BYTES: usize = 66;

/// Dequantises whole blocks (`dst.len()` elements).
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::IQ2_XXS, src.len(), dst.len())?;
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        dequantize_block(b, y);
    }
    Ok(())
}

/// The two u32 words of group `g`.
#[inline(always)]
pub(crate) fn group_words(b: &[u8], g: usize) -> (u32, u32) {
    let q = &b[2 + 8 * g..2 + 8 * g + 8];
    (
        u32::from_le_bytes([q[0], q[1], q[2], q[3]]),
        u32::from_le_bytes([q[4], q[5], q[6], q[7]]),
    )
}

/// Group scale `d·(0.5 + s)·0.25`, in gguf-py's operation order.
#[inline(always)]
pub(crate) fn group_scale(d: f32, a1: u32) -> f32 {
    d * (0.5 + (a1 >> 28) as f32) * 0.25
}

/// Same operations as gguf-py: `db·grid`, then the sign (exact).
#[inline]
fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    for g in 0..8 {
        let (a0, a1) = group_words(b, g);
        let db = group_scale(d, a1);
        for l in 0..4 {
            let grid = IQ2XXS_GRID[((a0 >> (8 * l)) & 0xff) as usize];
            let signs = KSIGNS_IQ2XS[((a1 >> (7 * l)) & 127) as usize];
            let out = &mut y[32 * g + 8 * l..][..8];
            for (k, o) in out.iter_mut().enumerate() {
                let w = db * ((grid >> (8 * k)) & 0xff) as f32;
                *o = if (signs >> k) & 1 == 1 { -w } else { w };
            }
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
