// Weight rows times a batch of activation rows on the tensor cores (prefill).
//
// A block computes a tile of 128 weight rows x 64 items, 32 values of k at a
// time (one "slab"). Quantised weights are exact small integers in f16
// (Q8_0 -128..127, IQ2_XXS +-{8,25,43}, Q2_K 0..3, Q4_K 0..15) with a scale
// (and, for the K formats, a min) per row and half slab; F16 weights are
// used as they are. Each item's activation row is scaled by a power of two
// 2^e that puts its largest magnitude in [2^14, 2^15) and split into two
// f16 parts, x 2^e = hi + lo. Since f16 covers 2^-24 .. 2^15, every value
// keeps 22 significant bits down to 2^-28 of the row's largest one (and the
// error of smaller ones stays below 2^-38 of it). The tensor cores add
// exact products in f32; a row's sums stay in units of 2^-e until the end:
//
//   y = 2^-e * sum over half slabs h: (scale_h * (Wq_h . (hi_h + lo_h)) - min_h * sum(x_h 2^e))
//
// With one scale per slab (Q8_0, IQ2_XXS, Q4_K, F16) a slab's products are
// scaled once (one FMA per output); Q2_K scales each half slab. (A scale per
// 32 values of x, as before docs/bench r48, cost a multiply per output and
// half slab more; three bf16 parts, x = hi + mid + lo with all 24 bits,
// cost 1.5x the tensor work and the splitting, r26.)
//
// mma.sync m16n8k16 (f32 accumulate); 4 warps as 2 (rows) x 2 (items), a
// warp owns 64 x 32 outputs (the larger the warp tile, the fewer fragment
// loads from shared memory per product; Nsight r28 found the 8-warp, 32 x 32
// layout shared-memory bound). Each output is one fixed-order sum, so results
// do not depend on the other items of the tile (batch composition) and are
// bit-identical run to run.
//
// Items come either densely (item = tile * 64 + i) or, for the routed
// experts, from a tile table built on the GPU (`tiles` = [count, (matrix,
// start, len) ...], `items` = item ids grouped by expert).

#define MT_M 128
#define MT_N 64
#define MT_THREADS 128  // 4 warps as 2 (rows) x 2 (items)
#define MT_WM 4         // m16 tiles per warp: a warp owns 64 rows x 32 items
#define MT_LD 40  // 16-bit values per smem row: 32 + 8 of padding (no bank conflicts)

// The activations as gemm_split_x leaves them, indexed like x: the f16
// parts hi and lo, per 16 the sum of the scaled values (x_sum); per row of
// x, 2^-e (x_inv).
struct GemmJob {
    const u8* w;
    u64 mat_bytes;
    u64 row_bytes;
    const u16* x_hi;
    const u16* x_lo;
    const float* x_inv;
    const float* x_sum;
    i64 x_stride;
    float* y;
    i64 y_stride;
    i64 x_grp_stride;
    const int* tiles;
    const int* items;
    int n_rows;
    int row_len;
    int x_div;
    int x_grp_rows;
    int n_items;
    int pad;
};

struct GemmJobs {
    GemmJob j[2];
};

// Bytes 0, 1 (half 0) or 2, 3 (half 1) of w as an f16 pair: each byte goes
// under the exponent of 1024 (0x64XX = 1024 + b, exact), then the f16 pair
// `minus` (1024, or 1152 for signed bytes biased by 128) is subtracted from
// both halves at once.
__device__ __forceinline__ u32 h2_bytes(u32 w, int half, u32 minus) {
    const u32 h = __byte_perm(w, 0x64646464u, half ? 0x4342u : 0x4140u);
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(h), "r"(minus));
    return r;
}
#define DS4_H2_1024 0x64006400u  // (1024, 1024): unsigned bytes
#define DS4_H2_1152 0x64806480u  // (1152, 1152): signed bytes biased by 128

// Slab decoders, in two steps so that a slab's weight loads are in flight
// while the previous slab is multiplied: `fetch` only loads (the raw words
// of part p of slab s of a row: its 8 consecutive values, and for part 0
// the scale words), `decode` turns them into o[0..3] (f16 pairs, lower k in
// the low half) and, for part 0, the scales and mins of the two half slabs.
struct MmaQ8_0 {
    static constexpr bool MINS = false;
    static constexpr int BLK = 32;
    struct Raw {
        u32 q[4], d;
    };
    static __device__ __forceinline__ void fetch(const u8* row, int B, int s, int p, Raw& r) {
        const u16* q = (const u16*)(row + 32 * s + 8 * p);
#pragma unroll
        for (int i = 0; i < 4; i++) r.q[i] = q[i];
        r.d = p == 0 ? *(const u16*)(row + 32 * B + 2 * s) : 0;
    }
    static __device__ __forceinline__ void decode(const Raw& r, int s, int p, u32* o, float* sc,
                                                  float* mn, const u64* grid) {
        // Signed bytes, biased to unsigned by flipping their top bits.
        const u32 w0 = (r.q[0] | (r.q[1] << 16)) ^ 0x80808080u;
        const u32 w1 = (r.q[2] | (r.q[3] << 16)) ^ 0x80808080u;
        o[0] = h2_bytes(w0, 0, DS4_H2_1152);
        o[1] = h2_bytes(w0, 1, DS4_H2_1152);
        o[2] = h2_bytes(w1, 0, DS4_H2_1152);
        o[3] = h2_bytes(w1, 1, DS4_H2_1152);
        if (p == 0) {
            const float d = h2f((u16)r.d);
            sc[0] = d;
            sc[1] = d;
        }
    }
};

struct MmaIQ2XXS {
    static constexpr bool MINS = false;
    static constexpr int BLK = 256;
    struct Raw {
        u32 h[4], d;  // the group's 8 bytes as u16 halves (66-byte blocks)
    };
    static __device__ __forceinline__ void fetch(const u8* row, int B, int s, int p, Raw& r) {
        const int b = s >> 3, g = s & 7;
        const u16* qs = (const u16*)(row + 64 * b + 8 * g);
#pragma unroll
        for (int i = 0; i < 4; i++) r.h[i] = qs[i];
        r.d = p == 0 ? *(const u16*)(row + 64 * B + 2 * b) : 0;
    }
    static __device__ __forceinline__ void decode(const Raw& r, int s, int p, u32* o, float* sc,
                                                  float* mn, const u64* grid) {
        const u32 a0 = r.h[0] | (r.h[1] << 16), a1 = r.h[2] | (r.h[3] << 16);
        const u64 gr = grid[(a0 >> (8 * p)) & 0xff];
        const u32 sg = ksigns_iq2xs((a1 >> (7 * p)) & 127);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            // Magnitudes, then the signs of values 2i, 2i + 1 into the f16
            // sign bits (15, 31).
            const u32 t = sg >> (2 * i);
            o[i] = h2_bytes(i < 2 ? (u32)gr : (u32)(gr >> 32), i & 1, DS4_H2_1024) ^
                   (((t & 1u) << 15) | ((t & 2u) << 30));
        }
        if (p == 0) {
            const float db = h2f((u16)r.d) * (0.5f + (float)(a1 >> 28)) * 0.25f;
            sc[0] = db;
            sc[1] = db;
        }
    }
};

struct MmaQ2K {
    static constexpr bool MINS = true;
    static constexpr int BLK = 256;
    struct Raw {
        u32 w0, w1, s0, s1, d, dmin;
    };
    static __device__ __forceinline__ void fetch(const u8* row, int B, int s, int p, Raw& r) {
        const int b = s >> 3, e0 = (s & 7) * 32;
        const int h = e0 >> 7, j = (e0 & 127) >> 5;
        const u8* blk = row + 80 * b;
        r.w0 = *(const u32*)(blk + 32 * h + 8 * p);
        r.w1 = *(const u32*)(blk + 32 * h + 8 * p + 4);
        if (p == 0) {
            const u16* dd = (const u16*)(row + 80 * B + 4 * b);
            r.d = dd[0];
            r.dmin = dd[1];
            r.s0 = blk[64 + 8 * h + 2 * j];
            r.s1 = blk[64 + 8 * h + 2 * j + 1];
        }
    }
    static __device__ __forceinline__ void decode(const Raw& r, int s, int p, u32* o, float* sc,
                                                  float* mn, const u64* grid) {
        const int j = (((s & 7) * 32) & 127) >> 5;
        // Each byte's 2-bit field j.
        const u32 v0 = (r.w0 >> (2 * j)) & 0x03030303u, v1 = (r.w1 >> (2 * j)) & 0x03030303u;
        o[0] = h2_bytes(v0, 0, DS4_H2_1024);
        o[1] = h2_bytes(v0, 1, DS4_H2_1024);
        o[2] = h2_bytes(v1, 0, DS4_H2_1024);
        o[3] = h2_bytes(v1, 1, DS4_H2_1024);
        if (p == 0) {
            const float d = h2f((u16)r.d), dmin = h2f((u16)r.dmin);
            sc[0] = d * (float)(r.s0 & 15);
            mn[0] = dmin * (float)(r.s0 >> 4);
            sc[1] = d * (float)(r.s1 & 15);
            mn[1] = dmin * (float)(r.s1 >> 4);
        }
    }
};

struct MmaQ4K {
    static constexpr bool MINS = true;
    static constexpr int BLK = 256;
    struct Raw {
        u32 w0, w1, b0, b1, b2, d, dmin;
    };
    static __device__ __forceinline__ void fetch(const u8* row, int B, int s, int p, Raw& r) {
        const int b = s >> 3, sb = s & 7;
        const u8* blk = row + 144 * b;
        r.w0 = *(const u32*)(blk + 16 + 32 * (sb >> 1) + 8 * p);
        r.w1 = *(const u32*)(blk + 16 + 32 * (sb >> 1) + 8 * p + 4);
        if (p == 0) {
            const u8* sx = blk + 4;
            r.b0 = sx[sb];
            r.b1 = sx[sb + 4];
            r.b2 = sb >= 4 ? sx[sb - 4] : 0;
            r.d = *(const u16*)blk;
            r.dmin = *(const u16*)(blk + 2);
        }
    }
    static __device__ __forceinline__ void decode(const Raw& r, int s, int p, u32* o, float* sc,
                                                  float* mn, const u64* grid) {
        const int sb = s & 7;
        const int shift = (sb & 1) ? 4 : 0;
        // Each byte's low or high nibble.
        const u32 v0 = (r.w0 >> shift) & 0x0f0f0f0fu, v1 = (r.w1 >> shift) & 0x0f0f0f0fu;
        o[0] = h2_bytes(v0, 0, DS4_H2_1024);
        o[1] = h2_bytes(v0, 1, DS4_H2_1024);
        o[2] = h2_bytes(v1, 0, DS4_H2_1024);
        o[3] = h2_bytes(v1, 1, DS4_H2_1024);
        if (p == 0) {
            // b0 = scales[sb], b1 = scales[sb + 4], b2 = scales[sb - 4] (sb >= 4).
            int scv, m;
            if (sb < 4) {
                scv = r.b0 & 63;
                m = r.b1 & 63;
            } else {
                scv = (r.b1 & 0xf) | ((r.b2 >> 6) << 4);
                m = (r.b1 >> 4) | ((r.b0 >> 6) << 4);
            }
            const float d = h2f((u16)r.d), dmin = h2f((u16)r.dmin);
            sc[0] = sc[1] = d * (float)scv;
            mn[0] = mn[1] = dmin * (float)m;
        }
    }
};

struct MmaF16 {
    static constexpr bool MINS = false;
    static constexpr int BLK = 1;
    struct Raw {
        uint4 v;
    };
    static __device__ __forceinline__ void fetch(const u8* row, int B, int s, int p, Raw& r) {
        r.v = *(const uint4*)(row + 2 * (32 * s + 8 * p));
    }
    static __device__ __forceinline__ void decode(const Raw& r, int s, int p, u32* o, float* sc,
                                                  float* mn, const u64* grid) {
        o[0] = r.v.x;
        o[1] = r.v.y;
        o[2] = r.v.z;
        o[3] = r.v.w;
        if (p == 0) {
            sc[0] = 1.0f;
            sc[1] = 1.0f;
        }
    }
};

// Each of `rows` rows of x (width values, a multiple of 32; row stride
// x_stride) by one block: the power of two 2^e that puts the row's largest
// magnitude in [2^14, 2^15) (e = 126 for all-zero and subnormal rows, kept
// in [-126, 126]; inf and NaN pass through), the two f16 parts of x 2^e,
// 2^-e, and per 16 values the sum of the scaled values (two runs of 8 in
// order, then their sum; used by the formats with mins). A thread per run
// of 8 values (adjacent runs in adjacent lanes).
extern "C" __global__ void __launch_bounds__(256) gemm_split_x(const float* __restrict__ x,
                                                              i64 x_stride, int width, int rows,
                                                              u16* __restrict__ hi,
                                                              u16* __restrict__ lo,
                                                              float* __restrict__ inv,
                                                              float* __restrict__ sum) {
    ds4_pdl_enter();
    __shared__ float wmax[8];
    const int row = blockIdx.x;
    if (row >= rows) return;  // uniform over the block
    const float* xr = x + (i64)row * x_stride;
    const int runs = width / 8;
    float mx = 0.0f;
    for (int r = threadIdx.x; r < runs; r += blockDim.x) {
        const float4 f0 = *(const float4*)(xr + 8 * r), f1 = *(const float4*)(xr + 8 * r + 4);
        mx = fmaxf(mx, fmaxf(fmaxf(fabsf(f0.x), fabsf(f0.y)), fmaxf(fabsf(f0.z), fabsf(f0.w))));
        mx = fmaxf(mx, fmaxf(fmaxf(fabsf(f1.x), fabsf(f1.y)), fmaxf(fabsf(f1.z), fabsf(f1.w))));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (threadIdx.x % DS4_WARP == 0) wmax[threadIdx.x / DS4_WARP] = mx;
    __syncthreads();
    mx = 0.0f;
    for (int w = 0; w < (int)blockDim.x / DS4_WARP; w++) mx = fmaxf(mx, wmax[w]);
    const int ex = (__float_as_int(mx) >> 23) & 0xff;
    const int e = mx == 0.0f ? 126 : max(-126, min(126, 14 - (ex - 127)));
    const float up = pow2f(e);
    if (threadIdx.x == 0) inv[row] = pow2f(-e);
    // Whole warps run every iteration (runs is a multiple of 4, blockDim of
    // 32), so the pair shuffle below always has its partner.
    for (int r0 = 0; r0 < runs; r0 += blockDim.x) {
        const int r = r0 + (int)threadIdx.x;
        const bool on = r < runs;
        float v[8];
        if (on) {
            const float4 f0 = *(const float4*)(xr + 8 * r), f1 = *(const float4*)(xr + 8 * r + 4);
            v[0] = f0.x * up, v[1] = f0.y * up, v[2] = f0.z * up, v[3] = f0.w * up;
            v[4] = f1.x * up, v[5] = f1.y * up, v[6] = f1.z * up, v[7] = f1.w * up;
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = 0.0f;
        }
        float s8 = v[0];
#pragma unroll
        for (int i = 1; i < 8; i++) s8 += v[i];
        const float s_next = __shfl_xor_sync(0xffffffffu, s8, 1);
        if (!on) continue;
        u32 h[8], l[8];
#pragma unroll
        for (int i = 0; i < 8; i++) split2(v[i], h[i], l[i]);
        const i64 at = (i64)row * x_stride + 8 * r;
        *(uint4*)(hi + at) = make_uint4(pack16(h[0], h[1]), pack16(h[2], h[3]),
                                        pack16(h[4], h[5]), pack16(h[6], h[7]));
        *(uint4*)(lo + at) = make_uint4(pack16(l[0], l[1]), pack16(l[2], l[3]),
                                        pack16(l[4], l[5]), pack16(l[6], l[7]));
        if ((r & 1) == 0) sum[at / 16] = s8 + s_next;
    }
}

// Per slab: the block's x parts (and scales, sums) arrive by cp.async into
// one of two buffers while the other is multiplied, and every thread's
// weight words of the next slab are loaded into registers before this
// slab's products; they are decoded into shared memory at the top of the
// next iteration.
template <class Fmt>
__device__ __forceinline__ void gemm_mma_impl(const GemmJob& J) {
    __shared__ __align__(16) u16 wq[MT_M * MT_LD];
    __shared__ __align__(16) u16 xp[2][2][MT_N * MT_LD];  // buffer, part
    __shared__ float xinv[MT_N];                          // item: 2^-e of its row
    __shared__ __align__(16) float xsum[2][MT_N][2];
    __shared__ float wsc[MT_M][2], wmn[MT_M][2];
    __shared__ i64 xoff[MT_N], yoff[MT_N];
    __shared__ int s_len;
    __shared__ u64 sgrid[256];  // the IQ2_XXS grid (read by that format only)

    const int tid = threadIdx.x;
    const int row0 = blockIdx.x * MT_M;
    if (row0 >= J.n_rows) return;
    int mat = 0, start, len;
    if (J.tiles) {
        if ((int)blockIdx.y >= J.tiles[0]) return;
        const int* t = J.tiles + 1 + 3 * blockIdx.y;
        mat = t[0];
        start = t[1];
        len = t[2];
    } else {
        start = blockIdx.y * MT_N;
        if (start >= J.n_items) return;
        len = min(MT_N, J.n_items - start);
    }
    if (tid < MT_N) {
        const int it = tid < len ? (J.items ? J.items[start + tid] : start + tid) : 0;
        xoff[tid] = (i64)(it / J.x_div) * J.x_stride + (i64)(row0 / J.x_grp_rows) * J.x_grp_stride;
        yoff[tid] = (i64)it * J.y_stride;
        xinv[tid] = tid < len ? J.x_inv[it / J.x_div] : 0.0f;
    }
    if (tid == 0) s_len = len;
    for (int i = tid; i < 256; i += MT_THREADS) sgrid[i] = ds4_iq2xxs_grid[i];
    const u8* base = J.w + (u64)mat * J.mat_bytes;
    const int B = J.row_len / Fmt::BLK;
    const int warp = tid / DS4_WARP, lane = tid % DS4_WARP;
    const int wr = warp >> 1, wc = warp & 1;  // 2 x 2 warps
    const int g = lane >> 2, t4 = lane & 3;
    // This lane's ldmatrix row (matrix lane / 8, row lane % 8) of an A tile
    // (16 rows x 16 k) and of a pair of B tiles (2 x 8 items x 16 k).
    const int lr = lane & 7, lm = lane >> 3;
    const int a_lane = (lr + 8 * (lm & 1)) * MT_LD + 8 * (lm >> 1);
    const int b_lane = ((lm >> 1) * 8 + lr) * MT_LD + 8 * (lm & 1);
    float acc[MT_WM][4][4];
#pragma unroll
    for (int a = 0; a < MT_WM; a++)
#pragma unroll
        for (int b = 0; b < 4; b++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[a][b][c] = 0.0f;
    __syncthreads();

    // This thread's weight tasks: part wp of rows (tid / 4) + 32 q.
    constexpr int WT = MT_M * 4 / MT_THREADS;
    const int wp = tid & 3, wr0 = tid >> 2;
#define DS4_WROW(q) (base + (u64)min(row0 + wr0 + 32 * (q), J.n_rows - 1) * J.row_bytes)
    constexpr int XT = MT_N * 4 / MT_THREADS;
    int x_it[XT], x_p[XT];
    i64 x_at[XT];
#pragma unroll
    for (int q = 0; q < XT; q++) {
        x_it[q] = (tid + MT_THREADS * q) >> 2;
        x_p[q] = tid & 3;
        x_at[q] = xoff[x_it[q]];
    }
    // Slab s of x into buffer b: 64 items x 4 parts of 8 values x 2 f16
    // parts (16-byte copies) and the 64 pairs of half-slab sums (threads
    // 0..63).
#define DS4_STAGE_X(s, b)                                                                       \
    {                                                                                          \
        _Pragma("unroll") for (int q = 0; q < XT; q++) {                                        \
            const i64 e0 = x_at[q] + 32 * (s) + 8 * x_p[q];                                     \
            const bool ok = x_it[q] < s_len;                                                    \
            cp_async<16>(xp[b][0] + x_it[q] * MT_LD + 8 * x_p[q], J.x_hi + e0, ok);             \
            cp_async<16>(xp[b][1] + x_it[q] * MT_LD + 8 * x_p[q], J.x_lo + e0, ok);             \
        }                                                                                      \
        if (Fmt::MINS && tid < MT_N) {                                                          \
            const i64 g2 = (xoff[tid] + 32 * (s)) / 16;                                         \
            cp_async<8>(&xsum[b][tid][0], J.x_sum + g2, tid < s_len);                           \
        }                                                                                      \
    }
    typename Fmt::Raw raw[WT];
    const int n_slabs = J.row_len / 32;
    DS4_STAGE_X(0, 0);
    cp_async_commit();
#pragma unroll
    for (int q = 0; q < WT; q++) Fmt::fetch(DS4_WROW(q), B, 0, wp, raw[q]);
    for (int s = 0; s < n_slabs; s++) {
        const int cur = s & 1;
        // Weights of slab s: decode (the previous products are done).
#pragma unroll
        for (int q = 0; q < WT; q++) {
            const int r = wr0 + 32 * q;
            u32 o[4];
            Fmt::decode(raw[q], s, wp, o, wsc[r], wmn[r], sgrid);
            *(uint4*)(wq + r * MT_LD + 8 * wp) = make_uint4(o[0], o[1], o[2], o[3]);
        }
        if (s + 1 < n_slabs) {
            DS4_STAGE_X(s + 1, cur ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (s + 1 < n_slabs) {
#pragma unroll
            for (int q = 0; q < WT; q++) Fmt::fetch(DS4_WROW(q), B, s + 1, wp, raw[q]);
        }
        // Half slabs per flush: both for the one-scale formats, one at a
        // time (with its own scale and min) for the K formats, whose B
        // fragments are then loaded per half slab (fewer live registers).
        constexpr int HB = Fmt::MINS ? 1 : 2;
#pragma unroll
        for (int h0 = 0; h0 < 2; h0 += HB) {
            // B fragments by ldmatrix, [half][part][nb][2]: matrices (items
            // of nb, k 0..7), (nb, k 8..15), then the same for nb + 1.
            u32 bf[HB][2][4][2];
#pragma unroll
            for (int hi = 0; hi < HB; hi++)
#pragma unroll
                for (int sp = 0; sp < 2; sp++)
#pragma unroll
                    for (int nb = 0; nb < 4; nb += 2) {
                        u32 r[4];
                        ldsm4(r, xp[cur][sp] + (wc * 32 + nb * 8) * MT_LD + b_lane + 16 * (h0 + hi));
                        bf[hi][sp][nb][0] = r[0];
                        bf[hi][sp][nb][1] = r[1];
                        bf[hi][sp][nb + 1][0] = r[2];
                        bf[hi][sp][nb + 1][1] = r[3];
                    }
#pragma unroll
            for (int mi = 0; mi < MT_WM; mi++) {
                const int rb = wr * 16 * MT_WM + mi * 16;
                float tmp[4][4];
#pragma unroll
                for (int nb = 0; nb < 4; nb++)
#pragma unroll
                    for (int c = 0; c < 4; c++) tmp[nb][c] = 0.0f;
#pragma unroll
                for (int hi = 0; hi < HB; hi++) {
                    // A: matrices (rows 0..7, k 0..7), (8..15, 0..7),
                    // (0..7, 8..15), (8..15, 8..15).
                    u32 a[4];
                    ldsm4(a, wq + rb * MT_LD + a_lane + 16 * (h0 + hi));
#pragma unroll
                    for (int sp = 0; sp < 2; sp++)
#pragma unroll
                        for (int nb = 0; nb < 4; nb++)
                            mma16816(tmp[nb], a[0], a[1], a[2], a[3], bf[hi][sp][nb][0],
                                     bf[hi][sp][nb][1]);
                }
                // Scale (and min) of half slab h0; for the one-scale
                // formats sc[0] == sc[1], the slab's.
                const float s0 = wsc[rb + g][h0], s8 = wsc[rb + g + 8][h0];
                if (Fmt::MINS) {
                    const float m0 = wmn[rb + g][h0], m8 = wmn[rb + g + 8][h0];
#pragma unroll
                    for (int nb = 0; nb < 4; nb++) {
                        const int i0 = wc * 32 + nb * 8 + 2 * t4;
                        const float x0 = xsum[cur][i0][h0], x1 = xsum[cur][i0 + 1][h0];
                        acc[mi][nb][0] = fmaf(-m0, x0, fmaf(s0, tmp[nb][0], acc[mi][nb][0]));
                        acc[mi][nb][1] = fmaf(-m0, x1, fmaf(s0, tmp[nb][1], acc[mi][nb][1]));
                        acc[mi][nb][2] = fmaf(-m8, x0, fmaf(s8, tmp[nb][2], acc[mi][nb][2]));
                        acc[mi][nb][3] = fmaf(-m8, x1, fmaf(s8, tmp[nb][3], acc[mi][nb][3]));
                    }
                } else {
#pragma unroll
                    for (int nb = 0; nb < 4; nb++) {
                        acc[mi][nb][0] = fmaf(s0, tmp[nb][0], acc[mi][nb][0]);
                        acc[mi][nb][1] = fmaf(s0, tmp[nb][1], acc[mi][nb][1]);
                        acc[mi][nb][2] = fmaf(s8, tmp[nb][2], acc[mi][nb][2]);
                        acc[mi][nb][3] = fmaf(s8, tmp[nb][3], acc[mi][nb][3]);
                    }
                }
            }
        }
        __syncthreads();
    }
#undef DS4_STAGE_X
#undef DS4_WROW
#pragma unroll
    for (int mi = 0; mi < MT_WM; mi++)
#pragma unroll
        for (int nb = 0; nb < 4; nb++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int r = row0 + wr * 16 * MT_WM + mi * 16 + g + (c >= 2 ? 8 : 0);
                const int it = wc * 32 + nb * 8 + 2 * t4 + (c & 1);
                if (r < J.n_rows && it < s_len) J.y[yoff[it] + r] = acc[mi][nb][c] * xinv[it];
            }
}

// MINB blocks per SM: 2 for every format. (Q8_0 ran 1.18x faster at 3,
// r32, until the one-flush-per-slab loop of r48 made it spill at 168
// registers; at 2 it is as fast, 1,130 vs 1,136 us per launch, r48.)
#define DS4_GEMM(NAME, FMT, MINB)                                                         \
    extern "C" __global__ void __launch_bounds__(MT_THREADS, MINB) NAME(const GemmJobs js) { \
        ds4_pdl_enter();                                                                  \
        gemm_mma_impl<FMT>(js.j[blockIdx.z]);                                             \
    }

DS4_GEMM(gemm_q8_0, MmaQ8_0, 2)
DS4_GEMM(gemm_iq2_xxs, MmaIQ2XXS, 2)
DS4_GEMM(gemm_q2_k, MmaQ2K, 2)
DS4_GEMM(gemm_q4_k, MmaQ4K, 2)
DS4_GEMM(gemm_f16, MmaF16, 2)

// ---------------------------------------------------------------------------
// Routed-expert tiles: items (token, slot) grouped by expert, in item order
// within an expert (integer counting only, so the grouping is deterministic).

// counts[e] = items routed to e; one warp per expert.
extern "C" __global__ void expert_count(const int* __restrict__ ids, int n_items,
                                        int* __restrict__ counts, int n_expert) {
    ds4_pdl_enter();
    const int e = blockIdx.x * (blockDim.x / DS4_WARP) + threadIdx.x / DS4_WARP;
    const int lane = threadIdx.x % DS4_WARP;
    if (e >= n_expert) return;
    int c = 0;
    for (int base = 0; base < n_items; base += DS4_WARP) {
        const int i = base + lane;
        c += __popc(__ballot_sync(DS4_FULL_MASK, i < n_items && ids[i] == e));
    }
    if (lane == 0) counts[e] = c;
}

// One block: offsets[e] (exclusive scan of counts) and the tile table
// tiles = [count, (e, start, len)...] with tiles of at most `tile` items.
extern "C" __global__ void expert_tiles(const int* __restrict__ counts, int n_expert, int tile,
                                        int* __restrict__ offsets, int* __restrict__ tiles) {
    ds4_pdl_enter();
    if (threadIdx.x != 0) return;
    int off = 0, nt = 0;
    for (int e = 0; e < n_expert; e++) {
        const int c = counts[e];
        offsets[e] = off;
        for (int s = 0; s < c; s += tile) {
            int* t = tiles + 1 + 3 * nt;
            t[0] = e;
            t[1] = off + s;
            t[2] = min(tile, c - s);
            nt++;
        }
        off += c;
    }
    tiles[0] = nt;
}

// items[offsets[e] + rank] = i for every item i routed to e, in item order.
extern "C" __global__ void expert_place(const int* __restrict__ ids, int n_items,
                                        const int* __restrict__ offsets,
                                        int* __restrict__ items, int n_expert) {
    ds4_pdl_enter();
    const int e = blockIdx.x * (blockDim.x / DS4_WARP) + threadIdx.x / DS4_WARP;
    const int lane = threadIdx.x % DS4_WARP;
    if (e >= n_expert) return;
    int at = offsets[e];
    for (int base = 0; base < n_items; base += DS4_WARP) {
        const int i = base + lane;
        const bool mine = i < n_items && ids[i] == e;
        const u32 ballot = __ballot_sync(DS4_FULL_MASK, mine);
        if (mine) items[at + __popc(ballot & ((1u << lane) - 1u))] = i;
        at += __popc(ballot);
    }
}
