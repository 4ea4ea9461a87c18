// The lightning indexer's scoring and top-k selection (MODEL.md 3.5): every
// visible compressed indexer row scored against a token's indexer queries,
// then the top_k rows picked, ties to the lower index like the CPU.

// Indexer scores: s[t][c] = sum_h w[t][h] * scale * max(0, q[t][h] . K[c])
// for c < visible[t]; later entries are not written. A block stages the
// token's queries in shared memory (rows padded to 129 floats) and its 8
// warps take 8 rows each; lane l computes heads l and l + 32. The dot and
// the head sum run in index order with separately rounded products, as
// the CPU computes them. Grid (ceil(visible / rpb), T), rpb rows per block
// (a multiple of 8; the backend uses 8, for decode steps over few rows, and
// the tiled kernels below otherwise); head_dim 128.
extern "C" __global__ void index_scores(float* __restrict__ scores, i64 scores_stride,
                                        const float* __restrict__ q,
                                        const float* __restrict__ w,
                                        const float* __restrict__ keys, int n_heads,
                                        int head_dim, float scale, int pos0, int ratio,
                                        int rpb) {
    ds4_pdl_enter();
    extern __shared__ float sm[];
    float* qs = sm;                              // n_heads x 129
    float* ws = qs + n_heads * 129;              // n_heads
    float* ks = sm + ((n_heads * 130 + 3) & ~3); // 8 warps x 128 (16-byte aligned)
    const int t = blockIdx.y;
    const int visible = (pos0 + t + 1) / ratio;
    const int c0 = blockIdx.x * rpb;
    if (c0 >= visible) return;
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const float* qt = q + (i64)t * n_heads * 128;
    for (int k = threadIdx.x; k < n_heads * 32; k += blockDim.x) {
        const float4 v = ((const float4*)qt)[k];
        float* dst = qs + (k >> 5) * 129 + 4 * (k & 31);
        dst[0] = v.x;
        dst[1] = v.y;
        dst[2] = v.z;
        dst[3] = v.w;
    }
    for (int h = threadIdx.x; h < n_heads; h += blockDim.x) ws[h] = w[(i64)t * n_heads + h];
    __syncthreads();
    float* kw = ks + warp * 128;
    const float* q0 = qs + lane * 129;
    const float* q1 = qs + (lane + 32) * 129;
    for (int cc = 0; cc < rpb / 8; cc++) {
        const int c = c0 + warp * (rpb / 8) + cc;
        if (c >= visible) break;
        ((float4*)kw)[lane] = ((const float4*)(keys + (i64)c * 128))[lane];
        __syncwarp();
        float d0 = 0.0f, d1 = 0.0f;
        for (int i = 0; i < 128; i++) {
            const float kv = kw[i];
            if (lane < n_heads) d0 = __fadd_rn(d0, __fmul_rn(q0[i], kv));
            if (lane + 32 < n_heads) d1 = __fadd_rn(d1, __fmul_rn(q1[i], kv));
        }
        float s = 0.0f;
        for (int h = 0; h < n_heads; h++) {
            const float d = __shfl_sync(DS4_FULL_MASK, h < 32 ? d0 : d1, h & 31);
            s = __fadd_rn(s, __fmul_rn(__fmul_rn(ws[h], scale), fmaxf(d, 0.0f)));
        }
        if (lane == 0) scores[(i64)t * scores_stride + c] = s;
        __syncwarp();
    }
}

// The same scores, register-tiled for long row lists: a block of 256
// threads takes 64 heads x RB = 16 RT rows for tpb consecutive tokens.
// Thread (hg, cg) keeps the dots of heads 4hg..4hg+3 with rows
// RT cg..RT cg+RT-1 in registers, so one float4 of queries and RT/4 of
// keys feed 4 RT products (index_scores spends ~4 instructions per product
// on loads and predicates, this ~2.1). Same arithmetic in the same order:
// each dot runs over i = 0..127 with separately rounded products, each
// score sums its heads in order, so the results are bit-identical. The key
// tile is read once per block (dim-major, RB wide) and serves all its
// tokens; a token's queries are stored dim-major (64 wide) and that region
// then holds the weighted products for the head sums (head-major, RB + 1
// wide). Grid (ceil(visible_last / RB), ceil(T / tpb)); head_dim 128,
// n_heads <= 64.
template <int RT>
__device__ __forceinline__ void index_scores_tile(float* __restrict__ scores, i64 scores_stride,
                                                  const float* __restrict__ q,
                                                  const float* __restrict__ w,
                                                  const float* __restrict__ keys, int n_heads,
                                                  float scale, int pos0, int ratio, int n_tokens,
                                                  int tpb) {
    constexpr int RB = 16 * RT;
    constexpr int QP = 128 * 64 > 64 * (RB + 1) ? 128 * 64 : 64 * (RB + 1);
    extern __shared__ float sm[];
    float* kt = sm;             // 128 x RB
    float* qt = kt + 128 * RB;  // 128 x 64, then the products 64 x (RB + 1)
    float* wsc = qt + QP;       // 64
    const int tid = threadIdx.x;
    const int c0 = blockIdx.x * RB;
    const int t0 = blockIdx.y * tpb;
    const int t1 = min(n_tokens, t0 + tpb);
    const int vis_max = (pos0 + t1) / ratio;
    if (c0 >= vis_max) return;
    for (int k = tid; k < RB * 32; k += blockDim.x) {
        const int c = k % RB, i4 = k / RB;
        const float4 v = c0 + c < vis_max ? *(const float4*)(keys + (i64)(c0 + c) * 128 + 4 * i4)
                                          : make_float4(0, 0, 0, 0);
        kt[(4 * i4 + 0) * RB + c] = v.x;
        kt[(4 * i4 + 1) * RB + c] = v.y;
        kt[(4 * i4 + 2) * RB + c] = v.z;
        kt[(4 * i4 + 3) * RB + c] = v.w;
    }
    const int hg = tid & 15, cg = tid >> 4;
    for (int t = t0; t < t1; t++) {
        const int visible = (pos0 + t + 1) / ratio;
        if (c0 >= visible) continue;  // the same for the whole block
        __syncthreads();              // the previous token's head sums are done
        for (int k = tid; k < 64 * 32; k += blockDim.x) {
            const int h = k & 63, i4 = k >> 6;
            const float4 v = h < n_heads ? *(const float4*)(q + ((i64)t * n_heads + h) * 128 + 4 * i4)
                                         : make_float4(0, 0, 0, 0);
            qt[(4 * i4 + 0) * 64 + h] = v.x;
            qt[(4 * i4 + 1) * 64 + h] = v.y;
            qt[(4 * i4 + 2) * 64 + h] = v.z;
            qt[(4 * i4 + 3) * 64 + h] = v.w;
        }
        if (tid < 64) wsc[tid] = tid < n_heads ? __fmul_rn(w[(i64)t * n_heads + tid], scale) : 0.0f;
        __syncthreads();
        float d[4][RT];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int b = 0; b < RT; b++) d[a][b] = 0.0f;
        const float* qp = qt + 4 * hg;
        const float* kp = kt + RT * cg;
#pragma unroll 2
        for (int i = 0; i < 128; i++) {
            const float4 qv = *(const float4*)(qp + i * 64);
            const float qa[4] = {qv.x, qv.y, qv.z, qv.w};
            float kv[RT];
#pragma unroll
            for (int b = 0; b < RT; b += 4) {
                const float4 v = *(const float4*)(kp + i * RB + b);
                kv[b] = v.x;
                kv[b + 1] = v.y;
                kv[b + 2] = v.z;
                kv[b + 3] = v.w;
            }
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < RT; b++) d[a][b] = __fadd_rn(d[a][b], __fmul_rn(qa[a], kv[b]));
        }
        __syncthreads();  // every thread is done with qt
        float* prod = qt;
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int b = 0; b < RT; b++)
                prod[(4 * hg + a) * (RB + 1) + RT * cg + b] =
                    __fmul_rn(wsc[4 * hg + a], fmaxf(d[a][b], 0.0f));
        __syncthreads();
        for (int r = tid; r < RB; r += blockDim.x) {
            if (c0 + r >= visible) continue;
            float s = 0.0f;
            for (int h = 0; h < n_heads; h++) s = __fadd_rn(s, prod[h * (RB + 1) + r]);
            scores[(i64)t * scores_stride + c0 + r] = s;
        }
    }
}

// 128 rows per block (batches) and 64 (a decode step over many rows).
extern "C" __global__ void __launch_bounds__(256) index_scores_t8(float* __restrict__ scores, i64 scores_stride, const float* __restrict__ q,
                    const float* __restrict__ w, const float* __restrict__ keys, int n_heads,
                    float scale, int pos0, int ratio, int n_tokens, int tpb) {
    ds4_pdl_enter();
    index_scores_tile<8>(scores, scores_stride, q, w, keys, n_heads, scale, pos0, ratio, n_tokens,
                         tpb);
}

extern "C" __global__ void __launch_bounds__(256) index_scores_t4(float* __restrict__ scores, i64 scores_stride, const float* __restrict__ q,
                    const float* __restrict__ w, const float* __restrict__ keys, int n_heads,
                    float scale, int pos0, int ratio, int n_tokens, int tpb) {
    ds4_pdl_enter();
    index_scores_tile<4>(scores, scores_stride, q, w, keys, n_heads, scale, pos0, ratio, n_tokens,
                         tpb);
}

// A u32 whose unsigned order is the float order (-0 counts as +0).
__device__ __forceinline__ u32 order_key(float v) {
    if (v == 0.0f) v = 0.0f;
    const u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Top-k of each token's indexer scores (one block of 1024 threads per
// token), ties to the lower index like the CPU's top_k, written in
// ascending index order. Tokens whose visible count is <= k need no
// selection and are skipped. The k-th largest key is found by an 8-bit
// radix select over order-preserving keys (integer shared atomics only;
// the keys stay in shared memory when they fit), the bin of each pass by a
// parallel scan; then each warp compacts its contiguous share of the
// indices in order with ballots.
__device__ __forceinline__ int warp_incl_scan(int v) {
    const int lane = threadIdx.x % DS4_WARP;
    for (int o = 1; o < DS4_WARP; o <<= 1) {
        const int u = __shfl_up_sync(DS4_FULL_MASK, v, o);
        if (lane >= o) v += u;
    }
    return v;
}

extern "C" __global__ void topk_select(int* __restrict__ out, const float* __restrict__ scores,
                                       i64 scores_stride, int k, int pos0, int ratio,
                                       int cached) {
    ds4_pdl_enter();
    extern __shared__ u32 keys[];
    __shared__ u32 hist[256];
    __shared__ int wsum[32], wsum2[32];
    __shared__ u32 s_prefix, s_mask, s_rem;
    const int t = blockIdx.x;
    const int n = (pos0 + t + 1) / ratio;
    if (n <= k) return;
    const float* s = scores + (i64)t * scores_stride;
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int n_warps = blockDim.x / DS4_WARP;
    if (cached)
        for (int i = threadIdx.x; i < n; i += blockDim.x) keys[i] = order_key(s[i]);
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_mask = 0;
        s_rem = k;
    }
    __syncthreads();
#define DS4_KEY_AT(i) (cached ? keys[i] : order_key(s[i]))
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        const u32 prefix = s_prefix, mask = s_mask, rem = s_rem;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const u32 key = DS4_KEY_AT(i);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        // Bins from the top: inclusive counts; the bin where `rem` falls.
        if (threadIdx.x < 256) {
            const int b = 255 - threadIdx.x;
            const int v = (int)hist[b];
            const int incl = warp_incl_scan(v);
            if (lane == DS4_WARP - 1) wsum[warp] = incl;
            __syncwarp();
            // (threads 0..255 are warps 0..7)
            asm volatile("bar.sync 1, 256;");
            int before = 0;
            for (int w = 0; w < warp; w++) before += wsum[w];
            const int hi = before + incl, lo = hi - v;
            if ((u32)lo < rem && rem <= (u32)hi) {
                s_prefix = prefix | ((u32)b << shift);
                s_mask = mask | (255u << shift);
                s_rem = rem - (u32)lo;
            }
        }
        __syncthreads();
    }
    const u32 thr = s_prefix;
    const int need_eq = (int)s_rem;
    // Each warp owns a contiguous range of indices, scanned 32 at a time.
    const int per = (n + n_warps - 1) / n_warps;
    const int i0 = min(n, warp * per), i1 = min(n, i0 + per);
    int gt = 0, eq = 0;
    for (int base = i0; base < i1; base += DS4_WARP) {
        const int i = base + lane;
        const u32 key = i < i1 ? DS4_KEY_AT(i) : 0;
        gt += __popc(__ballot_sync(DS4_FULL_MASK, i < i1 && key > thr));
        eq += __popc(__ballot_sync(DS4_FULL_MASK, i < i1 && key == thr));
    }
    if (lane == 0) {
        wsum[warp] = gt;
        wsum2[warp] = eq;
    }
    __syncthreads();
    // Warp 0 turns the per-warp counts into each warp's ties seen before it
    // and indices taken before it (exclusive scans over <= 32 warps; a loop
    // per thread over the earlier warps costs O(warps^2) dependent loads).
    if (warp == 0) {
        const int g = lane < n_warps ? wsum[lane] : 0;
        const int e = lane < n_warps ? wsum2[lane] : 0;
        const int e_before = warp_incl_scan(e) - e;
        const int tk = g + min(max(need_eq - e_before, 0), e);
        const int tk_before = warp_incl_scan(tk) - tk;
        if (lane < n_warps) {
            wsum[lane] = tk_before;
            wsum2[lane] = e_before;
        }
    }
    __syncthreads();
    int at = wsum[warp], eq_seen = wsum2[warp];
    for (int base = i0; base < i1; base += DS4_WARP) {
        const int i = base + lane;
        const u32 key = i < i1 ? DS4_KEY_AT(i) : 0;
        const bool is_eq = i < i1 && key == thr;
        const u32 eb = __ballot_sync(DS4_FULL_MASK, is_eq);
        const u32 lt = (1u << lane) - 1u;
        const bool take = i < i1 && (key > thr || (is_eq && eq_seen + __popc(eb & lt) < need_eq));
        const u32 tb = __ballot_sync(DS4_FULL_MASK, take);
        if (take) out[(i64)t * k + at + __popc(tb & lt)] = i;
        at += __popc(tb);
        eq_seen += __popc(eb);
    }
#undef DS4_KEY_AT
}
