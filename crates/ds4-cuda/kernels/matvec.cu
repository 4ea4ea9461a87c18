// Weight rows (in their GGUF block format) times f32 activation rows.
//
// One warp per (output row, item). An item is one activation row; with
// `mat_ids` it also picks which matrix of a stacked 3-D tensor to use (the
// routed experts), so a whole batch of expert products is one launch and the
// routing never leaves the GPU. Each lane dequantises the elements
// lane, lane + 32, ... in registers straight from the block bytes, multiplies
// them into its own f32 accumulator, and the warp sums the 32 partials with
// a xor butterfly: a fixed order, hence bit-identical results every run.
//
// Element decoders below follow MODEL.md section 6 and perform the same f32
// operations as ds4-quant's dequantisers.

__device__ __forceinline__ float deq_f32(const u8* row, int i) { return ((const float*)row)[i]; }

__device__ __forceinline__ float deq_f16(const u8* row, int i) { return load_f16(row + 2 * i); }

__device__ __forceinline__ float deq_q8_0(const u8* row, int i) {
    const u8* blk = row + (i >> 5) * 34;
    const float d = load_f16(blk);
    return d * (float)(signed char)blk[2 + (i & 31)];
}

__device__ __forceinline__ float deq_q2_k(const u8* row, int i) {
    const u8* blk = row + (i >> 8) * 84;
    const int e = i & 255;
    const int h = e >> 7, r = e & 127, j = r >> 5, ii = r & 31;
    const int q = (blk[16 + 32 * h + ii] >> (2 * j)) & 3;
    const int sc = blk[8 * h + 2 * j + (ii >= 16 ? 1 : 0)];
    const float d = load_f16(blk + 80), dmin = load_f16(blk + 82);
    const float dl = d * (float)(sc & 15);
    const float ml = dmin * (float)(sc >> 4);
    // __fmul_rn keeps the product rounded on its own (no FMA contraction),
    // so the decoded value is bit-identical to ds4-quant's.
    return __fmul_rn(dl, (float)q) - ml;
}

__device__ __forceinline__ float deq_q4_k(const u8* row, int i) {
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

__device__ __forceinline__ float deq_iq2_xxs(const u8* row, int i) {
    const u8* blk = row + (i >> 8) * 66;
    const int e = i & 255;
    const int g = e >> 5, l = (e & 31) >> 3, k = e & 7;
    const u32 a0 = load_u32_a2(blk + 2 + 8 * g);
    const u32 a1 = load_u32_a2(blk + 2 + 8 * g + 4);
    const float d = load_f16(blk);
    const float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
    const u64 grid = ds4_iq2xxs_grid[(a0 >> (8 * l)) & 0xff];
    const u8 signs = ds4_ksigns_iq2xs[(a1 >> (7 * l)) & 127];
    const float w = db * (float)((grid >> (8 * k)) & 0xff);
    return ((signs >> k) & 1) ? -w : w;
}

#define DS4_MATVEC(NAME, DEQ)                                                                  \
    extern "C" __global__ void NAME(const u8* __restrict__ w, u64 mat_bytes,                  \
                                    const int* __restrict__ mat_ids, u64 row_bytes,           \
                                    int n_rows, int row_len, const float* __restrict__ x,     \
                                    i64 x_stride, int x_div, float* __restrict__ y,           \
                                    i64 y_stride) {                                           \
        const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;              \
        const int r = blockIdx.x * (blockDim.x / DS4_WARP) + warp;                            \
        const int item = blockIdx.y;                                                          \
        if (r >= n_rows) return;                                                              \
        const u64 m = mat_ids ? (u64)mat_ids[item] : 0;                                       \
        const u8* row = w + m * mat_bytes + (u64)r * row_bytes;                               \
        const float* xr = x + (i64)(item / x_div) * x_stride;                                 \
        float acc = 0.0f;                                                                     \
        for (int i = lane; i < row_len; i += DS4_WARP) acc += DEQ(row, i) * xr[i];            \
        acc = warp_sum(acc);                                                                  \
        if (lane == 0) y[(i64)item * y_stride + r] = acc;                                     \
    }

DS4_MATVEC(matvec_f32, deq_f32)
DS4_MATVEC(matvec_f16, deq_f16)
DS4_MATVEC(matvec_q8_0, deq_q8_0)
DS4_MATVEC(matvec_q2_k, deq_q2_k)
DS4_MATVEC(matvec_q4_k, deq_q4_k)
DS4_MATVEC(matvec_iq2_xxs, deq_iq2_xxs)

// Dequantises rows [0, n_rows) of a matrix into f32 (tests and small tensors).
#define DS4_DEQUANT(NAME, DEQ)                                                                 \
    extern "C" __global__ void NAME(const u8* __restrict__ w, u64 row_bytes, int n_rows,      \
                                    int row_len, float* __restrict__ out) {                   \
        const i64 n = (i64)n_rows * row_len;                                                  \
        for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < n;                       \
             t += (i64)gridDim.x * blockDim.x) {                                              \
            const int r = (int)(t / row_len), i = (int)(t % row_len);                         \
            out[t] = DEQ(w + (u64)r * row_bytes, i);                                          \
        }                                                                                     \
    }

DS4_DEQUANT(dequant_f32, deq_f32)
DS4_DEQUANT(dequant_f16, deq_f16)
DS4_DEQUANT(dequant_q8_0, deq_q8_0)
DS4_DEQUANT(dequant_q2_k, deq_q2_k)
DS4_DEQUANT(dequant_q4_k, deq_q4_k)
DS4_DEQUANT(dequant_iq2_xxs, deq_iq2_xxs)
