// The attention sublayer's stateful and per-row stages (MODEL.md 3.2-3.7).

// RoPE on the tails of rows [n_rows x width]; row r belongs to token
// r / rows_per_token at position pos0 + token. One thread per rotated pair.
extern "C" __global__ void rope_rows(float* __restrict__ x, int n_rows, int width,
                                     int rows_per_token, const float* __restrict__ inv_freq,
                                     int n_pairs, int pos0, int inverse) {
    const i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (k >= (i64)n_rows * n_pairs) return;
    const int r = (int)(k / n_pairs), pair = (int)(k % n_pairs);
    rope_pair(x + (i64)r * width, width, n_pairs, pair, inv_freq, pos0 + r / rows_per_token,
              inverse != 0);
}

// FP8 round trip of dims [0, n_nope) of every row; one block per row.
extern "C" __global__ void fp8_rows(float* __restrict__ x, int width, int n_nope) {
    fp8_row_block(x + (i64)blockIdx.x * width, n_nope);
}

// Hadamard (+ FP4 when fp4 != 0) on 128-wide rows, one warp per row.
extern "C" __global__ void hadamard128_rows(float* __restrict__ x, int n_rows, int fp4) {
    const int r = blockIdx.x * (blockDim.x / DS4_WARP) + threadIdx.x / DS4_WARP;
    if (r >= n_rows) return;
    hadamard128_warp(x + (i64)r * 128, fp4 != 0);
}

// f32 -> f16 -> f32 on every element (the official numerics' 16-bit cache rows).
extern "C" __global__ void f16_round_rows(float* __restrict__ x, i64 n) {
    for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < n; k += (i64)gridDim.x * blockDim.x)
        x[k] = f16_round(x[k]);
}

// Writes the batch's raw KV rows into the layer's ring (slot = pos % cap),
// rounded to f16 in the official numerics.
extern "C" __global__ void append_raw(float* __restrict__ ring, const float* __restrict__ rows,
                                      int dim, int cap, int pos0, int round16) {
    const int t = blockIdx.y;
    const i64 slot = (pos0 + t) % cap;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < dim; i += gridDim.x * blockDim.x) {
        const float v = rows[(i64)t * dim + i];
        ring[slot * dim + i] = round16 ? f16_round(v) : v;
    }
}

// One compressor instance stepped over a batch (MODEL.md 3.4), by a single
// block because the window state is sequential in the tokens. `a` and `sc`
// are the kv and gate projections of the batch ([T x width]); ape is F16.
// Emitted rows go to rows[n_rows0 + k]. kind: 0 attention (FP8), 1 indexer
// (Hadamard + FP4).
extern "C" __global__ void compress_step(
    float* __restrict__ state_kv, float* __restrict__ state_sc, float* __restrict__ rows,
    int n_rows0, const float* __restrict__ a, const float* __restrict__ sc,
    const u8* __restrict__ ape, const float* __restrict__ norm,
    const float* __restrict__ inv_freq, int n_pairs, int pos0, int n_tokens, int ratio,
    int dim, int width, int overlap, int kind, int official, float eps) {
    extern __shared__ float row[];  // dim floats
    __shared__ double scratch[32];
    int emitted = 0;
    const int count = overlap ? 2 * ratio : ratio;
    for (int t = 0; t < n_tokens; t++) {
        const int p = pos0 + t;
        const int phase = p % ratio;
        const int slot = overlap ? ratio + phase : phase;
        for (int j = threadIdx.x; j < width; j += blockDim.x) {
            state_kv[(i64)slot * width + j] = a[(i64)t * width + j];
            state_sc[(i64)slot * width + j] =
                sc[(i64)t * width + j] + load_f16(ape + 2 * ((i64)phase * width + j));
        }
        __syncthreads();
        if ((p + 1) % ratio != 0) continue;
        // Window complete: softmax-pool every dim over its candidates, in
        // candidate order as the CPU reference does.
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float mx = -DS4_INF;
            for (int i = 0; i < count; i++) {
                const i64 at = (i64)i * width + ((overlap && i >= ratio) ? dim + j : j);
                mx = fmaxf(mx, state_sc[at]);
            }
            float num = 0.0f, den = 0.0f;
            for (int i = 0; i < count; i++) {
                const i64 at = (i64)i * width + ((overlap && i >= ratio) ? dim + j : j);
                const float e = expf(state_sc[at] - mx);
                num += e * state_kv[at];
                den += e;
            }
            row[j] = den > 0.0f ? num / den : 0.0f;
        }
        double ss = 0.0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += (double)row[j] * (double)row[j];
        ss = block_sum_f64(ss, scratch);
        const float inv = rms_inv(ss, dim, eps);
        for (int j = threadIdx.x; j < dim; j += blockDim.x) row[j] = row[j] * inv * norm[j];
        __syncthreads();
        for (int k = threadIdx.x; k < n_pairs; k += blockDim.x)
            rope_pair(row, dim, n_pairs, k, inv_freq, p + 1 - ratio, false);
        __syncthreads();
        if (official) {
            if (kind == 0) {
                fp8_row_block(row, dim - 2 * n_pairs);
            } else if (threadIdx.x < DS4_WARP) {
                hadamard128_warp(row, true);
            }
            __syncthreads();
        }
        float* dst = rows + (i64)(n_rows0 + emitted) * dim;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = official ? f16_round(row[j]) : row[j];
        emitted++;
        if (overlap) {
            // The current window becomes the previous one.
            for (int k = threadIdx.x; k < ratio * width; k += blockDim.x) {
                state_kv[k] = state_kv[(i64)ratio * width + k];
                state_sc[k] = state_sc[(i64)ratio * width + k];
            }
        }
        __syncthreads();
    }
}

// Indexer scores: s[t][c] = sum_h w[t][h] * scale * max(0, q[t][h] . K[c])
// for c < visible[t] (one warp per (c, t)); later entries are not written.
extern "C" __global__ void index_scores(float* __restrict__ scores, i64 scores_stride,
                                        const float* __restrict__ q,
                                        const float* __restrict__ w,
                                        const float* __restrict__ keys, int n_heads,
                                        int head_dim, float scale, int pos0, int ratio) {
    const int t = blockIdx.y;
    const int c = blockIdx.x * (blockDim.x / DS4_WARP) + threadIdx.x / DS4_WARP;
    const int lane = threadIdx.x % DS4_WARP;
    const int visible = (pos0 + t + 1) / ratio;
    if (c >= visible) return;
    const float* k = keys + (i64)c * head_dim;
    const float* qt = q + (i64)t * n_heads * head_dim;
    float s = 0.0f;
    for (int h = 0; h < n_heads; h++) {
        float part = 0.0f;
        for (int i = lane; i < head_dim; i += DS4_WARP) part += qt[h * head_dim + i] * k[i];
        const float dot = warp_sum(part);
        s += w[(i64)t * n_heads + h] * scale * fmaxf(dot, 0.0f);
    }
    if (lane == 0) scores[(i64)t * scores_stride + c] = s;
}

// A u32 whose unsigned order is the float order (-0 counts as +0).
__device__ __forceinline__ u32 order_key(float v) {
    if (v == 0.0f) v = 0.0f;
    const u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Exclusive prefix count of `flag` over the block in thread order, plus the
// block total; `warp_tot` holds 32 ints.
__device__ int block_scan_flags(bool flag, int* warp_tot, int* total) {
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int n_warps = blockDim.x / DS4_WARP;
    const u32 ballot = __ballot_sync(DS4_FULL_MASK, flag);
    const int in_warp = __popc(ballot & ((1u << lane) - 1u));
    __syncthreads();
    if (lane == 0) warp_tot[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, all = 0;
    for (int w = 0; w < n_warps; w++) {
        if (w < warp) before += warp_tot[w];
        all += warp_tot[w];
    }
    *total = all;
    return before + in_warp;
}

// Top-k of each token's indexer scores (one block per token), ties to the
// lower index like the CPU's top_k, written in ascending index order.
// Tokens whose visible count is <= k need no selection and are skipped.
// The k-th largest key is found by an 8-bit radix select (integer shared
// atomics only), then indices are compacted in order with block scans.
extern "C" __global__ void topk_select(int* __restrict__ out, const float* __restrict__ scores,
                                       i64 scores_stride, int k, int pos0, int ratio) {
    __shared__ u32 hist[256];
    __shared__ u32 s_prefix, s_mask, s_remaining;
    __shared__ int warp_tot[32];
    const int t = blockIdx.x;
    const int n = (pos0 + t + 1) / ratio;
    if (n <= k) return;
    const float* s = scores + (i64)t * scores_stride;
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_mask = 0;
        s_remaining = k;
    }
    __syncthreads();
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        const u32 prefix = s_prefix, mask = s_mask;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const u32 key = order_key(s[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 remaining = s_remaining, above = 0;
            int b = 255;
            for (; b > 0; b--) {
                if (above + hist[b] >= remaining) break;
                above += hist[b];
            }
            s_remaining = remaining - above;
            s_prefix = prefix | ((u32)b << shift);
            s_mask = mask | (255u << shift);
        }
        __syncthreads();
    }
    const u32 thr = s_prefix;
    const int need_eq = (int)s_remaining;
    int eq_seen = 0, written = 0;
    for (int base = 0; base < n; base += blockDim.x) {
        const int i = base + threadIdx.x;
        const u32 key = i < n ? order_key(s[i]) : 0;
        const bool eq = i < n && key == thr;
        int eq_total;
        const int eq_rank = eq_seen + block_scan_flags(eq, warp_tot, &eq_total);
        const bool take = i < n && (key > thr || (eq && eq_rank < need_eq));
        int take_total;
        const int at = written + block_scan_flags(take, warp_tot, &take_total);
        if (take) out[(i64)t * k + at] = i;
        eq_seen += eq_total;
        written += take_total;
    }
}

// Softmax attention with a sink over the raw window and the visible (or
// selected) compressed rows (MODEL.md 3.6). One block per (head, token);
// scores live in dynamic shared memory. The denominator and the weighted
// sums run in key order, as in the CPU reference.
extern "C" __global__ void attend(float* __restrict__ out, const float* __restrict__ q,
                                  const float* __restrict__ raw, int raw_cap,
                                  const float* __restrict__ comp, int ratio,
                                  const int* __restrict__ sel, int top_k,
                                  const float* __restrict__ sinks, int n_heads, int head_dim,
                                  int window, int pos0, float scale) {
    extern __shared__ float e[];
    __shared__ float s_den;
    const int h = blockIdx.x, t = blockIdx.y;
    const int p = pos0 + t;
    const int first = max(0, p + 1 - window);
    const int n_raw = p - first + 1;
    const int visible = ratio > 0 ? (p + 1) / ratio : 0;
    const bool use_sel = sel != 0 && visible > top_k;
    const int n_comp = use_sel ? top_k : visible;
    const int n_keys = n_raw + n_comp;
    const float* qh = q + ((i64)t * n_heads + h) * head_dim;
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int n_warps = blockDim.x / DS4_WARP;
#define DS4_KEY(kk)                                                                       \
    ((kk) < n_raw ? raw + (i64)((first + (kk)) % raw_cap) * head_dim                      \
                  : comp + (i64)(use_sel ? sel[(i64)t * top_k + (kk) - n_raw] : (kk) - n_raw) * head_dim)
    for (int kk = warp; kk < n_keys; kk += n_warps) {
        const float* key = DS4_KEY(kk);
        float part = 0.0f;
        for (int i = lane; i < head_dim; i += DS4_WARP) part += qh[i] * key[i];
        const float dot = warp_sum(part);
        if (lane == 0) e[kk] = dot * scale;
    }
    __syncthreads();
    const float sink = sinks[h];
    // Every thread finds the same maximum (max is exact in any order).
    float mx = sink;
    for (int kk = 0; kk < n_keys; kk++) mx = fmaxf(mx, e[kk]);
    __syncthreads();
    for (int kk = threadIdx.x; kk < n_keys; kk += blockDim.x) e[kk] = expf(e[kk] - mx);
    __syncthreads();
    if (threadIdx.x == 0) {
        float den = expf(sink - mx);
        for (int kk = 0; kk < n_keys; kk++) den += e[kk];
        s_den = den;
    }
    __syncthreads();
    const float den = s_den;
    float* oh = out + ((i64)t * n_heads + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float o = 0.0f;
        for (int kk = 0; kk < n_keys; kk++) o += e[kk] * DS4_KEY(kk)[i];
        oh[i] = o / den;
    }
#undef DS4_KEY
}
