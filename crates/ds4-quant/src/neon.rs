//! AArch64 NEON dot kernels (4 f32 lanes).
//!
//! NOTE: written for aarch64 but never compiled or run on the development
//! machine (x86-64, no aarch64 standard library installed). It uses only
//! stable `core::arch::aarch64` intrinsics and mirrors the AVX2 kernels; the
//! SIMD-vs-scalar tests in `tests/dot.rs` check it on any aarch64 machine.
//!
//! # Safety (all kernels)
//! Callers (only [`DotKernels`] after its checks) guarantee that the CPU has
//! NEON and that `row.len() == format.row_bytes(x.len())`. Every raw-pointer
//! read below stays inside `row`/`x` on that basis: block kernels read block
//! `i < x.len()/block_elems` at byte `i·block_bytes` and activations at
//! `i·block_elems + k` with `k < block_elems`; the float kernels read only
//! while `i + 16 ≤ x.len()` and finish with a scalar tail. Byte loads
//! (`vld1q_u8`) are used for weights so that no load assumes alignment.

use std::arch::aarch64::*;

use crate::dispatch::{DotKernels, Isa};
use crate::tables::{IQ2XXS_GRID_F32, IQ2XXS_SIGN_MASKS};
use crate::{f16_to_f32, float::bf16_to_f32, iq2_xxs, q2_k, q4_k, q8_0, read_f16, QK_K};

pub(crate) fn kernels() -> DotKernels {
    DotKernels::from_parts(
        Isa::Neon,
        dot_f32,
        dot_f16,
        dot_bf16,
        dot_q8_0,
        dot_q2_k,
        dot_q4_k,
        dot_iq2_xxs,
    )
}

/// Four f16 (as u32 lanes) → f32, exactly: shifting the exponent and
/// mantissa into f32 position and multiplying by 2^112 rebias normals and
/// subnormals alike (denormals are not flushed on Linux); exponent 31 is
/// patched to inf/NaN.
#[inline(always)]
unsafe fn f16x4_to_f32(h: uint32x4_t) -> float32x4_t {
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let em = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7fff)));
    let scaled = vmulq_f32(
        vreinterpretq_f32_u32(em),
        vdupq_n_f32(f32::from_bits(0x7780_0000)),
    );
    let is_special = vceqq_u32(vandq_u32(h, vdupq_n_u32(0x7c00)), vdupq_n_u32(0x7c00));
    let special = vorrq_u32(em, vdupq_n_u32(0x7f80_0000));
    let bits = vbslq_u32(is_special, special, vreinterpretq_u32_f32(scaled));
    vreinterpretq_f32_u32(vorrq_u32(bits, sign))
}

/// Eight little-endian u16 at `p` as two u32x4.
#[inline(always)]
unsafe fn u16x8(p: *const u8) -> (uint32x4_t, uint32x4_t) {
    let v = vreinterpretq_u16_u8(vld1q_u8(p));
    (vmovl_u16(vget_low_u16(v)), vmovl_high_u16(v))
}

/// Shared driver of the float formats: `load(i)` yields 8 weights at
/// element `i` as two vectors; four accumulators hide the FMA latency.
#[inline(always)]
unsafe fn dot_float(
    x: &[f32],
    load: impl Fn(usize) -> (float32x4_t, float32x4_t),
    tail: impl Fn(usize) -> f32,
) -> f32 {
    let n = x.len();
    let xp = x.as_ptr();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        let (a, b) = load(i);
        let (c, d) = load(i + 8);
        acc[0] = vfmaq_f32(acc[0], a, vld1q_f32(xp.add(i)));
        acc[1] = vfmaq_f32(acc[1], b, vld1q_f32(xp.add(i + 4)));
        acc[2] = vfmaq_f32(acc[2], c, vld1q_f32(xp.add(i + 8)));
        acc[3] = vfmaq_f32(acc[3], d, vld1q_f32(xp.add(i + 12)));
        i += 16;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    while i < n {
        s += tail(i) * x[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "neon")]
unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| {
            let a = vreinterpretq_f32_u8(vld1q_u8(w.add(4 * i)));
            let b = vreinterpretq_f32_u8(vld1q_u8(w.add(4 * i + 16)));
            (a, b)
        },
        |i| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]),
    )
}

#[target_feature(enable = "neon")]
unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| {
            let (lo, hi) = u16x8(w.add(2 * i));
            (f16x4_to_f32(lo), f16x4_to_f32(hi))
        },
        |i| f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
    )
}

#[target_feature(enable = "neon")]
unsafe fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| {
            let (lo, hi) = u16x8(w.add(2 * i));
            (
                vreinterpretq_f32_u32(vshlq_n_u32::<16>(lo)),
                vreinterpretq_f32_u32(vshlq_n_u32::<16>(hi)),
            )
        },
        |i| bf16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
    )
}

/// Sixteen u8 as four f32x4 (lanes 0-3, 4-7, 8-11, 12-15).
#[inline(always)]
unsafe fn u8x16_to_f32(v: uint8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_u8(vget_low_u8(v));
    let hi = vmovl_high_u8(v);
    [
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
        vcvtq_f32_u32(vmovl_high_u16(lo)),
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
        vcvtq_f32_u32(vmovl_high_u16(hi)),
    ]
}

/// Sixteen i8 as four f32x4.
#[inline(always)]
unsafe fn i8x16_to_f32(v: int8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_s8(vget_low_s8(v));
    let hi = vmovl_high_s8(v);
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
        vcvtq_f32_s32(vmovl_high_s16(lo)),
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
        vcvtq_f32_s32(vmovl_high_s16(hi)),
    ]
}

/// Per block `Σ q·x` in four chains, then one FMA with the scale.
#[target_feature(enable = "neon")]
unsafe fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / q8_0::BLOCK_ELEMS;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = vdupq_n_f32(0.0);
    for i in 0..nb {
        let b = w.add(i * q8_0::BLOCK_BYTES);
        let blk = std::slice::from_raw_parts(b, q8_0::BLOCK_BYTES);
        let xb = xp.add(i * q8_0::BLOCK_ELEMS);
        let mut part = [vdupq_n_f32(0.0); 4];
        for h in 0..2 {
            let q = i8x16_to_f32(vreinterpretq_s8_u8(vld1q_u8(b.add(2 + 16 * h))));
            for k in 0..4 {
                part[k] = vfmaq_f32(part[k], q[k], vld1q_f32(xb.add(16 * h + 4 * k)));
            }
        }
        let s = vaddq_f32(vaddq_f32(part[0], part[1]), vaddq_f32(part[2], part[3]));
        acc = vfmaq_f32(acc, s, vdupq_n_f32(read_f16(blk, 0)));
    }
    vaddvq_f32(acc)
}

/// Weights are rebuilt as `ml' + q·dl` (`ml' = −ml`) with one FMA.
#[target_feature(enable = "neon")]
unsafe fn dot_q2_k(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let three = vdupq_n_u8(3);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for i in 0..nb {
        let b = w.add(i * q2_k::BLOCK_BYTES);
        let blk = std::slice::from_raw_parts(b, q2_k::BLOCK_BYTES);
        let xb = xp.add(i * QK_K);
        let d = read_f16(blk, q2_k::D);
        let dmin = read_f16(blk, q2_k::D + 2);
        for h in 0..2 {
            let v = [
                vld1q_u8(b.add(q2_k::QS + 32 * h)),
                vld1q_u8(b.add(q2_k::QS + 32 * h + 16)),
            ];
            for j in 0..4 {
                let shift = vdupq_n_s8(-(2 * j as i8));
                for half in 0..2 {
                    let sc = blk[8 * h + 2 * j + half];
                    let dl = vdupq_n_f32(d * (sc & 15) as f32);
                    let nml = vdupq_n_f32(-(dmin * (sc >> 4) as f32));
                    let q = u8x16_to_f32(vandq_u8(vshlq_u8(v[half], shift), three));
                    let xs = xb.add(128 * h + 32 * j + 16 * half);
                    for k in 0..4 {
                        let wv = vfmaq_f32(nml, q[k], dl);
                        acc[k & 1] = vfmaq_f32(acc[k & 1], wv, vld1q_f32(xs.add(4 * k)));
                    }
                }
            }
        }
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

/// Weights are rebuilt as `−ml + q·dl` with one FMA, then multiplied in.
#[target_feature(enable = "neon")]
unsafe fn dot_q4_k(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let low = vdupq_n_u8(15);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for i in 0..nb {
        let b = w.add(i * q4_k::BLOCK_BYTES);
        let blk = std::slice::from_raw_parts(b, q4_k::BLOCK_BYTES);
        let scales = &blk[q4_k::SCALES..q4_k::SCALES + 12];
        let xb = xp.add(i * QK_K);
        let d = read_f16(blk, 0);
        let dmin = read_f16(blk, 2);
        for p in 0..4 {
            for half in 0..2 {
                let (sc, m) = q4_k::scale_min(2 * p + half, scales);
                let dl = vdupq_n_f32(d * sc as f32);
                let nml = vdupq_n_f32(-(dmin * m as f32));
                for c in 0..2 {
                    let v = vld1q_u8(b.add(q4_k::QS + 32 * p + 16 * c));
                    let nib = if half == 0 {
                        vandq_u8(v, low)
                    } else {
                        vshrq_n_u8::<4>(v)
                    };
                    let q = u8x16_to_f32(nib);
                    let xs = xb.add(64 * p + 32 * half + 16 * c);
                    for k in 0..4 {
                        let wv = vfmaq_f32(nml, q[k], dl);
                        acc[k & 1] = vfmaq_f32(acc[k & 1], wv, vld1q_f32(xs.add(4 * k)));
                    }
                }
            }
        }
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

/// Grid values from the float copy of the grid, signs by XOR with the mask
/// table; the group scale multiplies the group's sum once.
#[target_feature(enable = "neon")]
unsafe fn dot_iq2_xxs(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let grid = IQ2XXS_GRID_F32.as_ptr();
    let signs = IQ2XXS_SIGN_MASKS.as_ptr();
    let mut acc = vdupq_n_f32(0.0);
    for i in 0..nb {
        let blk = std::slice::from_raw_parts(w.add(i * iq2_xxs::BLOCK_BYTES), iq2_xxs::BLOCK_BYTES);
        let xb = xp.add(i * QK_K);
        let d = read_f16(blk, 0);
        for g in 0..8 {
            let (a0, a1) = iq2_xxs::group_words(blk, g);
            let xs = xb.add(32 * g);
            let mut part = [vdupq_n_f32(0.0); 2];
            for l in 0..4 {
                let gp = (*grid.add(((a0 >> (8 * l)) & 0xff) as usize)).as_ptr();
                let sp = (*signs.add(((a1 >> (7 * l)) & 127) as usize)).as_ptr();
                for k in 0..2 {
                    let gv = vreinterpretq_u32_f32(vld1q_f32(gp.add(4 * k)));
                    let wv = vreinterpretq_f32_u32(veorq_u32(gv, vld1q_u32(sp.add(4 * k))));
                    part[k] = vfmaq_f32(part[k], wv, vld1q_f32(xs.add(8 * l + 4 * k)));
                }
            }
            let db = vdupq_n_f32(iq2_xxs::group_scale(d, a1));
            acc = vfmaq_f32(acc, vaddq_f32(part[0], part[1]), db);
        }
    }
    vaddvq_f32(acc)
}
