//! AVX2 + FMA + F16C dot kernels (8 f32 lanes).
//!
//! # Safety (all kernels)
//! Callers (only [`DotKernels`] after its checks) guarantee that the CPU has
//! AVX2, FMA and F16C and that `row.len() == format.row_bytes(x.len())`.
//! Every raw-pointer read below stays inside `row`/`x` on that basis: block
//! kernels read block `i < x.len()/block_elems` at byte `i·block_bytes` and
//! activations at `i·block_elems + k` with `k < block_elems`; the float
//! kernels read only while `i + lanes ≤ x.len()` and finish with a scalar tail.

use std::arch::x86_64::*;

use crate::dispatch::{DotKernels, Isa};
use crate::tables::{IQ2XXS_GRID_F32, IQ2XXS_SIGN_MASKS};
use crate::{f16_to_f32, float::bf16_to_f32, iq2_xxs, q2_k, q4_k, q8_0, QK_K};

pub(crate) fn kernels() -> DotKernels {
    DotKernels::from_parts(
        Isa::Avx2,
        dot_f32,
        dot_f16,
        dot_bf16,
        dot_q8_0,
        dot_q2_k,
        dot_q4_k,
        dot_iq2_xxs,
    )
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let h = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// Shared driver of the three float formats: `load(i)` yields 8 weights
/// starting at element `i`; four accumulators hide the FMA latency.
#[inline(always)]
unsafe fn dot_float(x: &[f32], load: impl Fn(usize) -> __m256, tail: impl Fn(usize) -> f32) -> f32 {
    let n = x.len();
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(load(i + 8 * k), _mm256_loadu_ps(xp.add(i + 8 * k)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load(i), _mm256_loadu_ps(xp.add(i)), acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += tail(i) * x[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| _mm256_loadu_ps(w.add(4 * i) as *const f32),
        |i| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i) as *const __m128i)),
        |i| f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(2 * i) as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
        },
        |i| bf16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
    )
}

/// Eight i8 at `p` as f32.
#[inline(always)]
unsafe fn i8x8(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

/// Eight u8 at `p` widened to u32 lanes.
#[inline(always)]
unsafe fn u8x8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

/// One Q8_0 block: `Σ q·x` in two chains, then one FMA with the scale.
#[inline(always)]
unsafe fn q8_0_block(b: *const u8, xb: *const f32, acc: __m256) -> __m256 {
    let q = b.add(2);
    let s0 = _mm256_mul_ps(i8x8(q), _mm256_loadu_ps(xb));
    let s1 = _mm256_mul_ps(i8x8(q.add(8)), _mm256_loadu_ps(xb.add(8)));
    let s0 = _mm256_fmadd_ps(i8x8(q.add(16)), _mm256_loadu_ps(xb.add(16)), s0);
    let s1 = _mm256_fmadd_ps(i8x8(q.add(24)), _mm256_loadu_ps(xb.add(24)), s1);
    _mm256_fmadd_ps(_mm256_add_ps(s0, s1), _mm256_set1_ps(f16_at(b)), acc)
}

/// Two blocks per step into two accumulators, so the per-block scale FMAs
/// do not form one long dependency chain.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / q8_0::BLOCK_ELEMS;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let (bb, be) = (q8_0::BLOCK_BYTES, q8_0::BLOCK_ELEMS);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 2 <= nb {
        acc0 = q8_0_block(w.add(i * bb), xp.add(i * be), acc0);
        acc1 = q8_0_block(w.add((i + 1) * bb), xp.add((i + 1) * be), acc1);
        i += 2;
    }
    if i < nb {
        acc0 = q8_0_block(w.add(i * bb), xp.add(i * be), acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// Each 16-weight sub-block's four possible values `dl·k − ml` form a
/// table that `vpermps` indexes with the 2-bit level in the low bits of each
/// lane (bit 2 is the next level's low bit, hence the table repeats with
/// period 4), replacing mask + convert + FMA by one permute.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q2_k(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let levels = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0);
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in 0..nb {
        let b = w.add(i * q2_k::BLOCK_BYTES);
        let xb = xp.add(i * QK_K);
        let d = f16_at(b.add(q2_k::D));
        let dmin = f16_at(b.add(q2_k::D + 2));
        let mut dl = [0f32; 16];
        let mut ml = [0f32; 16];
        for s in 0..16 {
            let sc = *b.add(s);
            dl[s] = d * (sc & 15) as f32;
            ml[s] = dmin * (sc >> 4) as f32;
        }
        for h in 0..2 {
            let qs = b.add(q2_k::QS + 32 * h);
            let v = [
                u8x8(qs),
                u8x8(qs.add(8)),
                u8x8(qs.add(16)),
                u8x8(qs.add(24)),
            ];
            for j in 0..4 {
                let shift = _mm_cvtsi32_si128(2 * j as i32);
                for half in 0..2 {
                    let s = 8 * h + 2 * j + half;
                    let tbl = _mm256_fmsub_ps(levels, _mm256_set1_ps(dl[s]), _mm256_set1_ps(ml[s]));
                    let xs = xb.add(128 * h + 32 * j + 16 * half);
                    for c in 0..2 {
                        let idx = _mm256_srl_epi32(v[2 * half + c], shift);
                        let wv = _mm256_permutevar8x32_ps(tbl, idx);
                        acc[c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs.add(8 * c)), acc[c]);
                    }
                }
            }
        }
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Weights are rebuilt as `q·dl − ml` with one FMA, then multiplied in.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let low = _mm256_set1_epi32(15);
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in 0..nb {
        let b = w.add(i * q4_k::BLOCK_BYTES);
        let blk = std::slice::from_raw_parts(b, q4_k::BLOCK_BYTES);
        let xb = xp.add(i * QK_K);
        let d = f16_at(b);
        let dmin = f16_at(b.add(2));
        let scales = &blk[q4_k::SCALES..q4_k::SCALES + 12];
        for p in 0..4 {
            let (sc0, m0) = q4_k::scale_min(2 * p, scales);
            let (sc1, m1) = q4_k::scale_min(2 * p + 1, scales);
            let dl0 = _mm256_set1_ps(d * sc0 as f32);
            let ml0 = _mm256_set1_ps(dmin * m0 as f32);
            let dl1 = _mm256_set1_ps(d * sc1 as f32);
            let ml1 = _mm256_set1_ps(dmin * m1 as f32);
            let qs = b.add(q4_k::QS + 32 * p);
            let xs = xb.add(64 * p);
            for c in 0..4 {
                let v = u8x8(qs.add(8 * c));
                let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low));
                let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                let w0 = _mm256_fmsub_ps(lo, dl0, ml0);
                let w1 = _mm256_fmsub_ps(hi, dl1, ml1);
                acc[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs.add(8 * c)), acc[0]);
                acc[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xs.add(32 + 8 * c)), acc[1]);
            }
        }
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Eight weights per grid index come from a float copy of the grid (one
/// load, no conversion); the signs are applied by XOR with a mask table.
/// The group scale multiplies the group's sum once.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq2_xxs(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let grid = IQ2XXS_GRID_F32.as_ptr();
    let signs = IQ2XXS_SIGN_MASKS.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in 0..nb {
        let b = w.add(i * iq2_xxs::BLOCK_BYTES);
        let blk = std::slice::from_raw_parts(b, iq2_xxs::BLOCK_BYTES);
        let xb = xp.add(i * QK_K);
        let d = f16_at(b);
        for g in 0..8 {
            let (a0, a1) = iq2_xxs::group_words(blk, g);
            let xs = xb.add(32 * g);
            let mut part = [_mm256_setzero_ps(); 2];
            for l in 0..4 {
                let gi = ((a0 >> (8 * l)) & 0xff) as usize;
                let si = ((a1 >> (7 * l)) & 127) as usize;
                let gv = _mm256_loadu_ps((*grid.add(gi)).as_ptr());
                let sm = _mm256_loadu_si256((*signs.add(si)).as_ptr() as *const __m256i);
                let wv = _mm256_xor_ps(gv, _mm256_castsi256_ps(sm));
                part[l & 1] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs.add(8 * l)), part[l & 1]);
            }
            let db = _mm256_set1_ps(iq2_xxs::group_scale(d, a1));
            acc[g & 1] = _mm256_fmadd_ps(_mm256_add_ps(part[0], part[1]), db, acc[g & 1]);
        }
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}
