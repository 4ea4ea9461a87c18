// The attention sublayer's stateful and per-row stages (MODEL.md 3.2-3.7).

// FP8 round trip of dims [0, n_nope) of every row; one block per row.
extern "C" __global__ void fp8_rows(float* __restrict__ x, int width, int n_nope) {
    ds4_pdl_enter();
    fp8_row_block(x + (i64)blockIdx.x * width, n_nope);
}

// Hadamard (+ FP4 when fp4 != 0) on 128-wide rows, one warp per row.
extern "C" __global__ void hadamard128_rows(float* __restrict__ x, int n_rows, int fp4) {
    ds4_pdl_enter();
    const int r = blockIdx.x * (blockDim.x / DS4_WARP) + threadIdx.x / DS4_WARP;
    if (r >= n_rows) return;
    hadamard128_warp(x + (i64)r * 128, fp4 != 0);
}

// f32 -> f16 -> f32 on every element (the official numerics' 16-bit cache rows).
extern "C" __global__ void f16_round_rows(float* __restrict__ x, i64 n) {
    ds4_pdl_enter();
    for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < n; k += (i64)gridDim.x * blockDim.x)
        x[k] = f16_round(x[k]);
}

// Writes the batch's raw KV rows into the layer's ring (slot = pos % cap),
// rounded to f16 in the official numerics.
extern "C" __global__ void append_raw(float* __restrict__ ring, const float* __restrict__ rows,
                                      int dim, int cap, int pos0, int round16) {
    ds4_pdl_enter();
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
    ds4_pdl_enter();
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

// The keys token t (position p) attends to, in order: the raw window rows
// first..p (ring slots), then the compressed rows: every visible one, or
// the indexer's selection of top_k once more than top_k are visible.
struct AttendKeys {
    int first, n_raw, n_keys;
    const int* sel;  // this token's selection, or null
    __device__ __forceinline__ AttendKeys(int p, int window, int ratio, const int* sel_all,
                                          int top_k, int t) {
        first = max(0, p + 1 - window);
        n_raw = p - first + 1;
        const int visible = ratio > 0 ? (p + 1) / ratio : 0;
        const bool use_sel = sel_all != 0 && visible > top_k;
        sel = use_sel ? sel_all + (i64)t * top_k : 0;
        n_keys = n_raw + (use_sel ? top_k : visible);
    }
    // Key kk's row: a ring slot (kk < n_raw) or a compressed row.
    __device__ __forceinline__ i64 row(int kk, int raw_cap) const {
        return kk < n_raw ? (i64)((first + kk) % raw_cap) : (i64)(sel ? sel[kk - n_raw] : kk - n_raw);
    }
};

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
    ds4_pdl_enter();
    extern __shared__ float e[];
    __shared__ float s_den;
    const int h = blockIdx.x, t = blockIdx.y;
    const AttendKeys ak(pos0 + t, window, ratio, sel, top_k, t);
    const int n_keys = ak.n_keys;
    const float* qh = q + ((i64)t * n_heads + h) * head_dim;
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int n_warps = blockDim.x / DS4_WARP;
#define DS4_KEY(kk) (((kk) < ak.n_raw ? raw : comp) + ak.row(kk, raw_cap) * head_dim)
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

// ---------------------------------------------------------------------------
// Fused per-row stages.

// RMS norm of one row of `width` at `row` in place (weighted if w), as
// rms_norm does; called by a whole block.
__device__ void rms_row_inplace(float* row, const float* __restrict__ w, int width, float eps,
                                double* scratch) {
    const bool vec = (width & 3) == 0 && (((u64)row | (u64)w) & 15) == 0;
    double ss = 0.0;
    if (vec) {
        for (int i = threadIdx.x; i < width / 4; i += blockDim.x) {
            const float4 v = ((const float4*)row)[i];
            ss += (double)v.x * (double)v.x + (double)v.y * (double)v.y +
                  (double)v.z * (double)v.z + (double)v.w * (double)v.w;
        }
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x) ss += (double)row[i] * (double)row[i];
    }
    ss = block_sum_f64(ss, scratch);
    const float inv = rms_inv(ss, width, eps);
    if (vec) {
        for (int i = threadIdx.x; i < width / 4; i += blockDim.x) {
            float4 v = ((float4*)row)[i];
            v.x *= inv; v.y *= inv; v.z *= inv; v.w *= inv;
            if (w) {
                const float4 g = ((const float4*)w)[i];
                v.x *= g.x; v.y *= g.y; v.z *= g.z; v.w *= g.w;
            }
            ((float4*)row)[i] = v;
        }
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x) {
            const float v = row[i] * inv;
            row[i] = w ? v * w[i] : v;
        }
    }
    __syncthreads();
}

// After the q_a / kv projections, per token (grid (T, 2)): y = 0 normalises
// the q latent row (q_a_norm); y = 1 normalises the kv row (kv_norm), rotates
// its tail and, in the official numerics, FP8-simulates dims [0, hd - rot).
extern "C" __global__ void qkv_post(float* __restrict__ ql, const float* __restrict__ ql_norm,
                                    int ql_width, float* __restrict__ kv,
                                    const float* __restrict__ kv_norm, int hd,
                                    const float* __restrict__ inv_freq, int n_pairs, int pos0,
                                    int fp8, float eps) {
    ds4_pdl_enter();
    __shared__ double scratch[32];
    const int t = blockIdx.x;
    if (blockIdx.y == 0) {
        rms_row_inplace(ql + (i64)t * ql_width, ql_norm, ql_width, eps, scratch);
        return;
    }
    float* row = kv + (i64)t * hd;
    rms_row_inplace(row, kv_norm, hd, eps, scratch);
    for (int k = threadIdx.x; k < n_pairs; k += blockDim.x)
        rope_pair(row, hd, n_pairs, k, inv_freq, pos0 + t, false);
    __syncthreads();
    if (fp8) fp8_row_block(row, hd - 2 * n_pairs);
}

// Per-head unweighted RMS norm, then RoPE, one block per (token, head) row.
extern "C" __global__ void head_norm_rope(float* __restrict__ q, int hd, int heads,
                                          const float* __restrict__ inv_freq, int n_pairs,
                                          int pos0, float eps) {
    ds4_pdl_enter();
    __shared__ double scratch[32];
    float* row = q + (i64)blockIdx.x * hd;
    rms_row_inplace(row, nullptr, hd, eps, scratch);
    for (int k = threadIdx.x; k < n_pairs; k += blockDim.x)
        rope_pair(row, hd, n_pairs, k, inv_freq, pos0 + blockIdx.x / heads, false);
}

// The indexer queries, one warp per (token, head) row of 128: RoPE on the
// tail, then (official numerics) Hadamard + FP4.
extern "C" __global__ void index_q_prep(float* __restrict__ q, int n_rows, int heads,
                                        const float* __restrict__ inv_freq, int n_pairs,
                                        int pos0, int hadamard) {
    ds4_pdl_enter();
    const int r = blockIdx.x * (blockDim.x / DS4_WARP) + threadIdx.x / DS4_WARP;
    const int lane = threadIdx.x % DS4_WARP;
    if (r >= n_rows) return;
    float* row = q + (i64)r * 128;
    for (int k = lane; k < n_pairs; k += DS4_WARP)
        rope_pair(row, 128, n_pairs, k, inv_freq, pos0 + r / heads, false);
    __syncwarp();
    if (hadamard) hadamard128_warp(row, true);
}

// out = in with the inverse RoPE of each row's tail (the attention output
// before the output projection); one block per (token, head) row.
extern "C" __global__ void rope_copy(float* __restrict__ out, const float* __restrict__ in, int hd,
                                     int heads, const float* __restrict__ inv_freq, int n_pairs,
                                     int pos0) {
    ds4_pdl_enter();
    const i64 base = (i64)blockIdx.x * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) out[base + i] = in[base + i];
    __syncthreads();
    for (int k = threadIdx.x; k < n_pairs; k += blockDim.x)
        rope_pair(out + base, hd, n_pairs, k, inv_freq, pos0 + blockIdx.x / heads, true);
}

// ---------------------------------------------------------------------------
// Compressor over a batch in parallel (MODEL.md 3.10 item 3): one block per
// emitted row, then one pass that leaves the state exactly as the
// sequential compress_step would. The pooled row's arithmetic is the same
// as compress_step's, candidate by candidate, so rows are bit-identical.

// Candidate i (position q = p - count + 1 + i) of window end p, column col:
// from the batch if q >= pos0, else from the state at the batch start.
__device__ __forceinline__ void compress_cand(const float* __restrict__ state_kv,
                                              const float* __restrict__ state_sc,
                                              const float* __restrict__ a,
                                              const float* __restrict__ sc,
                                              const u8* __restrict__ ape, int q, int col,
                                              int pos0, int ratio, int width, int overlap,
                                              float& kv, float& s) {
    if (q >= pos0) {
        const i64 at = (i64)(q - pos0) * width + col;
        kv = a[at];
        s = sc[at] + load_f16(ape + 2 * ((i64)(q % ratio) * width + col));
        return;
    }
    const int w0 = pos0 / ratio * ratio;  // start of the window open at pos0
    const int phase = ((q % ratio) + ratio) % ratio;
    const int slot = (overlap && q >= w0) ? ratio + phase : phase;
    kv = state_kv[(i64)slot * width + col];
    s = state_sc[(i64)slot * width + col];
}

extern "C" __global__ void compress_emit(
    const float* __restrict__ state_kv, const float* __restrict__ state_sc,
    float* __restrict__ rows, int n_rows0, const float* __restrict__ a,
    const float* __restrict__ sc, const u8* __restrict__ ape, const float* __restrict__ norm,
    const float* __restrict__ inv_freq, int n_pairs, int pos0, int first_p, int ratio, int dim,
    int width, int overlap, int kind, int official, float eps) {
    ds4_pdl_enter();
    extern __shared__ float row[];  // dim floats
    __shared__ double scratch[32];
    const int k = blockIdx.x;
    const int p = first_p + k * ratio;
    const int count = overlap ? 2 * ratio : ratio;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float mx = -DS4_INF;
        for (int i = 0; i < count; i++) {
            float kv, s;
            compress_cand(state_kv, state_sc, a, sc, ape, p - count + 1 + i,
                          (overlap && i >= ratio) ? dim + j : j, pos0, ratio, width, overlap, kv,
                          s);
            mx = fmaxf(mx, s);
        }
        float num = 0.0f, den = 0.0f;
        for (int i = 0; i < count; i++) {
            float kv, s;
            compress_cand(state_kv, state_sc, a, sc, ape, p - count + 1 + i,
                          (overlap && i >= ratio) ? dim + j : j, pos0, ratio, width, overlap, kv,
                          s);
            const float e = expf(s - mx);
            num += e * kv;
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
    for (int q = threadIdx.x; q < n_pairs; q += blockDim.x)
        rope_pair(row, dim, n_pairs, q, inv_freq, p + 1 - ratio, false);
    __syncthreads();
    if (official) {
        if (kind == 0) {
            fp8_row_block(row, dim - 2 * n_pairs);
        } else if (threadIdx.x < DS4_WARP) {
            hadamard128_warp(row, true);
        }
        __syncthreads();
    }
    float* dst = rows + (i64)(n_rows0 + k) * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = official ? f16_round(row[j]) : row[j];
}

// The state after the batch: each slot holds the last position written to
// it; with overlap, the previous-window rows hold a copy of the window that
// completed last. One thread per (phase, column) owns every slot of that
// phase, so it reads the old values before writing new ones.
extern "C" __global__ void compress_state(float* __restrict__ state_kv,
                                          float* __restrict__ state_sc,
                                          const float* __restrict__ a,
                                          const float* __restrict__ sc,
                                          const u8* __restrict__ ape, int pos0, int n_tokens,
                                          int ratio, int width, int overlap, int last_emit) {
    ds4_pdl_enter();
    const i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (e >= (i64)ratio * width) return;
    const int i = (int)(e / width), col = (int)(e % width);
    const int p_last = pos0 + n_tokens - 1;
    // The last position <= p_last of phase i.
    const int q = p_last - (((p_last - i) % ratio) + ratio) % ratio;
    const int cur = overlap ? ratio + i : i;
    const float old_kv = state_kv[(i64)cur * width + col];
    const float old_sc = state_sc[(i64)cur * width + col];
    if (overlap && last_emit >= 0) {
        // Rows 0..ratio-1 <- the window ending at last_emit.
        const int qp = last_emit - ratio + 1 + i;
        float kv = old_kv, s = old_sc;
        if (qp >= pos0) {
            const i64 at = (i64)(qp - pos0) * width + col;
            kv = a[at];
            s = sc[at] + load_f16(ape + 2 * ((i64)i * width + col));
        }
        state_kv[(i64)i * width + col] = kv;
        state_sc[(i64)i * width + col] = s;
    }
    if (q >= pos0) {
        const i64 at = (i64)(q - pos0) * width + col;
        state_kv[(i64)cur * width + col] = a[at];
        state_sc[(i64)cur * width + col] = sc[at] + load_f16(ape + 2 * ((i64)i * width + col));
    }
}

// ---------------------------------------------------------------------------
// Attention over key chunks (decode: many chunks per head group, so the
// whole GPU works on one token; batches: one chunk). A block is hpb warps,
// one head each, over keys [c·chunk, (c+1)·chunk) of token t; keys go
// through shared memory in tiles of DS4_AT_KT, so the hpb heads share
// every load. Per chunk: m = max(sink, scores), l = sum e^(s-m), o = sum
// e^(s-m) k, in key order. With one chunk the block writes the output,
// else partials that attend_combine folds in chunk order.

extern "C" __global__ void attend_part(float* __restrict__ out, float* __restrict__ part_o,
                                       float* __restrict__ part_ml, const float* __restrict__ q,
                                       const float* __restrict__ raw, int raw_cap,
                                       const float* __restrict__ comp, int ratio,
                                       const int* __restrict__ sel, int top_k,
                                       const float* __restrict__ sinks, int n_heads,
                                       int head_dim, int window, int pos0, float scale,
                                       int chunk, int tile) {
    ds4_pdl_enter();
    extern __shared__ float sm[];
    const int hpb = blockDim.x / DS4_WARP;
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int h = blockIdx.x * hpb + warp;
    const int c = blockIdx.y, t = blockIdx.z;
    const int n_chunks = gridDim.y;
    const AttendKeys ak(pos0 + t, window, ratio, sel, top_k, t);
    const int n_keys = ak.n_keys;
    const int k0 = c * chunk, k1 = min(n_keys, k0 + chunk);
    float* keys = sm;                                 // tile x head_dim
    float* scs = sm + tile * head_dim + warp * chunk;  // this warp's scores
    const int nj = head_dim / 128;
    const int hh = min(h, n_heads - 1);
    const float* qh = q + ((i64)t * n_heads + hh) * head_dim;
    float4 qv[4], o[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        qv[j] = j < nj ? *(const float4*)(qh + 128 * j + 4 * lane) : make_float4(0, 0, 0, 0);
        o[j] = make_float4(0, 0, 0, 0);
    }
    const int f4 = head_dim / 4;
#define DS4_AKEY(kk) (((kk) < ak.n_raw ? raw : comp) + ak.row(kk, raw_cap) * head_dim)
    for (int kt = k0; kt < k1; kt += tile) {
        const int nk = min(tile, k1 - kt);
        __syncthreads();
        for (int kk = warp; kk < nk; kk += hpb) {
            const float4* src = (const float4*)DS4_AKEY(kt + kk);
            float4* dst = (float4*)(keys + kk * head_dim);
            for (int f = lane; f < f4; f += DS4_WARP) dst[f] = src[f];
        }
        __syncthreads();
        for (int kk = 0; kk < nk; kk++) {
            float part = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (j < nj) {
                    const float4 kv = *(const float4*)(keys + kk * head_dim + 128 * j + 4 * lane);
                    part = fmaf(qv[j].x, kv.x, part);
                    part = fmaf(qv[j].y, kv.y, part);
                    part = fmaf(qv[j].z, kv.z, part);
                    part = fmaf(qv[j].w, kv.w, part);
                }
            }
            const float dot = warp_sum(part);
            if (lane == 0) scs[kt - k0 + kk] = dot * scale;
        }
    }
    __syncwarp();
    const float sink = sinks[hh];
    float m = sink;
    for (int kk = lane; kk < k1 - k0; kk += DS4_WARP) m = fmaxf(m, scs[kk]);
    m = warp_max(m);
    float l = 0.0f;
    // One tile covering the chunk is still in shared memory: no reload.
    const bool reload = k1 - k0 > tile;
    for (int kt = k0; kt < k1; kt += tile) {
        const int nk = min(tile, k1 - kt);
        if (reload) {
            __syncthreads();
            for (int kk = warp; kk < nk; kk += hpb) {
                const float4* src = (const float4*)DS4_AKEY(kt + kk);
                float4* dst = (float4*)(keys + kk * head_dim);
                for (int f = lane; f < f4; f += DS4_WARP) dst[f] = src[f];
            }
            __syncthreads();
        }
        for (int kk = 0; kk < nk; kk++) {
            const float e = expf(scs[kt - k0 + kk] - m);
            l += e;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (j < nj) {
                    const float4 kv = *(const float4*)(keys + kk * head_dim + 128 * j + 4 * lane);
                    o[j].x = fmaf(e, kv.x, o[j].x);
                    o[j].y = fmaf(e, kv.y, o[j].y);
                    o[j].z = fmaf(e, kv.z, o[j].z);
                    o[j].w = fmaf(e, kv.w, o[j].w);
                }
            }
        }
    }
#undef DS4_AKEY
    if (h >= n_heads) return;
    if (n_chunks == 1) {
        const float den = expf(sink - m) + l;
        float* oh = out + ((i64)t * n_heads + h) * head_dim;
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (j < nj)
                *(float4*)(oh + 128 * j + 4 * lane) =
                    make_float4(o[j].x / den, o[j].y / den, o[j].z / den, o[j].w / den);
        return;
    }
    const i64 slot = ((i64)t * n_heads + h) * n_chunks + c;
    float* po = part_o + slot * head_dim;
#pragma unroll
    for (int j = 0; j < 4; j++)
        if (j < nj) *(float4*)(po + 128 * j + 4 * lane) = o[j];
    if (lane == 0) {
        part_ml[2 * slot] = m;
        part_ml[2 * slot + 1] = l;
    }
}

// Four floats as f16 hi and lo parts, stored as 4 halves each.
__device__ __forceinline__ void store_parts4(u16* hi, u16* lo, float4 v, bool with_lo) {
    u32 h0, h1, h2, h3, l0, l1, l2, l3;
    split2(v.x, h0, l0);
    split2(v.y, h1, l1);
    split2(v.z, h2, l2);
    split2(v.w, h3, l3);
    *(uint2*)hi = make_uint2(pack16(h0, h1), pack16(h2, h3));
    if (with_lo) *(uint2*)lo = make_uint2(pack16(l0, l1), pack16(l2, l3));
}

// Attention of a batch (prefill) on the tensor cores (mma.sync m16n8k16,
// f16 in, f32 accumulate), 32 heads of one token per block of 256 threads,
// so the heads share every key load. Every product is exact: the queries
// go in as two f16 parts of q 2^e (one power of two per head puts its
// largest |q| in [2^14, 2^15)), the softmax weights (in (0, 1]) as two f16
// parts, the keys as one part from f16 copies of the cache when the official
// numerics have rounded every cached row to f16 (K16), else as two parts
// (lo x lo is left out, 2^-22 relative). Three phases:
// (1) scores S = scale * q.k into shared memory: warp w takes heads
//     16 (w % 2).. and 16 keys of each 64-key tile, over 128-dim chunks;
// (2) per head (a warp takes 4): m = max(sink, S), S <- e^(S - m),
//     den = e^(sink - m) + sum e, zeros up to a multiple of 16 keys;
// (3) o = sum_c e_c k_c: warp w takes dims 64 w..64 w + 63 of all 32 heads
//     over 16-key tiles, the keys read transposed by ldmatrix; out = o / den.
// The next key tile is fetched while one is multiplied (into registers, or
// with K16 by cp.async into the other of two buffers). Grid
// (ceil(n_heads / 32), T); head_dim a multiple of 128, at most 512;
// s_stride >= the most keys of any token, rounded up to 16.
template <bool K16>
__device__ __forceinline__ void attend_mma_impl(float* __restrict__ out, const float* __restrict__ q,
                                                const float* __restrict__ raw,
                                                const u16* __restrict__ raw16, int raw_cap,
                                                const float* __restrict__ comp,
                                                const u16* __restrict__ comp16, int ratio,
                                                const int* __restrict__ sel, int top_k,
                                                const float* __restrict__ sinks, int n_heads,
                                                int head_dim, int window, int pos0, float scale,
                                                int s_stride) {
    extern __shared__ __align__(16) u8 smb[];
    const int tid = threadIdx.x, warp = tid / DS4_WARP, lane = tid % DS4_WARP;
    const int g = lane >> 2, t4 = lane & 3;
    const int h0 = blockIdx.x * 32, t = blockIdx.y;
    const AttendKeys ak(pos0 + t, window, ratio, sel, top_k, t);
    const int n_keys = ak.n_keys;
    const int nj = head_dim / 128;
    const bool two = !K16;  // f32 keys (exact numerics): two f16 parts
    const int QL = head_dim + 8;              // f16 per query row (padding: no bank conflicts)
    const int KR1 = 136, KR3 = head_dim + 8;  // f16 per key row in phases 1 and 3
    const int KPART = max(64 * KR1, 16 * KR3);
    u16* qs = (u16*)smb;                      // 2 parts x 32 x QL
    u16* ks = qs + 2 * 32 * QL;               // 2 parts (K16: 2 buffers) x KPART
    float* S = (float*)(ks + 2 * KPART);      // 32 x s_stride
    float* qsc = S + 32 * s_stride;           // 32: 2^-e per head
    float* den = qsc + 32;                    // 32
#define DS4_AKEY(kk) (((kk) < ak.n_raw ? raw : comp) + ak.row(kk, raw_cap) * head_dim)
#define DS4_AKEY16(kk) (((kk) < ak.n_raw ? raw16 : comp16) + ak.row(kk, raw_cap) * head_dim)
    // Queries: warp w scales and splits heads 4w..4w+3.
    for (int a = 0; a < 4; a++) {
        const int hl = 4 * warp + a, h = h0 + hl;
        float4 v[4];
        float mx = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[j] = j < nj && h < n_heads
                       ? *(const float4*)(q + ((i64)t * n_heads + h) * head_dim + 128 * j + 4 * lane)
                       : make_float4(0, 0, 0, 0);
            mx = fmaxf(mx, fmaxf(fmaxf(fabsf(v[j].x), fabsf(v[j].y)), fmaxf(fabsf(v[j].z), fabsf(v[j].w))));
        }
        mx = warp_max(mx);
        const int ex = (__float_as_int(mx) >> 23) & 0xff;
        const int e = mx == 0.0f ? 126 : max(-126, min(126, 14 - (ex - 127)));
        const float up = pow2f(e);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (j < nj) {
                const float4 u = make_float4(v[j].x * up, v[j].y * up, v[j].z * up, v[j].w * up);
                u16* dst = qs + hl * QL + 128 * j + 4 * lane;
                store_parts4(dst, dst + 32 * QL, u, true);
            }
        }
        if (lane == 0) qsc[hl] = pow2f(-e);
    }
    // (1) scores.
    const int mt = warp & 1, nq = warp >> 1;
    const int n_steps = (n_keys + 63) / 64 * nj;
    float4 pre[8];
#define DS4_AM_FETCH_SCORES(st)                                                           \
    {                                                                                     \
        const int kt_ = (st) / nj * 64, dc_ = (st) % nj;                                  \
        _Pragma("unroll") for (int r = 0; r < 8; r++) {                                   \
            const int c = (tid + 256 * r) / 32, i4 = (tid + 256 * r) % 32;                \
            pre[r] = kt_ + c < n_keys                                                     \
                         ? *(const float4*)(DS4_AKEY(kt_ + c) + dc_ * 128 + 4 * i4)      \
                         : make_float4(0, 0, 0, 0);                                       \
        }                                                                                 \
    }
    // K16: 64 keys x 128 dims of f16 = 1024 16-byte copies into buffer b.
#define DS4_AM_COPY_SCORES(st, b)                                                         \
    {                                                                                     \
        const int kt_ = (st) / nj * 64, dc_ = (st) % nj;                                  \
        _Pragma("unroll") for (int r = 0; r < 4; r++) {                                   \
            const int c = (tid + 256 * r) / 16, ch = (tid + 256 * r) % 16;                \
            const bool ok = kt_ + c < n_keys;                                             \
            cp_async<16>(ks + (b) * KPART + c * KR1 + 8 * ch,                             \
                         ok ? DS4_AKEY16(kt_ + c) + dc_ * 128 + 8 * ch : raw16, ok);      \
        }                                                                                 \
        cp_async_commit();                                                                \
    }
    if (K16) {
        DS4_AM_COPY_SCORES(0, 0);
    } else {
        DS4_AM_FETCH_SCORES(0);
    }
    float acc[2][4];
    for (int st = 0; st < n_steps; st++) {
        const int kt = st / nj * 64, dc = st % nj;
        if (dc == 0) {
#pragma unroll
            for (int nt = 0; nt < 2; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
        }
        if (K16) {
            if (st + 1 < n_steps) {
                DS4_AM_COPY_SCORES(st + 1, (st + 1) & 1);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();
        } else {
            __syncthreads();
#pragma unroll
            for (int r = 0; r < 8; r++) {
                const int c = (tid + 256 * r) / 32, i4 = (tid + 256 * r) % 32;
                u16* dst = ks + c * KR1 + 4 * i4;
                store_parts4(dst, dst + KPART, pre[r], two);
            }
            __syncthreads();
            if (st + 1 < n_steps) DS4_AM_FETCH_SCORES(st + 1);
        }
        const u16* kbuf = K16 ? ks + (st & 1) * KPART : ks;
        const u16* qa = qs + (16 * mt + g) * QL + dc * 128 + 2 * t4;
#pragma unroll 2
        for (int kk = 0; kk < 128; kk += 16) {
            u32 A[2][4];
#pragma unroll
            for (int pp = 0; pp < 2; pp++) {
                const u16* b = qa + pp * 32 * QL + kk;
                A[pp][0] = *(const u32*)b;
                A[pp][1] = *(const u32*)(b + 8 * QL);
                A[pp][2] = *(const u32*)(b + 8);
                A[pp][3] = *(const u32*)(b + 8 * QL + 8);
            }
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const u16* kb = kbuf + (16 * nq + 8 * nt + g) * KR1 + kk + 2 * t4;
                const u32 b0 = *(const u32*)kb, b1 = *(const u32*)(kb + 8);
                mma16816(acc[nt], A[0][0], A[0][1], A[0][2], A[0][3], b0, b1);
                mma16816(acc[nt], A[1][0], A[1][1], A[1][2], A[1][3], b0, b1);
                if (two) {
                    const u32 c0 = *(const u32*)(kb + KPART), c1 = *(const u32*)(kb + KPART + 8);
                    mma16816(acc[nt], A[0][0], A[0][1], A[0][2], A[0][3], c0, c1);
                }
            }
        }
        if (dc == nj - 1) {
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const int c = kt + 16 * nq + 8 * nt + 2 * t4;
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const int hl = 16 * mt + g + 8 * half;
                    const float u = qsc[hl];
                    if (c < n_keys) S[hl * s_stride + c] = acc[nt][2 * half] * u * scale;
                    if (c + 1 < n_keys) S[hl * s_stride + c + 1] = acc[nt][2 * half + 1] * u * scale;
                }
            }
        }
        if (K16) __syncthreads();  // this buffer is refilled two steps on
    }
#undef DS4_AM_FETCH_SCORES
#undef DS4_AM_COPY_SCORES
    // The first tile of (3) is fetched while (2) runs: 16 keys of head_dim,
    // hd / 64 float4 per thread (zeros past the last key).
    const int f4 = head_dim / 4, per = head_dim / 64;
#define DS4_AM_FETCH_ROWS(kt)                                                             \
    {                                                                                     \
        _Pragma("unroll") for (int r = 0; r < 8; r++) {                                   \
            const int c = (tid + 256 * r) / f4, i4 = (tid + 256 * r) % f4;                \
            if (r < per)                                                                  \
                pre[r] = (kt) + c < n_keys ? *(const float4*)(DS4_AKEY((kt) + c) + 4 * i4) \
                                           : make_float4(0, 0, 0, 0);                     \
        }                                                                                 \
    }
    // K16: 16 keys x head_dim of f16 = hd / 128 16-byte copies per thread.
    const int cpr = head_dim / 8, per16 = head_dim / 128;
#define DS4_AM_COPY_ROWS(kt, b)                                                           \
    {                                                                                     \
        _Pragma("unroll") for (int r = 0; r < 4; r++) {                                   \
            const int c = (tid + 256 * r) / cpr, ch = (tid + 256 * r) % cpr;              \
            const bool ok = (kt) + c < n_keys;                                            \
            if (r < per16)                                                                \
                cp_async<16>(ks + (b) * KPART + c * KR3 + 8 * ch,                         \
                             ok ? DS4_AKEY16((kt) + c) + 8 * ch : raw16, ok);             \
        }                                                                                 \
        cp_async_commit();                                                                \
    }
    if (K16) {
        DS4_AM_COPY_ROWS(0, 0);
    } else {
        DS4_AM_FETCH_ROWS(0);
    }
    __syncthreads();
    // (2) softmax weights, and zeros up to the next multiple of 16 keys.
    const int n_pad = (n_keys + 15) & ~15;
    for (int a = 0; a < 4; a++) {
        const int hl = 4 * warp + a;
        float* sh = S + hl * s_stride;
        const float sink = sinks[min(h0 + hl, n_heads - 1)];
        float m = sink;
        for (int c = lane; c < n_keys; c += DS4_WARP) m = fmaxf(m, sh[c]);
        m = warp_max(m);
        float l = 0.0f;
        for (int c = lane; c < n_keys; c += DS4_WARP) {
            const float e = expf(sh[c] - m);
            sh[c] = e;
            l += e;
        }
        for (int c = n_keys + lane; c < n_pad; c += DS4_WARP) sh[c] = 0.0f;
        l = warp_sum(l);
        if (lane == 0) den[hl] = expf(sink - m) + l;
    }
    // (3) weighted sum of the keys: warp w, dims 64 w..64 w + 63.
    float o[2][8][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int n = 0; n < 8; n++) o[a][n][0] = o[a][n][1] = o[a][n][2] = o[a][n][3] = 0.0f;
    const bool active = 64 * warp < head_dim;
    // This lane's ldmatrix row: matrix lane / 8 = (key half, dim half).
    const int lm = lane >> 3, lr = lane & 7;
    const u16* krow = ks + ((lm & 1) * 8 + lr) * KR3 + 64 * warp + (lm >> 1) * 8;
    for (int kt = 0; kt < n_keys; kt += 16) {
        if (K16) {
            if (kt + 16 < n_keys) {
                DS4_AM_COPY_ROWS(kt + 16, ((kt >> 4) + 1) & 1);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();
        } else {
            __syncthreads();
#pragma unroll
            for (int r = 0; r < 8; r++) {
                const int c = (tid + 256 * r) / f4, i4 = (tid + 256 * r) % f4;
                if (r < per) {
                    u16* dst = ks + c * KR3 + 4 * i4;
                    store_parts4(dst, dst + KPART, pre[r], two);
                }
            }
            __syncthreads();
            if (kt + 16 < n_keys) DS4_AM_FETCH_ROWS(kt + 16);
        }
        const u16* kr = krow + (K16 ? ((kt >> 4) & 1) * KPART : 0);
        if (!active) {
            if (K16) __syncthreads();
            continue;
        }
        u32 A[2][2][4];  // m-tile, part
#pragma unroll
        for (int a = 0; a < 2; a++) {
            const float* s0 = S + (16 * a + g) * s_stride + kt + 2 * t4;
            const float2 p00 = *(const float2*)s0, p10 = *(const float2*)(s0 + 8 * s_stride);
            const float2 p01 = *(const float2*)(s0 + 8), p11 = *(const float2*)(s0 + 8 * s_stride + 8);
            u32 h[8], l[8];
            split2(p00.x, h[0], l[0]);
            split2(p00.y, h[1], l[1]);
            split2(p10.x, h[2], l[2]);
            split2(p10.y, h[3], l[3]);
            split2(p01.x, h[4], l[4]);
            split2(p01.y, h[5], l[5]);
            split2(p11.x, h[6], l[6]);
            split2(p11.y, h[7], l[7]);
#pragma unroll
            for (int r = 0; r < 4; r++) {
                A[a][0][r] = pack16(h[2 * r], h[2 * r + 1]);
                A[a][1][r] = pack16(l[2 * r], l[2 * r + 1]);
            }
        }
#pragma unroll
        for (int np = 0; np < 4; np++) {
            u32 B[4], C[4];
            ldsm4t(B, kr + 16 * np);
            if (two) ldsm4t(C, kr + KPART + 16 * np);
#pragma unroll
            for (int a = 0; a < 2; a++) {
#pragma unroll
                for (int hn = 0; hn < 2; hn++) {
                    float* d = o[a][2 * np + hn];
                    mma16816(d, A[a][0][0], A[a][0][1], A[a][0][2], A[a][0][3], B[2 * hn], B[2 * hn + 1]);
                    mma16816(d, A[a][1][0], A[a][1][1], A[a][1][2], A[a][1][3], B[2 * hn], B[2 * hn + 1]);
                    if (two)
                        mma16816(d, A[a][0][0], A[a][0][1], A[a][0][2], A[a][0][3], C[2 * hn],
                                 C[2 * hn + 1]);
                }
            }
        }
        if (K16) __syncthreads();  // this buffer is refilled two tiles on
    }
#undef DS4_AM_FETCH_ROWS
#undef DS4_AM_COPY_ROWS
#undef DS4_AKEY16
#undef DS4_AKEY
    if (!active) return;
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int hl = 16 * a + g + 8 * half, h = h0 + hl;
            if (h >= n_heads) continue;
            const float d = den[hl];
            float* oh = out + ((i64)t * n_heads + h) * head_dim + 64 * warp + 2 * t4;
#pragma unroll
            for (int n = 0; n < 8; n++)
                *(float2*)(oh + 8 * n) = make_float2(o[a][n][2 * half] / d, o[a][n][2 * half + 1] / d);
        }
}

extern "C" __global__ void __launch_bounds__(256) attend_mma(float* __restrict__ out, const float* __restrict__ q, const float* __restrict__ raw, int raw_cap, const float* __restrict__ comp, int ratio, const int* __restrict__ sel, int top_k, const float* __restrict__ sinks, int n_heads, int head_dim, int window, int pos0, float scale, int s_stride) {
    ds4_pdl_enter();
    attend_mma_impl<false>(out, q, raw, 0, raw_cap, comp, 0, ratio, sel, top_k, sinks, n_heads,
                           head_dim, window, pos0, scale, s_stride);
}

// The keys as f16 copies of the cache (official numerics: every cached row
// is f16, so the copy is exact): copied by cp.async into two buffers, one
// filling while the other is multiplied, with no conversion.
extern "C" __global__ void __launch_bounds__(256, 1) attend_mma_f16(float* __restrict__ out, const float* __restrict__ q, const u16* __restrict__ raw16, int raw_cap, const u16* __restrict__ comp16, int ratio, const int* __restrict__ sel, int top_k, const float* __restrict__ sinks, int n_heads, int head_dim, int window, int pos0, float scale, int s_stride) {
    ds4_pdl_enter();
    attend_mma_impl<true>(out, q, 0, raw16, raw_cap, 0, comp16, ratio, sel, top_k, sinks, n_heads,
                          head_dim, window, pos0, scale, s_stride);
}

// dst = src as f16 (round to nearest even), n a multiple of 4.
extern "C" __global__ void to_f16(u16* __restrict__ dst, const float* __restrict__ src, i64 n) {
    ds4_pdl_enter();
    const i64 i = 4 * ((i64)blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n) return;
    const float4 v = *(const float4*)(src + i);
    *(uint2*)(dst + i) = make_uint2(pack16(f2h(v.x), f2h(v.y)), pack16(f2h(v.z), f2h(v.w)));
}

#define DS4_COMBINE_MAX 512

// Folds the chunks of attend_part, in chunk order: M = max_c m_c,
// den = e^(sink-M) + sum_c l_c e^(m_c-M), out = sum_c e^(m_c-M) o_c / den.
// Grid (heads, T); a thread per 4 dims. The chunks' (m, l) pairs are staged
// in shared memory by one load per thread and each e^(m_c-M) is formed
// once: a decode step has ~27 chunks per head, whose loads would otherwise
// be a serial chain in every thread. The operations and their order are
// those of the path for more chunks than fit, below.
extern "C" __global__ void attend_combine(float* __restrict__ out,
                                          const float* __restrict__ part_o,
                                          const float* __restrict__ part_ml,
                                          const float* __restrict__ sinks, int n_heads,
                                          int head_dim, int n_chunks) {
    __shared__ float ml[2 * DS4_COMBINE_MAX];
    __shared__ float wx[DS4_COMBINE_MAX];
    ds4_pdl_enter();
    const int h = blockIdx.x, t = blockIdx.y;
    const i64 slot0 = ((i64)t * n_heads + h) * n_chunks;
    const float sink = sinks[h];
    float* o = out + ((i64)t * n_heads + h) * head_dim;
    if (n_chunks <= DS4_COMBINE_MAX) {
        for (int i = threadIdx.x; i < 2 * n_chunks; i += blockDim.x) ml[i] = part_ml[2 * slot0 + i];
        __syncthreads();
        float mx = sink;
        for (int c = 0; c < n_chunks; c++) mx = fmaxf(mx, ml[2 * c]);
        for (int c = threadIdx.x; c < n_chunks; c += blockDim.x) wx[c] = expf(ml[2 * c] - mx);
        __syncthreads();
        float den = expf(sink - mx);
        for (int c = 0; c < n_chunks; c++) den += ml[2 * c + 1] * wx[c];
        for (int f = threadIdx.x; f < head_dim / 4; f += blockDim.x) {
            float4 acc = make_float4(0, 0, 0, 0);
            for (int c = 0; c < n_chunks; c++) {
                const float w = wx[c];
                const float4 v = *(const float4*)(part_o + (slot0 + c) * head_dim + 4 * f);
                acc.x = fmaf(w, v.x, acc.x);
                acc.y = fmaf(w, v.y, acc.y);
                acc.z = fmaf(w, v.z, acc.z);
                acc.w = fmaf(w, v.w, acc.w);
            }
            *(float4*)(o + 4 * f) = make_float4(acc.x / den, acc.y / den, acc.z / den, acc.w / den);
        }
        return;
    }
    float mx = sink;
    for (int c = 0; c < n_chunks; c++) mx = fmaxf(mx, part_ml[2 * (slot0 + c)]);
    float den = expf(sink - mx);
    for (int c = 0; c < n_chunks; c++)
        den += part_ml[2 * (slot0 + c) + 1] * expf(part_ml[2 * (slot0 + c)] - mx);
    for (int f = threadIdx.x; f < head_dim / 4; f += blockDim.x) {
        float4 acc = make_float4(0, 0, 0, 0);
        for (int c = 0; c < n_chunks; c++) {
            const float w = expf(part_ml[2 * (slot0 + c)] - mx);
            const float4 v = *(const float4*)(part_o + (slot0 + c) * head_dim + 4 * f);
            acc.x = fmaf(w, v.x, acc.x);
            acc.y = fmaf(w, v.y, acc.y);
            acc.z = fmaf(w, v.z, acc.z);
            acc.w = fmaf(w, v.w, acc.w);
        }
        *(float4*)(o + 4 * f) = make_float4(acc.x / den, acc.y / den, acc.z / den, acc.w / den);
    }
}
