// Embedding, RMS norms and the hyper-connection mixing (MODEL.md 3.1, 3.9).

// x[t] = the F16 embedding row of tokens[t], copied into all n_hc streams.
extern "C" __global__ void embed_f16(float* __restrict__ x, const u8* __restrict__ table,
                                     const int* __restrict__ tokens, int d, int n_hc) {
    const int t = blockIdx.y;
    const u8* row = table + (u64)tokens[t] * d * 2;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += gridDim.x * blockDim.x) {
        const float v = load_f16(row + 2 * i);
        for (int s = 0; s < n_hc; s++) x[((i64)t * n_hc + s) * d + i] = v;
    }
}

// One block per row: out = x * w / sqrt(mean(x^2) + eps), w optional. The
// sum of squares is taken in f64 like the CPU reference. In place is fine:
// each thread rewrites only the elements it read.
extern "C" __global__ void rms_norm(float* out, const float* x, const float* __restrict__ w,
                                    int width, i64 in_stride, i64 out_stride, float eps) {
    __shared__ double scratch[32];
    const float* xr = x + (i64)blockIdx.x * in_stride;
    float* o = out + (i64)blockIdx.x * out_stride;
    double ss = 0.0;
    for (int i = threadIdx.x; i < width; i += blockDim.x) ss += (double)xr[i] * (double)xr[i];
    ss = block_sum_f64(ss, scratch);
    const float inv = rms_inv(ss, width, eps);
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        const float v = xr[i] * inv;
        o[i] = w ? v * w[i] : v;
    }
}

// Per token (one thread each), from the n_mix = 2n + n^2 mix values m:
// post (n), the Sinkhorn matrix comb (n x n) and the pre weights (n),
// exactly as hc::pre of the CPU backend. mix[t] = [post | comb], pre[t] = pre.
extern "C" __global__ void hc_mix(const float* __restrict__ m, const float* __restrict__ scale,
                                  const float* __restrict__ base, float* __restrict__ mix,
                                  float* __restrict__ pre, int n_tokens, int n, int iters,
                                  float eps) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_tokens) return;
    const int n_mix = 2 * n + n * n;
    const float* mt = m + (i64)t * n_mix;
    float* out = mix + (i64)t * (n + n * n);
    float c[64];
    for (int h = 0; h < n; h++) out[h] = 2.0f * sigmoidf_ref(mt[n + h] * scale[1] + base[n + h]);
    for (int i = 0; i < n; i++) {
        float mx = -DS4_INF;
        for (int j = 0; j < n; j++) {
            const float v = mt[2 * n + i * n + j] * scale[2] + base[2 * n + i * n + j];
            c[i * n + j] = v;
            mx = fmaxf(mx, v);
        }
        float sum = 0.0f;
        for (int j = 0; j < n; j++) {
            c[i * n + j] = expf(c[i * n + j] - mx);
            sum += c[i * n + j];
        }
        for (int j = 0; j < n; j++) c[i * n + j] = c[i * n + j] / sum + eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            for (int i = 0; i < n; i++) {
                float s = 0.0f;
                for (int j = 0; j < n; j++) s += c[i * n + j];
                s += eps;
                for (int j = 0; j < n; j++) c[i * n + j] /= s;
            }
        }
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int i = 0; i < n; i++) s += c[i * n + j];
            s += eps;
            for (int i = 0; i < n; i++) c[i * n + j] /= s;
        }
    }
    for (int k = 0; k < n * n; k++) out[n + k] = c[k];
    for (int h = 0; h < n; h++) pre[(i64)t * n + h] = sigmoidf_ref(mt[h] * scale[0] + base[h]) + eps;
}

// y[t] = sum_h a[t][h] * x[t][stream h], summed in stream order.
extern "C" __global__ void hc_weighted_sum(float* __restrict__ y, const float* __restrict__ x,
                                           const float* __restrict__ a, int d, int n) {
    const int t = blockIdx.y;
    const float* xt = x + (i64)t * n * d;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int h = 0; h < n; h++) acc += a[(i64)t * n + h] * xt[(i64)h * d + i];
        y[(i64)t * d + i] = acc;
    }
}

// The output head's stream weights: a[t][h] = sigmoid(m*scale[0] + base[h]) + eps.
extern "C" __global__ void head_weights(const float* __restrict__ m,
                                        const float* __restrict__ scale,
                                        const float* __restrict__ base, float* __restrict__ a,
                                        int n_tokens, int n, float eps) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n_tokens * n) return;
    const int h = k % n;
    a[k] = sigmoidf_ref(m[k] * scale[0] + base[h]) + eps;
}

// HC-post: x'[j] = post[j] * f + sum_i comb[i][j] * x[i], into a new buffer.
extern "C" __global__ void hc_post(float* __restrict__ out, const float* __restrict__ x,
                                   const float* __restrict__ f, const float* __restrict__ mix,
                                   int d, int n) {
    const int t = blockIdx.y;
    const float* mt = mix + (i64)t * (n + n * n);
    const float* xt = x + (i64)t * n * d;
    const float* ft = f + (i64)t * d;
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < n * d; k += gridDim.x * blockDim.x) {
        const int j = k / d, i = k % d;
        float o = mt[j] * ft[i];
        for (int s = 0; s < n; s++) o += mt[n + s * n + j] * xt[(i64)s * d + i];
        out[(i64)t * n * d + k] = o;
    }
}

extern "C" __global__ void fill_f32(float* __restrict__ x, i64 n, float v) {
    for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < n; k += (i64)gridDim.x * blockDim.x)
        x[k] = v;
}
