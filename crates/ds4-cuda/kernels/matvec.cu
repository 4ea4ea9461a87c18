// Weight rows (quantised) times f32 activation rows: the decode GEMVs.
//
// Device layout. At upload, rows of Q8_0, Q2_K and IQ2_XXS matrices are
// repacked in place (`repack_*`) so that the quantised values of a row are
// one aligned array and the per-block scales follow it; the row keeps its
// byte size, so every row, matrix and expert offset stays the file's:
//
//   Q8_0    [qs: 32 B per block][d: f16 per block]
//   IQ2_XXS [qs: 64 B per block][d: f16 per block]
//   Q2_K    [qs 64 B + scales 16 B per block][d, dmin: 2 x f16 per block]
//   Q4_K, F16, F32: as in the file.
//
// With a row length that is a multiple of 256 (production widths) every row
// then starts on a 16-byte boundary and the fast kernels read weights with
// 16-byte non-caching loads. The element decoders `deq_*` below read the
// same layout one value at a time (dequantisation, odd widths, fallbacks)
// and perform the same f32 operations as ds4-quant's dequantisers.
//
// One launch runs up to DS4_MAX_JOBS matrix products of one weight format
// (`MatJobs`, passed by value): q_a and kv share one, gate and up another.
// Blocks are 8 warps; a warp owns R rows of one (job, item) and, with
// ksplit > 1, a 1/ksplit share of their chunks (interleaved). Partial sums
// are combined with xor butterflies, then across the ksplit warps in warp
// order: a fixed order, so results are bit-identical run to run.

// ---------------------------------------------------------------------------
// Element decoders (repacked layout; B = blocks per row).

__device__ __forceinline__ float deq_f32(const u8* row, int i, int B) {
    return ((const float*)row)[i];
}

__device__ __forceinline__ float deq_f16(const u8* row, int i, int B) {
    return load_f16(row + 2 * i);
}

__device__ __forceinline__ float deq_q8_0(const u8* row, int i, int B) {
    const float d = load_f16(row + 32 * B + 2 * (i >> 5));
    return d * (float)(signed char)row[i];
}

__device__ __forceinline__ float q2k_value(const u8* qs, const u8* sc, float d, float dmin,
                                           int e) {
    const int h = e >> 7, r = e & 127, j = r >> 5, ii = r & 31;
    const int q = (qs[32 * h + ii] >> (2 * j)) & 3;
    const int s = sc[8 * h + 2 * j + (ii >= 16 ? 1 : 0)];
    const float dl = d * (float)(s & 15);
    const float ml = dmin * (float)(s >> 4);
    // __fmul_rn keeps the product rounded on its own (no FMA contraction),
    // so the decoded value is bit-identical to ds4-quant's.
    return __fmul_rn(dl, (float)q) - ml;
}

__device__ __forceinline__ float deq_q2_k(const u8* row, int i, int B) {
    const int b = i >> 8;
    const u8* blk = row + 80 * b;
    const u8* dd = row + 80 * B + 4 * b;
    return q2k_value(blk, blk + 64, load_f16(dd), load_f16(dd + 2), i & 255);
}

__device__ __forceinline__ float deq_q4_k(const u8* row, int i, int B) {
    const u8* blk = row + (i >> 8) * 144;
    const int e = i & 255;
    const int sb = e >> 5, ii = e & 31;
    const u8* s = blk + 4;
    int sc, m;
    if (sb < 4) {
        sc = s[sb] & 63;
        m = s[sb + 4] & 63;
    } else {
        sc = (s[sb + 4] & 0xf) | ((s[sb - 4] >> 6) << 4);
        m = (s[sb + 4] >> 4) | ((s[sb] >> 6) << 4);
    }
    const u8 byte = blk[16 + 32 * (sb >> 1) + ii];
    const int q = (sb & 1) ? (byte >> 4) : (byte & 0xf);
    const float d = load_f16(blk), dmin = load_f16(blk + 2);
    const float dl = d * (float)sc;
    const float ml = dmin * (float)m;
    return __fmul_rn(dl, (float)q) - ml;
}

__device__ __forceinline__ u32 ksigns_iq2xs(u32 i) { return i | ((__popc(i) & 1) << 7); }

__device__ __forceinline__ float deq_iq2_xxs(const u8* row, int i, int B) {
    const int b = i >> 8, e = i & 255;
    const int g = e >> 5, l = (e & 31) >> 3, k = e & 7;
    const u8* qs = row + 64 * b + 8 * g;
    const u32 a0 = load_u32_a2(qs);
    const u32 a1 = load_u32_a2(qs + 4);
    const float d = load_f16(row + 64 * B + 2 * b);
    const float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
    const u64 grid = ds4_iq2xxs_grid[(a0 >> (8 * l)) & 0xff];
    const u32 signs = ksigns_iq2xs((a1 >> (7 * l)) & 127);
    const float w = db * (float)((grid >> (8 * k)) & 0xff);
    return ((signs >> k) & 1) ? -w : w;
}

// ---------------------------------------------------------------------------
// Repacking (file layout -> device layout), in place, one block per row.

extern "C" __global__ void repack_rows(u8* __restrict__ w, u64 row_bytes, i64 n_rows,
                                       int row_len, int kind) {
    ds4_pdl_enter();
    extern __shared__ u8 src[];
    const int B = row_len >> (kind == 0 ? 5 : 8);
    for (i64 r = blockIdx.x; r < n_rows; r += gridDim.x) {
        u8* row = w + (u64)r * row_bytes;
        for (int i = threadIdx.x; i < (int)row_bytes; i += blockDim.x) src[i] = row[i];
        __syncthreads();
        for (int i = threadIdx.x; i < (int)row_bytes; i += blockDim.x) {
            u8 v;
            if (kind == 0) {  // Q8_0: file block = d(2) qs(32)
                if (i < 32 * B) {
                    v = src[(i >> 5) * 34 + 2 + (i & 31)];
                } else {
                    const int k = i - 32 * B;
                    v = src[(k >> 1) * 34 + (k & 1)];
                }
            } else if (kind == 1) {  // IQ2_XXS: file block = d(2) qs(64)
                if (i < 64 * B) {
                    v = src[(i >> 6) * 66 + 2 + (i & 63)];
                } else {
                    const int k = i - 64 * B;
                    v = src[(k >> 1) * 66 + (k & 1)];
                }
            } else {  // Q2_K: file block = scales(16) qs(64) d(2) dmin(2)
                if (i < 80 * B) {
                    const int b = i / 80, o = i % 80;
                    v = o < 64 ? src[b * 84 + 16 + o] : src[b * 84 + (o - 64)];
                } else {
                    const int k = i - 80 * B;
                    v = src[(k >> 2) * 84 + 80 + (k & 3)];
                }
            }
            row[i] = v;
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------
// Jobs.

#define DS4_MAX_JOBS 4
#define DS4_GEMV_WARPS 8

struct MatJob {
    const u8* w;
    u64 mat_bytes;
    const int* mat_ids;  // per item matrix index (stacked experts), or null
    u64 row_bytes;
    const float* x;
    i64 x_stride;
    float* y;
    i64 y_stride;
    i64 x_grp_stride;  // x moves by this for every x_grp_rows output rows
    const float* add;  // optional: y = sum_j add[(item * add_n + j) * add_stride + row] + dot
    i64 add_stride;
    int n_rows;
    int row_len;
    int x_div;  // item i reads x row i / x_div
    int x_grp_rows;
    int n_items;
    int ksplit;
    int block0;  // first blockIdx.x of this job
    int n_blocks;
    int add_n;
    int pad;
};

struct MatJobs {
    MatJob j[DS4_MAX_JOBS];
    int n;
    int pad;
};

// Weight loads: read once per decode step, so they bypass L1.
__device__ __forceinline__ uint4 ld_stream16(const u8* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

__device__ __forceinline__ uint2 ld_w8(const u8* p) { return __ldg((const uint2*)p); }

__device__ __forceinline__ u32 ld_nc_u32(const u8* p) {
    return __ldg((const unsigned int*)p);
}

__device__ __forceinline__ u16 ld_nc_u16(const u8* p) {
    return __ldg((const unsigned short*)p);
}

// Byte k of t (0..255) as a float, exactly: 2^23 + byte, minus 2^23.
#define DS4_BYTE_F(t, k) (__int_as_float(__byte_perm((t), 0x4B000000u, 0x7440 + (k))) - 8388608.0f)

// Signed byte k of q as a float, exactly: bias the byte by 128 first.
#define DS4_I8_F(t, k) (__int_as_float(__byte_perm((t), 0x4B000000u, 0x7440 + (k))) - 8388736.0f)

// sum_k int8(q.byte k) * x_k, k = 0..3, in order.
__device__ __forceinline__ float dot4_i8(u32 q, float4 x, float s) {
    const u32 t = q ^ 0x80808080u;  // int8 + 128, as unsigned bytes
    s = fmaf(DS4_I8_F(t, 0), x.x, s);
    s = fmaf(DS4_I8_F(t, 1), x.y, s);
    s = fmaf(DS4_I8_F(t, 2), x.z, s);
    s = fmaf(DS4_I8_F(t, 3), x.w, s);
    return s;
}

__device__ __forceinline__ float4 ldx4(const float* p) { return *(const float4*)p; }

// Where x[i] lives: the row as given (S = false), or the block's staged copy
// in shared memory (S = true), padded by 4 floats per 32 so that lanes 32 or
// 16 values apart read different banks. Offsets inside one 32-value run stay
// contiguous, so callers add +4, +8, +12 to the returned pointer.
template <bool S>
__device__ __forceinline__ const float* xat(const float* x, int i) {
    return S ? x + i + ((i >> 5) << 2) : x + i;
}
#define DS4_XS_MAX 4096
#define DS4_XS_FLOATS (DS4_XS_MAX + DS4_XS_MAX / 8)

// ---------------------------------------------------------------------------
// Formats. dot<R>(rows, x, row_len, B, c0, cstep, acc): lane-partial sums of
// R rows over the chunks c0, c0 + cstep, ... of a row.

// Any format, one element per step (also the fallback of the fast ones).
// Rows are r0 + min(r, rmax) * rb: consecutive, the tail clamped.
#define DS4_ROW(r) (r0 + (u64)min((r), rmax) * rb)
#define DS4_GENERIC_FMT(NAME, DEQ, BLKS)                                                  \
    struct NAME {                                                                         \
        static constexpr int BLK = BLKS;                                                  \
        template <int R, bool S>                                                          \
        static __device__ __forceinline__ void dot(const u8* r0, u64 rb, int rmax,        \
                                                   const float* __restrict__ x,           \
                                                   int row_len, int B, int c0, int cstep, \
                                                   float* acc, const u64* grid) {         \
            for (int i = c0; i < row_len; i += cstep) {                                   \
                const float xv = x[i];                                                    \
                _Pragma("unroll") for (int r = 0; r < R; r++) acc[r] +=                   \
                    DEQ(DS4_ROW(r), i, B) * xv;                                           \
            }                                                                             \
        }                                                                                 \
    };

DS4_GENERIC_FMT(GenF32, deq_f32, 1)
DS4_GENERIC_FMT(GenF16, deq_f16, 1)
DS4_GENERIC_FMT(GenQ8_0, deq_q8_0, 32)
DS4_GENERIC_FMT(GenQ2K, deq_q2_k, 256)
DS4_GENERIC_FMT(GenQ4K, deq_q4_k, 256)
DS4_GENERIC_FMT(GenIQ2XXS, deq_iq2_xxs, 256)

// Q8_0: a chunk is 16 values (half a block). Two chunks per step, all
// loads issued before the arithmetic.
struct FastQ8_0 {
    static constexpr int BLK = 32;
    template <int R, bool S>
    static __device__ __forceinline__ void one(const u8* r0, u64 rb, int rmax,
                                               const float* __restrict__ x, int B, int c,
                                               float* acc) {
        const float* xc = xat<S>(x, 16 * c);
        const float4 x0 = ldx4(xc), x1 = ldx4(xc + 4), x2 = ldx4(xc + 8), x3 = ldx4(xc + 12);
#pragma unroll
        for (int r = 0; r < R; r++) {
            const uint4 q = ld_stream16(DS4_ROW(r) + 16 * c);
            const float d = h2f(ld_nc_u16(DS4_ROW(r) + 32 * B + 2 * (c >> 1)));
            float s = dot4_i8(q.x, x0, 0.0f);
            s = dot4_i8(q.y, x1, s);
            s = dot4_i8(q.z, x2, s);
            s = dot4_i8(q.w, x3, s);
            acc[r] = fmaf(d, s, acc[r]);
        }
    }
    template <int R, bool S>
    static __device__ __forceinline__ void dot(const u8* r0, u64 rb, int rmax,
                                               const float* __restrict__ x, int row_len, int B,
                                               int c0, int cstep, float* acc, const u64* grid) {
        const int n = row_len >> 4;
        int c = c0;
        for (; c + cstep < n; c += 2 * cstep) {
            uint4 qa[R], qb[R];
            float da[R], db[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                qa[r] = ld_stream16(DS4_ROW(r) + 16 * c);
                qb[r] = ld_stream16(DS4_ROW(r) + 16 * (c + cstep));
                da[r] = h2f(ld_nc_u16(DS4_ROW(r) + 32 * B + 2 * (c >> 1)));
                db[r] = h2f(ld_nc_u16(DS4_ROW(r) + 32 * B + 2 * ((c + cstep) >> 1)));
            }
            const float* xa = xat<S>(x, 16 * c);
            const float* xb = xat<S>(x, 16 * (c + cstep));
            const float4 a0 = ldx4(xa), a1 = ldx4(xa + 4), a2 = ldx4(xa + 8), a3 = ldx4(xa + 12);
            const float4 b0 = ldx4(xb), b1 = ldx4(xb + 4), b2 = ldx4(xb + 8), b3 = ldx4(xb + 12);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float s = dot4_i8(qa[r].x, a0, 0.0f);
                s = dot4_i8(qa[r].y, a1, s);
                s = dot4_i8(qa[r].z, a2, s);
                s = dot4_i8(qa[r].w, a3, s);
                acc[r] = fmaf(da[r], s, acc[r]);
                float t = dot4_i8(qb[r].x, b0, 0.0f);
                t = dot4_i8(qb[r].y, b1, t);
                t = dot4_i8(qb[r].z, b2, t);
                t = dot4_i8(qb[r].w, b3, t);
                acc[r] = fmaf(db[r], t, acc[r]);
            }
        }
        if (c < n) one<R, S>(r0, rb, rmax, x, B, c, acc);
    }
};

// F16: a chunk is 8 values.
struct FastF16 {
    static constexpr int BLK = 1, CHUNK = 8;
    // Chunk c (8 values) of R rows: its weights, then their products.
    template <int R>
    static __device__ __forceinline__ void load(const u8* r0, u64 rb, int rmax, int c,
                                                uint4* q) {
#pragma unroll
        for (int r = 0; r < R; r++) q[r] = ld_stream16(DS4_ROW(r) + 16 * c);
    }
    template <int R>
    static __device__ __forceinline__ void add(const uint4* q, const float* __restrict__ x, int c,
                                               float* acc) {
        const float4 x0 = ldx4(x + 8 * c), x1 = ldx4(x + 8 * c + 4);
#pragma unroll
        for (int r = 0; r < R; r++) {
            float s = acc[r];
            s = fmaf(h2f((u16)(q[r].x & 0xffff)), x0.x, s);
            s = fmaf(h2f((u16)(q[r].x >> 16)), x0.y, s);
            s = fmaf(h2f((u16)(q[r].y & 0xffff)), x0.z, s);
            s = fmaf(h2f((u16)(q[r].y >> 16)), x0.w, s);
            s = fmaf(h2f((u16)(q[r].z & 0xffff)), x1.x, s);
            s = fmaf(h2f((u16)(q[r].z >> 16)), x1.y, s);
            s = fmaf(h2f((u16)(q[r].w & 0xffff)), x1.z, s);
            s = fmaf(h2f((u16)(q[r].w >> 16)), x1.w, s);
            acc[r] = s;
        }
    }
    // With `have_first`, chunk c0's weights are in `first` already
    // (gemv_impl's EARLY path); the sums are the same either way.
    template <int R>
    static __device__ __forceinline__ void dot_from(const u8* r0, u64 rb, int rmax,
                                                    const float* __restrict__ x, int row_len,
                                                    int c0, int cstep, float* acc,
                                                    const uint4 (&first)[R], bool have_first) {
        const int n = row_len >> 3;
        int c = c0;
        if (have_first && c < n) {
            add<R>(first, x, c, acc);
            c += cstep;
        }
#pragma unroll 2
        for (; c < n; c += cstep) {
            uint4 q[R];
            load<R>(r0, rb, rmax, c, q);
            add<R>(q, x, c, acc);
        }
    }
    template <int R, bool S>
    static __device__ __forceinline__ void dot(const u8* r0, u64 rb, int rmax,
                                               const float* __restrict__ x, int row_len, int B,
                                               int c0, int cstep, float* acc, const u64* grid) {
        const uint4 none[R] = {};
        dot_from<R>(r0, rb, rmax, x, row_len, c0, cstep, acc, none, false);
    }
};

// IQ2_XXS group of 32 values (8 bytes: a0 = 4 grid indices, a1 = 4 sign
// indices + scale): sum over the group of w * x, scaled once by db. The
// grid rows come from shared memory (2 KB, one 8-byte load per 8 values).
__device__ __forceinline__ float iq2_group(u32 a0, u32 a1, float d, const float* __restrict__ x,
                                           const u64* grid) {
    const float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
    float s = 0.0f;
#pragma unroll
    for (int l = 0; l < 4; l++) {
        const u64 g = grid[(a0 >> (8 * l)) & 0xff];
        const u32 sg = ksigns_iq2xs((a1 >> (7 * l)) & 127);
        const u32 lo = (u32)g, hi = (u32)(g >> 32);
        const float4 xa = ldx4(x + 8 * l), xb = ldx4(x + 8 * l + 4);
        s = fmaf((sg & 1) ? -DS4_BYTE_F(lo, 0) : DS4_BYTE_F(lo, 0), xa.x, s);
        s = fmaf((sg & 2) ? -DS4_BYTE_F(lo, 1) : DS4_BYTE_F(lo, 1), xa.y, s);
        s = fmaf((sg & 4) ? -DS4_BYTE_F(lo, 2) : DS4_BYTE_F(lo, 2), xa.z, s);
        s = fmaf((sg & 8) ? -DS4_BYTE_F(lo, 3) : DS4_BYTE_F(lo, 3), xa.w, s);
        s = fmaf((sg & 16) ? -DS4_BYTE_F(hi, 0) : DS4_BYTE_F(hi, 0), xb.x, s);
        s = fmaf((sg & 32) ? -DS4_BYTE_F(hi, 1) : DS4_BYTE_F(hi, 1), xb.y, s);
        s = fmaf((sg & 64) ? -DS4_BYTE_F(hi, 2) : DS4_BYTE_F(hi, 2), xb.z, s);
        s = fmaf((sg & 128) ? -DS4_BYTE_F(hi, 3) : DS4_BYTE_F(hi, 3), xb.w, s);
    }
    return db * s;
}

// IQ2_XXS: a chunk is one group, 8 bytes = 32 values.
struct FastIQ2XXS {
    static constexpr int BLK = 256;
    template <int R, bool S>
    static __device__ __forceinline__ void dot(const u8* r0, u64 rb, int rmax,
                                               const float* __restrict__ x, int row_len, int B,
                                               int c0, int cstep, float* acc, const u64* grid) {
        const int n = row_len >> 5;
        int c = c0;
        // Four chunks per step with all their loads issued first (memory
        // parallelism); the sums still go into acc[r] in chunk order.
        for (; c + 3 * cstep < n; c += 4 * cstep) {
            uint2 q[4][R];
            float d[4][R];
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const int cu = c + u * cstep;
                    q[u][r] = ld_w8(DS4_ROW(r) + 8 * cu);
                    d[u][r] = h2f(ld_nc_u16(DS4_ROW(r) + 64 * B + 2 * (cu >> 3)));
                }
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int r = 0; r < R; r++)
                    acc[r] += iq2_group(q[u][r].x, q[u][r].y, d[u][r],
                                        xat<S>(x, 32 * (c + u * cstep)), grid);
            }
        }
        for (; c < n; c += cstep) {
            uint2 q[R];
            float d[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                q[r] = ld_w8(DS4_ROW(r) + 8 * c);
                d[r] = h2f(ld_nc_u16(DS4_ROW(r) + 64 * B + 2 * (c >> 3)));
            }
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] += iq2_group(q[r].x, q[r].y, d[r], xat<S>(x, 32 * c), grid);
        }
    }
};

// Q2_K: a chunk is 16 bytes of qs = 64 values (4 runs of 16, 32 apart).
struct FastQ2K {
    static constexpr int BLK = 256;
    template <int R, bool S>
    static __device__ __forceinline__ void dot(const u8* r0, u64 rb, int rmax,
                                               const float* __restrict__ x, int row_len, int B,
                                               int c0, int cstep, float* acc, const u64* grid) {
        const int n = row_len >> 6;
        for (int c = c0; c < n; c += cstep) {
            const int b = c >> 2, k = c & 3, h = k >> 1, hf = k & 1;
            uint4 q[R];
            uint2 sc[R];
            u32 dd[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                const u8* blk = DS4_ROW(r) + 80 * b;
                q[r] = ld_stream16(blk + 16 * k);
                sc[r] = ld_w8(blk + 64 + 8 * h);
                dd[r] = ld_nc_u32(DS4_ROW(r) + 80 * B + 4 * b);
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float* xj = xat<S>(x, 256 * b + 128 * h + 32 * j + 16 * hf);
                const float4 x0 = ldx4(xj), x1 = ldx4(xj + 4), x2 = ldx4(xj + 8),
                             x3 = ldx4(xj + 12);
                float sx = x0.x + x0.y + x0.z + x0.w;
                sx += x1.x + x1.y + x1.z + x1.w;
                sx += x2.x + x2.y + x2.z + x2.w;
                sx += x3.x + x3.y + x3.z + x3.w;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    // scales byte 8h + 2j + hf: byte (2j + hf) of the 8 loaded.
                    const u32 sw = j < 2 ? sc[r].x : sc[r].y;
                    const u32 s = (sw >> (8 * (2 * (j & 1) + hf))) & 0xff;
                    const float dl = h2f((u16)(dd[r] & 0xffff)) * (float)(s & 15);
                    const float ml = h2f((u16)(dd[r] >> 16)) * (float)(s >> 4);
                    const u32 w0 = (q[r].x >> (2 * j)) & 0x03030303u;
                    const u32 w1 = (q[r].y >> (2 * j)) & 0x03030303u;
                    const u32 w2 = (q[r].z >> (2 * j)) & 0x03030303u;
                    const u32 w3 = (q[r].w >> (2 * j)) & 0x03030303u;
                    float sq = DS4_BYTE_F(w0, 0) * x0.x;
                    sq = fmaf(DS4_BYTE_F(w0, 1), x0.y, sq);
                    sq = fmaf(DS4_BYTE_F(w0, 2), x0.z, sq);
                    sq = fmaf(DS4_BYTE_F(w0, 3), x0.w, sq);
                    sq = fmaf(DS4_BYTE_F(w1, 0), x1.x, sq);
                    sq = fmaf(DS4_BYTE_F(w1, 1), x1.y, sq);
                    sq = fmaf(DS4_BYTE_F(w1, 2), x1.z, sq);
                    sq = fmaf(DS4_BYTE_F(w1, 3), x1.w, sq);
                    sq = fmaf(DS4_BYTE_F(w2, 0), x2.x, sq);
                    sq = fmaf(DS4_BYTE_F(w2, 1), x2.y, sq);
                    sq = fmaf(DS4_BYTE_F(w2, 2), x2.z, sq);
                    sq = fmaf(DS4_BYTE_F(w2, 3), x2.w, sq);
                    sq = fmaf(DS4_BYTE_F(w3, 0), x3.x, sq);
                    sq = fmaf(DS4_BYTE_F(w3, 1), x3.y, sq);
                    sq = fmaf(DS4_BYTE_F(w3, 2), x3.z, sq);
                    sq = fmaf(DS4_BYTE_F(w3, 3), x3.w, sq);
                    acc[r] = fmaf(dl, sq, acc[r]) - ml * sx;
                }
            }
        }
    }
};

// ---------------------------------------------------------------------------
// The GEMV driver.

__device__ __forceinline__ int gemv_job(const MatJobs& js) {
    int k = 0;
    while (k + 1 < js.n && (int)blockIdx.x >= js.j[k + 1].block0) k++;
    return k;
}

// The sum of the `add` rows (in order) plus the product, or the product.
__device__ __forceinline__ float gemv_epilogue(const MatJob& J, int item, int row, float v) {
    if (!J.add) return v;
    float t = 0.0f;
    for (int j = 0; j < J.add_n; j++) t += J.add[((i64)item * J.add_n + j) * J.add_stride + row];
    return t + v;
}

// Where the R rows of row batch `batch` start (row0; clamped to the
// matrix: first, its address r0, and rmax rows after it).
struct GemvRows {
    const u8* r0;
    int row0, first, rmax;
};

__device__ __forceinline__ GemvRows gemv_rows(const MatJob& J, int item, int batch, int R) {
    GemvRows out;
    out.row0 = batch * R;
    const u64 m = J.mat_ids ? (u64)J.mat_ids[item] : 0;
    out.first = min(out.row0, J.n_rows - 1);
    out.r0 = J.w + m * J.mat_bytes + (u64)out.first * J.row_bytes;
    out.rmax = J.n_rows - 1 - out.first;
    return out;
}

// Lane partial sums of R rows -> y: xor butterflies, then the ksplit warps
// of the rows in warp order (through `part`).
template <int R>
__device__ __forceinline__ void gemv_store(const MatJob& J, int item, int row0, float* acc,
                                           int s, int warp, int lane,
                                           float (*part)[R]) {
    const int ks = J.ksplit;
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
    float* y = J.y + (i64)item * J.y_stride;
    if (ks == 1) {
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < R; r++)
                if (row0 + r < J.n_rows) y[row0 + r] = gemv_epilogue(J, item, row0 + r, acc[r]);
        }
        return;
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; r++) part[warp][r] = acc[r];
    }
    __syncthreads();
    if (s == 0 && lane == 0) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            float t = part[warp][r];
            for (int q = 1; q < ks; q++) t += part[warp + q][r];
            if (row0 + r < J.n_rows) y[row0 + r] = gemv_epilogue(J, item, row0 + r, t);
        }
    }
}

// With STAGE, a block whose warps all read the same x row (no x groups,
// row_len <= DS4_XS_MAX: a block-uniform test) first copies that row into
// `xs` (coalesced) and the lanes read it from there; the arithmetic and its
// order are the same either way, so staged and unstaged results are
// bit-identical.
// With EARLY (formats with load/add chunks: FastF16) the kernel has not
// waited for its predecessor yet: unless the rows are picked by a
// device-side index, each warp loads its first chunk's weights (immutable
// while a model is open) before the dependent-launch wait, so they overlap
// the previous kernel's tail.
template <class Fmt, int R, bool STAGE, bool EARLY = false>
__device__ __forceinline__ void gemv_impl(const MatJobs& js, const u64* grid, float* xs) {
    __shared__ float part[DS4_GEMV_WARPS][R];
    const MatJob& J = js.j[gemv_job(js)];
    const int item = blockIdx.y;
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int ks = J.ksplit, s = warp % ks;
    const int batch = ((int)blockIdx.x - J.block0) * (DS4_GEMV_WARPS / ks) + warp / ks;
    const int c0 = lane + DS4_WARP * s, cstep = DS4_WARP * ks;
    uint4 first[R];
    const bool early = EARLY && J.mat_ids == nullptr && item < J.n_items;
    if constexpr (EARLY) {
        if (early && c0 < J.row_len / Fmt::CHUNK) {
            const GemvRows g0 = gemv_rows(J, item, batch, R);
            Fmt::template load<R>(g0.r0, J.row_bytes, g0.rmax, c0, first);
        }
        ds4_pdl_enter();
    }
    if (item >= J.n_items) return;  // uniform over the block
    const GemvRows g = gemv_rows(J, item, batch, R);
    const int grp = g.first / J.x_grp_rows;
    const float* xr = J.x + (i64)(item / J.x_div) * J.x_stride + (i64)grp * J.x_grp_stride;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    if (STAGE && J.x_grp_rows >= J.n_rows && J.row_len <= DS4_XS_MAX) {
        for (int i = 4 * (int)threadIdx.x; i < J.row_len; i += 4 * (int)blockDim.x)
            *(float4*)(xs + i + ((i >> 5) << 2)) = ldx4(xr + i);
        __syncthreads();
        Fmt::template dot<R, true>(g.r0, J.row_bytes, g.rmax, xs, J.row_len,
                                   J.row_len / Fmt::BLK, c0, cstep, acc, grid);
    } else if constexpr (EARLY) {
        Fmt::template dot_from<R>(g.r0, J.row_bytes, g.rmax, xr, J.row_len, c0, cstep, acc,
                                  first, early);
    } else {
        Fmt::template dot<R, false>(g.r0, J.row_bytes, g.rmax, xr, J.row_len,
                                    J.row_len / Fmt::BLK, c0, cstep, acc, grid);
    }
    gemv_store<R>(J, item, g.row0, acc, s, warp, lane, part);
}

#define DS4_GEMV(NAME, FMT, R)                                                            \
    extern "C" __global__ void __launch_bounds__(256) NAME(const MatJobs js) { ds4_pdl_enter();           \
        gemv_impl<FMT, R, false>(js, nullptr, nullptr);                                   \
    }

// The x-staged variants (see gemv_impl).
#define DS4_GEMV_XS(NAME, FMT, R)                                                         \
    extern "C" __global__ void __launch_bounds__(256) NAME(const MatJobs js) { ds4_pdl_enter();           \
        __shared__ __align__(16) float xs[DS4_XS_FLOATS];                                 \
        gemv_impl<FMT, R, true>(js, nullptr, xs);                                         \
    }

DS4_GEMV(gemv_any_f32, GenF32, 1)
DS4_GEMV(gemv_any_f16, GenF16, 1)
DS4_GEMV(gemv_any_q8_0, GenQ8_0, 1)
DS4_GEMV(gemv_any_q2_k, GenQ2K, 1)
DS4_GEMV(gemv_any_q4_k, GenQ4K, 1)
DS4_GEMV(gemv_any_iq2_xxs, GenIQ2XXS, 1)
DS4_GEMV(gemv_q8_0, FastQ8_0, 2)
DS4_GEMV(gemv_q2_k, FastQ2K, 4)
DS4_GEMV_XS(gemv_q8_0_xs, FastQ8_0, 2)
DS4_GEMV_XS(gemv_q2_k_xs, FastQ2K, 4)

extern "C" __global__ void __launch_bounds__(256) gemv_f16(const MatJobs js) {
    gemv_impl<FastF16, 1, false, true>(js, nullptr, nullptr);
}

extern "C" __global__ void __launch_bounds__(256, 3) gemv_iq2_xxs(const MatJobs js) {
    ds4_pdl_enter();
    __shared__ u64 grid[256];
    grid[threadIdx.x] = ds4_iq2xxs_grid[threadIdx.x];
    __syncthreads();
    gemv_impl<FastIQ2XXS, 2, false>(js, grid, nullptr);
}

extern "C" __global__ void __launch_bounds__(256, 3) gemv_iq2_xxs_xs(const MatJobs js) {
    ds4_pdl_enter();
    __shared__ u64 grid[256];
    __shared__ __align__(16) float xs[DS4_XS_FLOATS];
    grid[threadIdx.x] = ds4_iq2xxs_grid[threadIdx.x];
    __syncthreads();
    gemv_impl<FastIQ2XXS, 2, true>(js, grid, xs);
}

// ---------------------------------------------------------------------------
// Q8_0 with the activation slice in registers ("x-stationary").
//
// The plain kernels read 16 x values (64 bytes, through L1) for every 16
// weights (17 bytes) of R rows, so L1 -- not DRAM -- is their limit (H200,
// Nsight, docs/bench r20: L1/TEX throughput 73-95 %, DRAM 44-67 %). Here a
// warp owns a 1024-value slice of k (row_len / 1024 = 1, 2, 4 or 8 warps, a
// "row group", share a row)
// and keeps it in registers: lane l holds the 16-value chunks l and l + 32
// of the slice. The row group then walks a contiguous run of rows, R at a
// time, reading only weights. A row's sum: per lane chunk l then chunk
// l + 32 (each in order), xor butterfly over the lanes, then the slices in
// order through shared memory -- fixed, so runs are bit-identical (not the
// same bits as gemv_q8_0, whose split of k differs).

// Weights never change while a model is open, so unless the rows are picked
// by a device-side index (mat_ids, written by the routing kernel) the first
// batch's weight loads are issued before the dependent-launch wait: they
// overlap the previous kernel's tail (its last blocks, or a small kernel
// that leaves room on the SM). x, mat_ids and y are touched only after it.
template <int R>
__device__ __forceinline__ void q8_0_xr_load(const u8* w, const MatJob& J, int row0, int B,
                                             int c0, int c1, uint4* qa, uint4* qb, float* da,
                                             float* db) {
#pragma unroll
    for (int r = 0; r < R; r++) {
        const u8* row = w + (u64)min(row0 + r, J.n_rows - 1) * J.row_bytes;
        qa[r] = ld_stream16(row + 16 * c0);
        qb[r] = ld_stream16(row + 16 * c1);
        da[r] = h2f(ld_nc_u16(row + 32 * B + 2 * (c0 >> 1)));
        db[r] = h2f(ld_nc_u16(row + 32 * B + 2 * (c1 >> 1)));
    }
}

template <int R>
__device__ __forceinline__ void gemv_q8_0_xr_impl(const MatJobs& js) {
    __shared__ float part[2][DS4_GEMV_WARPS][R];
    const MatJob& J = js.j[gemv_job(js)];
    const int item = blockIdx.y;
    const bool early = J.mat_ids == nullptr && item < J.n_items;
    if (!early) ds4_pdl_wait();
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int ks = J.ksplit;  // = row_len / 1024
    const int rgs = DS4_GEMV_WARPS / ks, rg = warp / ks, s = warp % ks;
    const int batches = (J.n_rows + R - 1) / R;
    const int n_rg = J.n_blocks * rgs;
    const int per = (batches + n_rg - 1) / n_rg;
    const int b0 = (((int)blockIdx.x - J.block0) * rgs + rg) * per;
    const int b1 = min(batches, b0 + per);
    const int B = J.row_len >> 5;
    const int c0 = 64 * s + lane, c1 = c0 + 32;  // this lane's chunks
    uint4 qa[R], qb[R];
    float da[R], db[R];
    if (early) {
        if (b0 < b1) q8_0_xr_load<R>(J.w, J, b0 * R, B, c0, c1, qa, qb, da, db);
        ds4_pdl_wait();
    }
    ds4_pdl_launch_dependents();
    if (item >= J.n_items) return;  // uniform over the block
    const u64 m = J.mat_ids ? (u64)J.mat_ids[item] : 0;
    const u8* w = J.w + m * J.mat_bytes;
    if (!early && b0 < b1) q8_0_xr_load<R>(w, J, b0 * R, B, c0, c1, qa, qb, da, db);
    const float* xi = J.x + (i64)(item / J.x_div) * J.x_stride;
    float* y = J.y + (i64)item * J.y_stride;
    float4 xa[4], xb[4];
    int xg = -1;  // x group held in xa, xb
    int buf = 0;
    for (int b = b0; b < b1; b++) {
        const int row0 = b * R;
        const int grp = row0 / J.x_grp_rows;  // R divides x_grp_rows (host)
        if (grp != xg) {
            const float* xr = xi + (i64)grp * J.x_grp_stride;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                xa[k] = ldx4(xr + 16 * c0 + 4 * k);
                xb[k] = ldx4(xr + 16 * c1 + 4 * k);
            }
            xg = grp;
        }
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            float t = dot4_i8(qa[r].x, xa[0], 0.0f);
            t = dot4_i8(qa[r].y, xa[1], t);
            t = dot4_i8(qa[r].z, xa[2], t);
            t = dot4_i8(qa[r].w, xa[3], t);
            float u = dot4_i8(qb[r].x, xb[0], 0.0f);
            u = dot4_i8(qb[r].y, xb[1], u);
            u = dot4_i8(qb[r].z, xb[2], u);
            u = dot4_i8(qb[r].w, xb[3], u);
            acc[r] = fmaf(db[r], u, da[r] * t);
        }
        // The next batch's weights are in flight during the sums and stores.
        if (b + 1 < b1) q8_0_xr_load<R>(w, J, row0 + R, B, c0, c1, qa, qb, da, db);
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
        if (ks == 1) {
            if (lane == 0) {
#pragma unroll
                for (int r = 0; r < R; r++)
                    if (row0 + r < J.n_rows) y[row0 + r] = gemv_epilogue(J, item, row0 + r, acc[r]);
            }
            continue;
        }
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < R; r++) part[buf][warp][r] = acc[r];
        }
        // The row group's warps only (named barrier 1 + rg); part[] is
        // double-buffered, so the next batch's writes cannot meet this
        // batch's reads.
        asm volatile("bar.sync %0, %1;" ::"r"(1 + rg), "r"(ks * DS4_WARP) : "memory");
        if (s == 0 && lane < R && row0 + lane < J.n_rows) {
            float t = part[buf][warp][lane];
            for (int q = 1; q < ks; q++) t += part[buf][warp + q][lane];
            y[row0 + lane] = gemv_epilogue(J, item, row0 + lane, t);
        }
        buf ^= 1;
    }
}

// Four rows per batch: on an H200 (docs/bench r21) 2 rows per batch was
// slower than the plain kernel and 4 faster, at 2 blocks of <= 128 registers
// per SM (the bound keeps the early loads of r62 from costing occupancy).
extern "C" __global__ void __launch_bounds__(256, 2) gemv_q8_0_xr(const MatJobs js) {
    gemv_q8_0_xr_impl<4>(js);
}

// Dequantises rows [0, n_rows) of a matrix into f32 (tests and small tensors).
#define DS4_DEQUANT(NAME, DEQ, BLK)                                                       \
    extern "C" __global__ void NAME(const u8* __restrict__ w, u64 row_bytes, int n_rows,  \
                                    int row_len, float* __restrict__ out) { ds4_pdl_enter();               \
        const i64 n = (i64)n_rows * row_len;                                              \
        const int B = row_len / BLK;                                                      \
        for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n;                   \
             t += (i64)gridDim.x * blockDim.x) {                                          \
            const int r = (int)(t / row_len), i = (int)(t % row_len);                    \
            out[t] = DEQ(w + (u64)r * row_bytes, i, B);                                   \
        }                                                                                 \
    }

DS4_DEQUANT(dequant_f32, deq_f32, 1)
DS4_DEQUANT(dequant_f16, deq_f16, 1)
DS4_DEQUANT(dequant_q8_0, deq_q8_0, 32)
DS4_DEQUANT(dequant_q2_k, deq_q2_k, 256)
DS4_DEQUANT(dequant_q4_k, deq_q4_k, 256)
DS4_DEQUANT(dequant_iq2_xxs, deq_iq2_xxs, 256)
