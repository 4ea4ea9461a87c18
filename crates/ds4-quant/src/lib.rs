//! GGUF/ggml block quantisation formats used by ds4: dequantisation,
//! reference quantisers and dot kernels of one quantised weight row with f32
//! activations (scalar, AVX2+FMA, AVX-512F and NEON, chosen at run time).
//!
//! Layouts follow `MODEL.md` §6 (identical to ggml). Dequantisation performs
//! the same f32 operations in the same order as the `gguf` Python package, so
//! results are bit-identical to it (checked by the fixture tests).
//!
//! The crate knows nothing about GGUF files or the model: it works on byte
//! slices holding whole blocks.

#![warn(missing_docs)]

use std::fmt;

mod dispatch;
pub mod float;
pub mod iq2_xxs;
pub mod q2_k;
pub mod q4_k;
pub mod q8_0;
pub mod q8_k;
mod qkx2;
pub mod tables;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

pub use dispatch::{available_isas, dot, matvec, DotKernels, Isa};

/// Elements per super-block of the K-quant and IQ formats.
pub const QK_K: usize = 256;

/// A tensor element encoding: plain floats or a block quantisation format.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (upper half of a binary32).
    BF16,
    /// 32 × i8 with one f16 scale.
    Q8_0,
    /// 256 × i8 with an f32 scale and 16 partial sums (activations only).
    Q8_K,
    /// 256 × 2-bit with 4-bit sub-block scales/mins.
    Q2_K,
    /// 256 × 4-bit with 6-bit sub-block scales/mins.
    Q4_K,
    /// 256 weights on an 8-lane E8 lattice grid, ≈2.06 bits per weight.
    IQ2_XXS,
}

impl BlockFormat {
    /// Every format, in declaration order.
    pub const ALL: [BlockFormat; 8] = [
        BlockFormat::F32,
        BlockFormat::F16,
        BlockFormat::BF16,
        BlockFormat::Q8_0,
        BlockFormat::Q8_K,
        BlockFormat::Q2_K,
        BlockFormat::Q4_K,
        BlockFormat::IQ2_XXS,
    ];

    /// Formats that can be weights of a dot product (all but Q8_K).
    pub const WEIGHTS: [BlockFormat; 7] = [
        BlockFormat::F32,
        BlockFormat::F16,
        BlockFormat::BF16,
        BlockFormat::Q8_0,
        BlockFormat::Q2_K,
        BlockFormat::Q4_K,
        BlockFormat::IQ2_XXS,
    ];

    /// Elements per block.
    pub const fn block_elems(self) -> usize {
        match self {
            BlockFormat::F32 | BlockFormat::F16 | BlockFormat::BF16 => 1,
            BlockFormat::Q8_0 => q8_0::BLOCK_ELEMS,
            BlockFormat::Q8_K | BlockFormat::Q2_K | BlockFormat::Q4_K | BlockFormat::IQ2_XXS => {
                QK_K
            }
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            BlockFormat::F32 => 4,
            BlockFormat::F16 | BlockFormat::BF16 => 2,
            BlockFormat::Q8_0 => q8_0::BLOCK_BYTES,
            BlockFormat::Q8_K => q8_k::BLOCK_BYTES,
            BlockFormat::Q2_K => q2_k::BLOCK_BYTES,
            BlockFormat::Q4_K => q4_k::BLOCK_BYTES,
            BlockFormat::IQ2_XXS => iq2_xxs::BLOCK_BYTES,
        }
    }

    /// Bytes of `n_elems` elements, or `None` if `n_elems` is not a whole
    /// number of blocks (or the size overflows).
    pub const fn row_bytes(self, n_elems: usize) -> Option<usize> {
        if !n_elems.is_multiple_of(self.block_elems()) {
            return None;
        }
        (n_elems / self.block_elems()).checked_mul(self.block_bytes())
    }

    /// The ggml/GGUF type id (`MODEL.md` §6).
    pub const fn ggml_type_id(self) -> u32 {
        match self {
            BlockFormat::F32 => 0,
            BlockFormat::F16 => 1,
            BlockFormat::Q8_0 => 8,
            BlockFormat::Q2_K => 10,
            BlockFormat::Q4_K => 12,
            BlockFormat::Q8_K => 15,
            BlockFormat::IQ2_XXS => 16,
            BlockFormat::BF16 => 30,
        }
    }

    /// The format with ggml/GGUF type id `id`, if this crate supports it.
    pub const fn from_ggml_type_id(id: u32) -> Option<BlockFormat> {
        Some(match id {
            0 => BlockFormat::F32,
            1 => BlockFormat::F16,
            8 => BlockFormat::Q8_0,
            10 => BlockFormat::Q2_K,
            12 => BlockFormat::Q4_K,
            15 => BlockFormat::Q8_K,
            16 => BlockFormat::IQ2_XXS,
            30 => BlockFormat::BF16,
            _ => return None,
        })
    }
}

impl fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Errors of this crate: all are caller mistakes about sizes or requests for
/// something not implemented; none depends on the data values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// An element count that is not a whole number of blocks.
    #[error("{format}: {n_elems} elements is not a multiple of the block size {block_elems}")]
    NotBlockMultiple {
        /// The format.
        format: BlockFormat,
        /// The element count given.
        n_elems: usize,
        /// The format's block size.
        block_elems: usize,
    },
    /// A byte buffer whose length does not match the element count.
    #[error("{format}: {n_elems} elements need {expected} bytes, but the buffer has {got}")]
    ByteLength {
        /// The format.
        format: BlockFormat,
        /// The element count.
        n_elems: usize,
        /// Bytes needed for `n_elems`.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// Two buffers that must have related lengths do not.
    #[error("{what}: expected length {expected}, got {got}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// An operation this crate does not implement for a format.
    #[error("{op} is not supported for {format}")]
    Unsupported {
        /// The format.
        format: BlockFormat,
        /// The operation ("quantize", "dot").
        op: &'static str,
    },
    /// A requested instruction set the CPU (or this build) lacks.
    #[error("instruction set {0:?} is not available on this CPU")]
    IsaUnavailable(Isa),
}

/// Checks that `n_bytes` holds exactly `n_elems` elements of `format`.
pub(crate) fn check_lengths(
    format: BlockFormat,
    n_bytes: usize,
    n_elems: usize,
) -> Result<(), QuantError> {
    let expected = format
        .row_bytes(n_elems)
        .ok_or(QuantError::NotBlockMultiple {
            format,
            n_elems,
            block_elems: format.block_elems(),
        })?;
    if expected != n_bytes {
        return Err(QuantError::ByteLength {
            format,
            n_elems,
            expected,
            got: n_bytes,
        });
    }
    Ok(())
}

/// Dequantises whole blocks of `format` in `src` into `dst`
/// (`dst.len()` elements; `src` must hold exactly their bytes).
pub fn dequantize(format: BlockFormat, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    match format {
        BlockFormat::F32 => float::dequantize_row_f32(src, dst),
        BlockFormat::F16 => float::dequantize_row_f16(src, dst),
        BlockFormat::BF16 => float::dequantize_row_bf16(src, dst),
        BlockFormat::Q8_0 => q8_0::dequantize_row(src, dst),
        BlockFormat::Q8_K => q8_k::dequantize_row(src, dst),
        BlockFormat::Q2_K => q2_k::dequantize_row(src, dst),
        BlockFormat::Q4_K => q4_k::dequantize_row(src, dst),
        BlockFormat::IQ2_XXS => iq2_xxs::dequantize_row(src, dst),
    }
}

/// Quantises `src` into whole blocks of `format` in `dst` with ggml's
/// reference quantisers (`quantize_row_*_ref`). IQ2_XXS is unsupported.
pub fn quantize(format: BlockFormat, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    match format {
        BlockFormat::F32 => float::quantize_row_f32(src, dst),
        BlockFormat::F16 => float::quantize_row_f16(src, dst),
        BlockFormat::BF16 => float::quantize_row_bf16(src, dst),
        BlockFormat::Q8_0 => q8_0::quantize_row(src, dst),
        BlockFormat::Q8_K => q8_k::quantize_row(src, dst),
        BlockFormat::Q2_K => q2_k::quantize_row(src, dst),
        BlockFormat::Q4_K => q4_k::quantize_row(src, dst),
        BlockFormat::IQ2_XXS => Err(QuantError::Unsupported {
            format,
            op: "quantize",
        }),
    }
}

/// Exact binary16 → binary32 conversion (all finite values, ±inf, NaN with
/// payload), written out so scalar loops do not pay for runtime detection.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        // Subnormal or zero: man · 2^-24 is exact in f32.
        (man as f32 * (1.0 / 16_777_216.0)).to_bits() | sign
    } else if exp == 31 {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

/// binary32 → binary16, round to nearest even (what ggml's
/// `GGML_FP32_TO_FP16` and numpy's `astype(float16)` do).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// ggml's `nearest_int`: round half to even via the 1.5·2^23 trick; valid for
/// |x| ≤ 2^22, which every caller guarantees by construction.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

#[inline]
pub(crate) fn read_f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_half_for_all_values() {
        for h in 0..=u16::MAX {
            let a = f16_to_f32(h);
            let b = half::f16::from_bits(h).to_f32();
            if b.is_nan() {
                assert!(a.is_nan());
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{h:#x}");
            }
        }
    }

    #[test]
    fn nearest_int_rounds_half_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-127.4), -127);
        assert_eq!(nearest_int(3.7), 4);
    }

    #[test]
    fn sizes() {
        assert_eq!(BlockFormat::Q2_K.row_bytes(4096), Some(16 * 84));
        assert_eq!(BlockFormat::Q4_K.row_bytes(4096), Some(16 * 144));
        assert_eq!(BlockFormat::IQ2_XXS.row_bytes(4096), Some(16 * 66));
        assert_eq!(BlockFormat::Q8_K.row_bytes(256), Some(292));
        assert_eq!(BlockFormat::Q8_0.row_bytes(64), Some(68));
        assert_eq!(BlockFormat::Q8_0.row_bytes(48), None);
        assert_eq!(BlockFormat::F16.row_bytes(3), Some(6));
        for f in BlockFormat::ALL {
            assert_eq!(BlockFormat::from_ggml_type_id(f.ggml_type_id()), Some(f));
        }
    }
}

/// Eight independent f32 partial sums with a fixed association, so the scalar
/// reference is deterministic and LLVM can keep the lanes in one register.
#[derive(Default)]
pub(crate) struct Acc8([f32; 8]);

impl Acc8 {
    /// Adds `w[i]·x[i]` for the first `8·⌊min(len)/8⌋` elements.
    #[inline]
    pub(crate) fn add_products(&mut self, w: &[f32], x: &[f32]) {
        for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
            for k in 0..8 {
                self.0[k] += wc[k] * xc[k];
            }
        }
    }

    #[inline]
    pub(crate) fn sum(&self) -> f32 {
        let a = &self.0;
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }
}
