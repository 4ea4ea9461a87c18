// Weight rows times a batch of activation rows on the tensor cores (prefill).
//
// A block computes a tile of 128 weight rows x 64 items, 32 values of k at a
// time (one "slab"). Quantised weights are exact small integers in bf16
// (Q8_0 -128..127, IQ2_XXS +-{8,25,43}, Q2_K 0..3, Q4_K 0..15) with a scale
// (and, for the K formats, a min) per row and half slab; F16 weights are
// used as they are with f16 products. Activations are split into three
// 16-bit parts, x = hi + mid + lo (24 significant bits), so every product
// the tensor cores add is exact and the result has f32 accuracy:
//
//   y = sum over half slabs h: scale_h * (Wq_h . x_h) - min_h * sum(x_h)
//
// mma.sync m16n8k16 (f32 accumulate); 8 warps as 4 (rows) x 2 (items), a
// warp owns 32 x 32 outputs. Each output is one fixed-order sum, so results
// do not depend on the other items of the tile (batch composition) and are
// bit-identical run to run.
//
// Items come either densely (item = tile * 64 + i) or, for the routed
// experts, from a tile table built on the GPU (`tiles` = [count, (matrix,
// start, len) ...], `items` = item ids grouped by expert).

#define MT_M 128
#define MT_N 64
#define MT_LD 40  // 16-bit values per smem row: 32 + 8 of padding (no bank conflicts)

struct GemmJob {
    const u8* w;
    u64 mat_bytes;
    u64 row_bytes;
    const float* x;
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

__device__ __forceinline__ u32 bf16_bits(float f) {
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf16_value(u32 h) { return __uint_as_float(h << 16); }

__device__ __forceinline__ u32 pack16(u32 lo, u32 hi) { return (lo & 0xffff) | (hi << 16); }

// bf16 bits of a small integer (exact).
__device__ __forceinline__ u32 bf16_int(int v) { return __float_as_uint((float)v) >> 16; }

// Slab decoders: 8 consecutive values (part p of slab s) of a row into
// o[0..3] (pairs, lower k in the low half); part 0 also writes the scales
// and mins of the two half slabs.
struct MmaQ8_0 {
    static constexpr bool F16 = false, MINS = false;
    static constexpr int BLK = 32;
    static __device__ __forceinline__ void load(const u8* row, int B, int s, int p, u32* o,
                                                float* sc, float* mn, const u64* grid) {
        const u16* q = (const u16*)(row + 32 * s + 8 * p);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 v = q[i];
            o[i] = pack16(bf16_int((signed char)(v & 0xff)), bf16_int((signed char)(v >> 8)));
        }
        if (p == 0) {
            const float d = load_f16(row + 32 * B + 2 * s);
            sc[0] = d;
            sc[1] = d;
        }
    }
};

struct MmaIQ2XXS {
    static constexpr bool F16 = false, MINS = false;
    static constexpr int BLK = 256;
    static __device__ __forceinline__ void load(const u8* row, int B, int s, int p, u32* o,
                                                float* sc, float* mn, const u64* grid) {
        const int b = s >> 3, g = s & 7;
        const u8* qs = row + 64 * b + 8 * g;
        const u32 a0 = load_u32_a2(qs), a1 = load_u32_a2(qs + 4);
        const u64 gr = grid[(a0 >> (8 * p)) & 0xff];
        const u32 sg = ksigns_iq2xs((a1 >> (7 * p)) & 127);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int k0 = 2 * i, k1 = 2 * i + 1;
            const int v0 = (int)((gr >> (8 * k0)) & 0xff), v1 = (int)((gr >> (8 * k1)) & 0xff);
            o[i] = pack16(bf16_int(((sg >> k0) & 1) ? -v0 : v0),
                          bf16_int(((sg >> k1) & 1) ? -v1 : v1));
        }
        if (p == 0) {
            const float d = load_f16(row + 64 * B + 2 * b);
            const float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
            sc[0] = db;
            sc[1] = db;
        }
    }
};

struct MmaQ2K {
    static constexpr bool F16 = false, MINS = true;
    static constexpr int BLK = 256;
    static __device__ __forceinline__ void load(const u8* row, int B, int s, int p, u32* o,
                                                float* sc, float* mn, const u64* grid) {
        const int b = s >> 3, e0 = (s & 7) * 32;
        const int h = e0 >> 7, j = (e0 & 127) >> 5;
        const u8* blk = row + 80 * b;
        const u32 w0 = *(const u32*)(blk + 32 * h + 8 * p);
        const u32 w1 = *(const u32*)(blk + 32 * h + 8 * p + 4);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 w = i < 2 ? w0 : w1;
            const int sh = 16 * (i & 1);
            const int q0 = (int)((w >> (sh + 2 * j)) & 3);
            const int q1 = (int)((w >> (sh + 8 + 2 * j)) & 3);
            o[i] = pack16(bf16_int(q0), bf16_int(q1));
        }
        if (p == 0) {
            const u8* dd = row + 80 * B + 4 * b;
            const float d = load_f16(dd), dmin = load_f16(dd + 2);
            const int s0 = blk[64 + 8 * h + 2 * j], s1 = blk[64 + 8 * h + 2 * j + 1];
            sc[0] = d * (float)(s0 & 15);
            mn[0] = dmin * (float)(s0 >> 4);
            sc[1] = d * (float)(s1 & 15);
            mn[1] = dmin * (float)(s1 >> 4);
        }
    }
};

struct MmaQ4K {
    static constexpr bool F16 = false, MINS = true;
    static constexpr int BLK = 256;
    static __device__ __forceinline__ void load(const u8* row, int B, int s, int p, u32* o,
                                                float* sc, float* mn, const u64* grid) {
        const int b = s >> 3, sb = s & 7;
        const u8* blk = row + 144 * b;
        const u32 w0 = *(const u32*)(blk + 16 + 32 * (sb >> 1) + 8 * p);
        const u32 w1 = *(const u32*)(blk + 16 + 32 * (sb >> 1) + 8 * p + 4);
        const int shift = (sb & 1) ? 4 : 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 w = i < 2 ? w0 : w1;
            const int sh = 16 * (i & 1);
            const int q0 = (int)((w >> (sh + shift)) & 15);
            const int q1 = (int)((w >> (sh + 8 + shift)) & 15);
            o[i] = pack16(bf16_int(q0), bf16_int(q1));
        }
        if (p == 0) {
            const u8* sx = blk + 4;
            int scv, m;
            if (sb < 4) {
                scv = sx[sb] & 63;
                m = sx[sb + 4] & 63;
            } else {
                scv = (sx[sb + 4] & 0xf) | ((sx[sb - 4] >> 6) << 4);
                m = (sx[sb + 4] >> 4) | ((sx[sb] >> 6) << 4);
            }
            const float d = load_f16(blk), dmin = load_f16(blk + 2);
            sc[0] = sc[1] = d * (float)scv;
            mn[0] = mn[1] = dmin * (float)m;
        }
    }
};

struct MmaF16 {
    static constexpr bool F16 = true, MINS = false;
    static constexpr int BLK = 1;
    static __device__ __forceinline__ void load(const u8* row, int B, int s, int p, u32* o,
                                                float* sc, float* mn, const u64* grid) {
        const uint4 v = *(const uint4*)(row + 2 * (32 * s + 8 * p));
        o[0] = v.x;
        o[1] = v.y;
        o[2] = v.z;
        o[3] = v.w;
        if (p == 0) {
            sc[0] = 1.0f;
            sc[1] = 1.0f;
        }
    }
};

// x -> three 16-bit parts (bf16 or f16 bits) with x = a + b + c.
template <bool F16>
__device__ __forceinline__ void split3(float x, u32& a, u32& b, u32& c) {
    if (F16) {
        a = f2h(x);
        const float r = x - h2f((u16)a);
        b = f2h(r);
        c = f2h(r - h2f((u16)b));
    } else {
        a = bf16_bits(x);
        const float r = x - bf16_value(a);
        b = bf16_bits(r);
        c = bf16_bits(r - bf16_value(b));
    }
}

template <bool F16>
__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                         u32 b1) {
    if (F16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

template <class Fmt>
__device__ __forceinline__ void gemm_mma_impl(const GemmJob& J) {
    __shared__ __align__(16) u16 wq[MT_M * MT_LD];
    __shared__ __align__(16) u16 xp[3][MT_N * MT_LD];
    __shared__ float wsc[MT_M][2], wmn[MT_M][2];
    __shared__ float xsum[MT_N][2];
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
    }
    if (tid == 0) s_len = len;
    sgrid[tid] = ds4_iq2xxs_grid[tid];
    const u8* base = J.w + (u64)mat * J.mat_bytes;
    const int B = J.row_len / Fmt::BLK;
    const int warp = tid / DS4_WARP, lane = tid % DS4_WARP;
    const int wr = warp >> 1, wc = warp & 1;  // 4 x 2 warps
    const int g = lane >> 2, t4 = lane & 3;
    float acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int b = 0; b < 4; b++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[a][b][c] = 0.0f;
    __syncthreads();

    const int n_slabs = J.row_len / 32;
    for (int s = 0; s < n_slabs; s++) {
        // Weights: 128 rows x 4 parts, two per thread.
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int task = tid + 256 * q;
            const int r = task >> 2, p = task & 3;
            const int rr = min(row0 + r, J.n_rows - 1);
            u32 o[4];
            Fmt::load(base + (u64)rr * J.row_bytes, B, s, p, o, wsc[r], wmn[r], sgrid);
            *(uint4*)(wq + r * MT_LD + 8 * p) = make_uint4(o[0], o[1], o[2], o[3]);
        }
        // Activations: 64 items x 4 parts of 8, one per thread, split in three.
        {
            const int it = tid >> 2, p = tid & 3;
            float v[8];
            if (it < s_len) {
                const float* xs = J.x + xoff[it] + 32 * s + 8 * p;
                const float4 a = *(const float4*)xs, b = *(const float4*)(xs + 4);
                v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
                v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) v[i] = 0.0f;
            }
            u32 h[8], m[8], l[8];
#pragma unroll
            for (int i = 0; i < 8; i++) split3<Fmt::F16>(v[i], h[i], m[i], l[i]);
            *(uint4*)(xp[0] + it * MT_LD + 8 * p) =
                make_uint4(pack16(h[0], h[1]), pack16(h[2], h[3]), pack16(h[4], h[5]),
                           pack16(h[6], h[7]));
            *(uint4*)(xp[1] + it * MT_LD + 8 * p) =
                make_uint4(pack16(m[0], m[1]), pack16(m[2], m[3]), pack16(m[4], m[5]),
                           pack16(m[6], m[7]));
            *(uint4*)(xp[2] + it * MT_LD + 8 * p) =
                make_uint4(pack16(l[0], l[1]), pack16(l[2], l[3]), pack16(l[4], l[5]),
                           pack16(l[6], l[7]));
            if (Fmt::MINS) {
                float sum = v[0];
#pragma unroll
                for (int i = 1; i < 8; i++) sum += v[i];
                sum += __shfl_xor_sync(DS4_FULL_MASK, sum, 1);
                if ((p & 1) == 0) xsum[it][p >> 1] = sum;
            }
        }
        __syncthreads();
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int kb = 16 * h + 2 * t4;
            u32 bf[3][4][2];
#pragma unroll
            for (int sp = 0; sp < 3; sp++)
#pragma unroll
                for (int nb = 0; nb < 4; nb++) {
                    const u16* xr = xp[sp] + (wc * 32 + nb * 8 + g) * MT_LD;
                    bf[sp][nb][0] = *(const u32*)(xr + kb);
                    bf[sp][nb][1] = *(const u32*)(xr + kb + 8);
                }
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                const int rb = wr * 32 + mi * 16;
                const u16* w0 = wq + (rb + g) * MT_LD;
                const u16* w8 = wq + (rb + g + 8) * MT_LD;
                const u32 a0 = *(const u32*)(w0 + kb), a1 = *(const u32*)(w8 + kb);
                const u32 a2 = *(const u32*)(w0 + kb + 8), a3 = *(const u32*)(w8 + kb + 8);
                float tmp[4][4];
#pragma unroll
                for (int nb = 0; nb < 4; nb++)
#pragma unroll
                    for (int c = 0; c < 4; c++) tmp[nb][c] = 0.0f;
#pragma unroll
                for (int sp = 0; sp < 3; sp++)
#pragma unroll
                    for (int nb = 0; nb < 4; nb++)
                        mma16816<Fmt::F16>(tmp[nb], a0, a1, a2, a3, bf[sp][nb][0],
                                           bf[sp][nb][1]);
                const float s0 = wsc[rb + g][h], s8 = wsc[rb + g + 8][h];
#pragma unroll
                for (int nb = 0; nb < 4; nb++) {
                    if (Fmt::MINS) {
                        const int i0 = wc * 32 + nb * 8 + 2 * t4;
                        const float m0 = wmn[rb + g][h], m8 = wmn[rb + g + 8][h];
                        const float x0 = xsum[i0][h], x1 = xsum[i0 + 1][h];
                        acc[mi][nb][0] += s0 * tmp[nb][0] - m0 * x0;
                        acc[mi][nb][1] += s0 * tmp[nb][1] - m0 * x1;
                        acc[mi][nb][2] += s8 * tmp[nb][2] - m8 * x0;
                        acc[mi][nb][3] += s8 * tmp[nb][3] - m8 * x1;
                    } else {
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
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int nb = 0; nb < 4; nb++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int r = row0 + wr * 32 + mi * 16 + g + (c >= 2 ? 8 : 0);
                const int it = wc * 32 + nb * 8 + 2 * t4 + (c & 1);
                if (r < J.n_rows && it < s_len) J.y[yoff[it] + r] = acc[mi][nb][c];
            }
}

#define DS4_GEMM(NAME, FMT)                                                               \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(const GemmJobs js) { ds4_pdl_enter();       \
        gemm_mma_impl<FMT>(js.j[blockIdx.z]);                                            \
    }

DS4_GEMM(gemm_q8_0, MmaQ8_0)
DS4_GEMM(gemm_iq2_xxs, MmaIQ2XXS)
DS4_GEMM(gemm_q2_k, MmaQ2K)
DS4_GEMM(gemm_q4_k, MmaQ4K)
DS4_GEMM(gemm_f16, MmaF16)

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
