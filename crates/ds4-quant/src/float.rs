//! Unquantised formats: F32, F16 and BF16 (one element per "block").

use crate::{check_lengths, f16_to_f32, f32_to_f16, Acc8, BlockFormat, QuantError};

/// Decodes little-endian f32 values.
pub fn dequantize_row_f32(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::F32, src.len(), dst.len())?;
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
    Ok(())
}

/// Decodes binary16 values (exact).
pub fn dequantize_row_f16(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::F16, src.len(), dst.len())?;
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
    Ok(())
}

/// Decodes bfloat16 values (exact: a 16-bit shift).
pub fn dequantize_row_bf16(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::BF16, src.len(), dst.len())?;
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
    Ok(())
}

/// Encodes little-endian f32 values.
pub fn quantize_row_f32(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::F32, dst.len(), src.len())?;
    for (d, s) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&s.to_le_bytes());
    }
    Ok(())
}

/// Encodes binary16, rounding to nearest even.
pub fn quantize_row_f16(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::F16, dst.len(), src.len())?;
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_f16(*s).to_le_bytes());
    }
    Ok(())
}

/// Encodes bfloat16 like ggml's `ggml_compute_fp32_to_bf16`: NaNs become
/// quiet NaNs, everything else rounds to nearest even.
pub fn quantize_row_bf16(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(BlockFormat::BF16, dst.len(), src.len())?;
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_bf16(*s).to_le_bytes());
    }
    Ok(())
}

/// bfloat16 → f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 → bfloat16 with ggml's rounding (see [`quantize_row_bf16`]).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}

/// Scalar reference dot of `x.len()` f32 weights with `x`.
pub(crate) fn dot_f32_scalar(row: &[u8], x: &[f32]) -> f32 {
    dot_converted(row, 4, x, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Scalar reference dot of f16 weights with `x`.
pub(crate) fn dot_f16_scalar(row: &[u8], x: &[f32]) -> f32 {
    dot_converted(row, 2, x, |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
}

/// Scalar reference dot of bf16 weights with `x`.
pub(crate) fn dot_bf16_scalar(row: &[u8], x: &[f32]) -> f32 {
    dot_converted(row, 2, x, |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
}

/// Converts 256 weights at a time into a stack buffer and accumulates in eight
/// lanes; the tail (fewer than 8) is added last, in order.
#[inline(always)]
fn dot_converted(row: &[u8], size: usize, x: &[f32], conv: impl Fn(&[u8]) -> f32) -> f32 {
    const CHUNK: usize = 256;
    let mut acc = Acc8::default();
    let mut buf = [0f32; CHUNK];
    let n = x.len().min(row.len() / size);
    let n8 = n - n % 8;
    let mut i = 0;
    while i < n8 {
        let m = CHUNK.min(n8 - i);
        for (k, w) in buf[..m].iter_mut().enumerate() {
            *w = conv(&row[(i + k) * size..(i + k + 1) * size]);
        }
        acc.add_products(&buf[..m], &x[i..i + m]);
        i += m;
    }
    let mut s = acc.sum();
    for j in n8..n {
        s += conv(&row[j * size..(j + 1) * size]) * x[j];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is a tie between 0x3f80 and 0x3f81: even wins.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
    }
}
