// The mixture-of-experts sublayer (MODEL.md 3.8).

#define DS4_MAX_USED 16

// Routing, one thread per token: scores s = sqrt(softplus(logit)); experts
// from tid2eid (hash layers, when tid2eid != 0) or the top-k of s + bias
// (strict > insertion, so the lower expert id wins ties, as kernels::top_k);
// weights s[e] / max(sum, 2^-14) * w_scale. `scores` is [T x n_expert] scratch.
extern "C" __global__ void route(const float* __restrict__ logits, float* __restrict__ scores,
                                 const float* __restrict__ bias,
                                 const int* __restrict__ tid2eid,
                                 const int* __restrict__ tokens, int* __restrict__ ids,
                                 float* __restrict__ weights, int n_tokens, int n_expert,
                                 int k, float w_scale) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_tokens) return;
    const float* l = logits + (i64)t * n_expert;
    float* s = scores + (i64)t * n_expert;
    for (int e = 0; e < n_expert; e++) s[e] = sqrtf(softplusf_ref(l[e]));
    int chosen[DS4_MAX_USED];
    if (tid2eid) {
        for (int j = 0; j < k; j++) chosen[j] = tid2eid[(i64)tokens[t] * k + j];
    } else {
        float val[DS4_MAX_USED];
        int kept = 0;
        for (int e = 0; e < n_expert; e++) {
            const float v = bias ? s[e] + bias[e] : s[e];
            // Insert after every kept value >= v.
            int at = 0;
            while (at < kept && val[at] >= v) at++;
            if (at >= k) continue;
            const int last = kept < k ? kept : k - 1;
            for (int m = last; m > at; m--) {
                val[m] = val[m - 1];
                chosen[m] = chosen[m - 1];
            }
            val[at] = v;
            chosen[at] = e;
            if (kept < k) kept++;
        }
    }
    float sum = 0.0f;
    for (int j = 0; j < k; j++) sum += s[chosen[j]];
    const float norm = fmaxf(sum, 6.103515625e-5f);
    for (int j = 0; j < k; j++) {
        ids[(i64)t * k + j] = chosen[j];
        weights[(i64)t * k + j] = s[chosen[j]] / norm * w_scale;
    }
}

// h = w * silu(min(g, c)) * clamp(u, -c, c) per item (weights may be null: 1).
extern "C" __global__ void swiglu(float* __restrict__ h, const float* __restrict__ g,
                                  const float* __restrict__ u, const float* __restrict__ w,
                                  int width, float clamp) {
    const int item = blockIdx.y;
    const float wt = w ? w[item] : 1.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < width; i += gridDim.x * blockDim.x) {
        const i64 at = (i64)item * width + i;
        h[at] = wt * siluf_ref(fminf(g[at], clamp)) * fminf(fmaxf(u[at], -clamp), clamp);
    }
}

// out[t] = sum_j y[t*k + j] (in j order) + shared[t].
extern "C" __global__ void sum_experts(float* __restrict__ out, const float* __restrict__ y,
                                       const float* __restrict__ shared, int d, int k) {
    const int t = blockIdx.y;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += gridDim.x * blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < k; j++) o += y[((i64)t * k + j) * d + i];
        o += shared[(i64)t * d + i];
        out[(i64)t * d + i] = o;
    }
}
