// The mixture-of-experts sublayer (MODEL.md 3.8).

#define DS4_MAX_USED 16
#define DS4_ROUTE_REG 8

// Routing, one warp per token: scores s = sqrt(softplus(logit)); experts
// from tid2eid (hash layers, when tid2eid != 0) or the top-k of s + bias,
// taken as k rounds of a warp arg-max where the lower expert id wins ties:
// the same experts in the same order as the CPU's strict-> insertion
// (kernels::top_k). Weights s[e] / max(sum, 2^-14) * w_scale, summed in
// slot order. `scores` is [T x n_expert] scratch.
extern "C" __global__ void route(const float* __restrict__ logits, float* __restrict__ scores,
                                 const float* __restrict__ bias,
                                 const int* __restrict__ tid2eid,
                                 const int* __restrict__ tokens, int* __restrict__ ids,
                                 float* __restrict__ weights, int n_tokens, int n_expert,
                                 int k, float w_scale) {
    ds4_pdl_enter();
    const int t = blockIdx.x * (blockDim.x / DS4_WARP) + threadIdx.x / DS4_WARP;
    const int lane = threadIdx.x % DS4_WARP;
    if (t >= n_tokens) return;
    const float* l = logits + (i64)t * n_expert;
    float* s = scores + (i64)t * n_expert;
    for (int e = lane; e < n_expert; e += DS4_WARP) s[e] = sqrtf(softplusf_ref(l[e]));
    __syncwarp();
    int chosen[DS4_MAX_USED];
    if (tid2eid) {
        for (int j = 0; j < k; j++) chosen[j] = tid2eid[(i64)tokens[t] * k + j];
    } else {
        u32 taken[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // bit (e / 32) of lane e % 32
        // Up to 256 experts, a lane's candidates stay in registers for all k
        // rounds (one pass over memory instead of k).
        float vr[DS4_ROUTE_REG];
        const bool in_regs = n_expert <= DS4_ROUTE_REG * DS4_WARP;
        if (in_regs) {
#pragma unroll
            for (int q = 0; q < DS4_ROUTE_REG; q++) {
                const int e = lane + q * DS4_WARP;
                vr[q] = e < n_expert ? (bias ? s[e] + bias[e] : s[e]) : 0.0f;
            }
        }
        for (int j = 0; j < k; j++) {
            float bv = -DS4_INF;
            int bi = 0x7fffffff;
            if (in_regs) {
#pragma unroll
                for (int q = 0; q < DS4_ROUTE_REG; q++) {
                    const int e = lane + q * DS4_WARP;
                    if (e >= n_expert || ((taken[0] >> q) & 1)) continue;
                    if (vr[q] > bv || bi == 0x7fffffff) {
                        bv = vr[q];
                        bi = e;
                    }
                }
            } else {
                for (int e = lane, q = 0; e < n_expert; e += DS4_WARP, q++) {
                    if ((taken[q >> 5] >> (q & 31)) & 1) continue;
                    const float v = bias ? s[e] + bias[e] : s[e];
                    if (v > bv || bi == 0x7fffffff) {
                        bv = v;
                        bi = e;
                    }
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(DS4_FULL_MASK, bv, o);
                const int oi = __shfl_xor_sync(DS4_FULL_MASK, bi, o);
                if (ov > bv || (ov == bv && oi < bi)) {
                    bv = ov;
                    bi = oi;
                }
            }
            chosen[j] = bi;
            if (bi % DS4_WARP == lane) {
                const int q = bi / DS4_WARP;
                taken[q >> 5] |= 1u << (q & 31);
            }
        }
    }
    if (lane == 0) {
        float sum = 0.0f;
        for (int j = 0; j < k; j++) sum += s[chosen[j]];
        const float norm = fmaxf(sum, 6.103515625e-5f);
        for (int j = 0; j < k; j++) {
            ids[(i64)t * k + j] = chosen[j];
            weights[(i64)t * k + j] = s[chosen[j]] / norm * w_scale;
        }
    }
}

// h = w * silu(min(g, c)) * clamp(u, -c, c) per item; items from
// n_weighted on (the shared expert) and all items when w is null have w = 1.
extern "C" __global__ void swiglu(float* __restrict__ h, const float* __restrict__ g,
                                  const float* __restrict__ u, const float* __restrict__ w,
                                  int n_weighted, int width, float clamp) {
    ds4_pdl_enter();
    const int item = blockIdx.y;
    const float wt = (w && item < n_weighted) ? w[item] : 1.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < width; i += gridDim.x * blockDim.x) {
        const i64 at = (i64)item * width + i;
        h[at] = wt * siluf_ref(fminf(g[at], clamp)) * fminf(fmaxf(u[at], -clamp), clamp);
    }
}

// out[t] = sum_j y[t*k + j] (in j order) + shared[t].
extern "C" __global__ void sum_experts(float* __restrict__ out, const float* __restrict__ y,
                                       const float* __restrict__ shared, int d, int k) {
    ds4_pdl_enter();
    const int t = blockIdx.y;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += gridDim.x * blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < k; j++) o += y[((i64)t * k + j) * d + i];
        o += shared[(i64)t * d + i];
        out[(i64)t * d + i] = o;
    }
}
