//! AVX-512F dot kernels (16 f32 lanes); they also use AVX2, FMA and F16C.
//!
//! # Safety (all kernels)
//! Callers (only [`DotKernels`] after its checks) guarantee that the CPU has
//! AVX-512F, AVX2, FMA and F16C and that `row.len() ==
//! format.row_bytes(x.len())`. Every raw-pointer read below stays inside
//! `row`/`x` on that basis: block kernels read block `i < x.len()/block_elems`
//! at byte `i·block_bytes` and activations at `i·block_elems + k` with
//! `k < block_elems`; the float kernels read only while `i + 16 ≤ x.len()`
//! and finish with a scalar tail.

use std::arch::x86_64::*;

use crate::dispatch::{DotKernels, Isa};
use crate::tables::IQ2XXS_GRID_F32;
use crate::{f16_to_f32, float::bf16_to_f32, iq2_xxs, q2_k, q4_k, q8_0, QK_K};

pub(crate) fn kernels() -> DotKernels {
    DotKernels::from_parts(
        Isa::Avx512,
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
unsafe fn f16_at(p: *const u8) -> f32 {
    let h = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// Shared driver of the three float formats: `load(i)` yields 16 weights
/// starting at element `i`; four accumulators hide the FMA latency.
#[inline(always)]
unsafe fn dot_float(x: &[f32], load: impl Fn(usize) -> __m512, tail: impl Fn(usize) -> f32) -> f32 {
    let n = x.len();
    let xp = x.as_ptr();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(load(i + 16 * k), _mm512_loadu_ps(xp.add(i + 16 * k)), *a);
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(load(i), _mm512_loadu_ps(xp.add(i)), acc[0]);
        i += 16;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let mut s = _mm512_reduce_add_ps(sum);
    while i < n {
        s += tail(i) * x[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| _mm512_loadu_ps(w.add(4 * i) as *const f32),
        |i| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]),
    )
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| _mm512_cvtph_ps(_mm256_loadu_si256(w.add(2 * i) as *const __m256i)),
        |i| f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
    )
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    let w = row.as_ptr();
    dot_float(
        x,
        |i| {
            let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(w.add(2 * i) as *const __m256i));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
        },
        |i| bf16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
    )
}

/// Sixteen i8 at `p` as f32.
#[inline(always)]
unsafe fn i8x16(p: *const u8) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
}

/// Sixteen u8 at `p` widened to u32 lanes.
#[inline(always)]
unsafe fn u8x16(p: *const u8) -> __m512i {
    _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
}

/// One Q8_0 block: `Σ q·x` over two vectors, then one FMA with the scale.
#[inline(always)]
unsafe fn q8_0_block(b: *const u8, xb: *const f32, acc: __m512) -> __m512 {
    let s = _mm512_mul_ps(i8x16(b.add(2)), _mm512_loadu_ps(xb));
    let s = _mm512_fmadd_ps(i8x16(b.add(18)), _mm512_loadu_ps(xb.add(16)), s);
    _mm512_fmadd_ps(s, _mm512_set1_ps(f16_at(b)), acc)
}

/// Two blocks per step into two accumulators, so the per-block scale FMAs
/// do not form one long dependency chain.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / q8_0::BLOCK_ELEMS;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let (bb, be) = (q8_0::BLOCK_BYTES, q8_0::BLOCK_ELEMS);
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i + 2 <= nb {
        acc0 = q8_0_block(w.add(i * bb), xp.add(i * be), acc0);
        acc1 = q8_0_block(w.add((i + 1) * bb), xp.add((i + 1) * be), acc1);
        i += 2;
    }
    if i < nb {
        acc0 = q8_0_block(w.add(i * bb), xp.add(i * be), acc0);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

/// Each 16-weight sub-block's four values `dl·k − ml` form a table that
/// `vpermps` indexes with the low 4 bits of each lane: bits 1..0 are the
/// level, bits 3..2 the next level, hence the table repeats with period 4.
/// That replaces mask + convert + FMA with one permute.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_q2_k(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let levels = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0,
    );
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut dl = [0f32; 16];
    let mut ml = [0f32; 16];
    for i in 0..nb {
        let b = w.add(i * q2_k::BLOCK_BYTES);
        let xb = xp.add(i * QK_K);
        // All 16 sub-block scales at once, rounded exactly as dequantisation
        // does, then read back as broadcasts from memory (load ports only).
        let sc = u8x16(b);
        let d = _mm512_set1_ps(f16_at(b.add(q2_k::D)));
        let dmin = _mm512_set1_ps(f16_at(b.add(q2_k::D + 2)));
        let scl = _mm512_cvtepi32_ps(_mm512_and_si512(sc, _mm512_set1_epi32(15)));
        let mns = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(sc));
        _mm512_storeu_ps(dl.as_mut_ptr(), _mm512_mul_ps(d, scl));
        _mm512_storeu_ps(ml.as_mut_ptr(), _mm512_mul_ps(dmin, mns));
        for h in 0..2 {
            let qs = b.add(q2_k::QS + 32 * h);
            let v = [u8x16(qs), u8x16(qs.add(16))];
            for j in 0..4 {
                let shift = _mm_cvtsi32_si128(2 * j as i32);
                for (half, a) in acc.iter_mut().enumerate() {
                    let s = 8 * h + 2 * j + half;
                    let tbl = _mm512_fmsub_ps(levels, _mm512_set1_ps(dl[s]), _mm512_set1_ps(ml[s]));
                    let wv = _mm512_permutexvar_ps(_mm512_srl_epi32(v[half], shift), tbl);
                    let xs = xb.add(128 * h + 32 * j + 16 * half);
                    *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs), *a);
                }
            }
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// A 32-weight sub-block's sixteen values `dl·k − ml` form a table that
/// `vpermps` indexes with the nibble (it reads only the low 4 bits of each
/// lane, so the low nibble needs no mask): one permute per 16 weights.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_q4_k(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let levels = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    let mut acc = [_mm512_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.add(i * q4_k::BLOCK_BYTES);
        let scales = std::slice::from_raw_parts(b.add(q4_k::SCALES), 12);
        let xb = xp.add(i * QK_K);
        let d = f16_at(b);
        let dmin = f16_at(b.add(2));
        for p in 0..4 {
            let (sc0, m0) = q4_k::scale_min(2 * p, scales);
            let (sc1, m1) = q4_k::scale_min(2 * p + 1, scales);
            let t0 = _mm512_fmsub_ps(
                levels,
                _mm512_set1_ps(d * sc0 as f32),
                _mm512_set1_ps(dmin * m0 as f32),
            );
            let t1 = _mm512_fmsub_ps(
                levels,
                _mm512_set1_ps(d * sc1 as f32),
                _mm512_set1_ps(dmin * m1 as f32),
            );
            let qs = b.add(q4_k::QS + 32 * p);
            let xs = xb.add(64 * p);
            let v0 = u8x16(qs);
            let v1 = u8x16(qs.add(16));
            let w00 = _mm512_permutexvar_ps(v0, t0);
            let w01 = _mm512_permutexvar_ps(v1, t0);
            let w10 = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v0), t1);
            let w11 = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v1), t1);
            acc[0] = _mm512_fmadd_ps(w00, _mm512_loadu_ps(xs), acc[0]);
            acc[1] = _mm512_fmadd_ps(w01, _mm512_loadu_ps(xs.add(16)), acc[1]);
            acc[2] = _mm512_fmadd_ps(w10, _mm512_loadu_ps(xs.add(32)), acc[2]);
            acc[3] = _mm512_fmadd_ps(w11, _mm512_loadu_ps(xs.add(48)), acc[3]);
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

/// Two grid entries (16 lanes) from the float copy of the grid.
#[inline(always)]
unsafe fn grid_pair(g0: usize, g1: usize) -> __m512 {
    let grid = IQ2XXS_GRID_F32.as_ptr();
    let lo = _mm256_loadu_ps((*grid.add(g0)).as_ptr());
    let hi = _mm256_loadu_ps((*grid.add(g1)).as_ptr());
    let v = _mm512_insertf64x4::<1>(
        _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
        _mm256_castps_pd(hi),
    );
    _mm512_castpd_ps(v)
}

/// Per block, the 8 groups' sign masks and scales are computed with vector
/// ops (the scalar ksigns lookups and shifts dominated the loop otherwise):
/// each 7-bit sign field is spread into its own byte and bit 7 set to the
/// byte's parity, which is exactly `KSIGNS_IQ2XS`. Two bytes form the 16-bit
/// mask of a masked subtract that negates lanes. Grid values come from a
/// float copy of the grid (one load per 8 weights); the group scale
/// multiplies the group's sum once.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_iq2_xxs(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK_K;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let zero = _mm512_setzero_ps();
    let mut acc = [zero; 2];
    // Interleaved per group: lane 2g is a0 (unused here), lane 2g+1 is a1.
    let mut masks = [0u32; 16];
    let mut scales = [0f32; 16];
    for i in 0..nb {
        let b = w.add(i * iq2_xxs::BLOCK_BYTES);
        let xb = xp.add(i * QK_K);
        let q = _mm512_loadu_si512(b.add(2) as *const _);
        let field = |shift: u32, mask: i32| {
            _mm512_and_si512(
                _mm512_sll_epi32(q, _mm_cvtsi32_si128(shift as i32)),
                _mm512_set1_epi32(mask),
            )
        };
        let m = _mm512_or_si512(
            _mm512_or_si512(field(0, 0x7f), field(1, 0x7f00)),
            _mm512_or_si512(field(2, 0x7f_0000), field(3, 0x7f00_0000)),
        );
        let t = _mm512_xor_si512(m, _mm512_slli_epi32::<4>(m));
        let t = _mm512_xor_si512(t, _mm512_slli_epi32::<2>(t));
        let t = _mm512_xor_si512(t, _mm512_slli_epi32::<1>(t));
        let m = _mm512_or_si512(
            m,
            _mm512_and_si512(t, _mm512_set1_epi32(0x8080_8080u32 as i32)),
        );
        _mm512_storeu_si512(masks.as_mut_ptr() as *mut _, m);
        // d·(0.5 + s)·0.25 in gguf-py's order, as the scalar reference does.
        let s = _mm512_cvtepi32_ps(_mm512_srli_epi32::<28>(q));
        let d = _mm512_set1_ps(f16_at(b));
        let db = _mm512_mul_ps(
            _mm512_mul_ps(d, _mm512_add_ps(_mm512_set1_ps(0.5), s)),
            _mm512_set1_ps(0.25),
        );
        _mm512_storeu_ps(scales.as_mut_ptr(), db);
        for g in 0..8 {
            let idx = b.add(2 + 8 * g);
            let xs = xb.add(32 * g);
            let mut part = [zero; 2];
            for (p, pa) in part.iter_mut().enumerate() {
                let v = grid_pair(*idx.add(2 * p) as usize, *idx.add(2 * p + 1) as usize);
                let k = (masks[2 * g + 1] >> (16 * p)) as u16;
                let wv = _mm512_mask_sub_ps(v, k, zero, v);
                *pa = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs.add(16 * p)), *pa);
            }
            let db = _mm512_set1_ps(scales[2 * g + 1]);
            acc[g & 1] = _mm512_fmadd_ps(_mm512_add_ps(part[0], part[1]), db, acc[g & 1]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}
