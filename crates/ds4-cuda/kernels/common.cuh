// Shared helpers of every ds4 kernel. No system headers: NVRTC compiles this
// without an include path, and the f16 conversions are single PTX
// instructions anyway.
//
// Determinism: every reduction below runs in a fixed order (xor butterflies
// inside a warp, fixed trees across warps) and no kernel uses float atomics,
// so a launch gives bit-identical results run after run.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define DS4_WARP 32
#define DS4_FULL_MASK 0xffffffffu

// +infinity without <math.h>.
#define DS4_INF __int_as_float(0x7f800000)

// Compressor scores start at ds4's "minus infinity" (kv.rs NEG_INF).
#define DS4_NEG_INF (-1e30f)

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// f32 -> binary16 (round to nearest even) -> f32, as numerics::f16_round.
__device__ __forceinline__ float f16_round(float x) { return h2f(f2h(x)); }

// Little-endian f16 at any 2-byte aligned address.
__device__ __forceinline__ float load_f16(const u8* p) {
    return h2f(*(const u16*)p);
}

// A u32 from two 2-byte aligned halves (IQ2_XXS blocks are 66 bytes, so
// their words are not 4-byte aligned).
__device__ __forceinline__ u32 load_u32_a2(const u8* p) {
    const u16* h = (const u16*)p;
    return (u32)h[0] | ((u32)h[1] << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DS4_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(DS4_FULL_MASK, v, o));
    return v;
}

// Sum of one double per thread over the block (blockDim.x a multiple of 32,
// at most 1024); every thread gets the result. `scratch` holds 32 doubles.
__device__ double block_sum_f64(double v, double* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DS4_FULL_MASK, v, o);
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int n_warps = blockDim.x / DS4_WARP;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double w = lane < n_warps ? scratch[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(DS4_FULL_MASK, w, o);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    double r = scratch[0];
    __syncthreads();
    return r;
}

// 1 / sqrt(mean(x^2) + eps) from a sum of squares taken in f64, as the CPU
// reference (kernels::rms_norm) does.
__device__ __forceinline__ float rms_inv(double ss, int n, float eps) {
    return (float)(1.0 / sqrt(ss / (double)n + (double)eps));
}

__device__ __forceinline__ float sigmoidf_ref(float z) { return 1.0f / (1.0f + expf(-z)); }
__device__ __forceinline__ float siluf_ref(float z) { return z * sigmoidf_ref(z); }

// ln(1 + e^z) with ds4's cut-offs (kernels::softplus).
__device__ __forceinline__ float softplusf_ref(float z) {
    if (z > 20.0f) return z;
    if (z < -20.0f) return expf(z);
    return log1pf(expf(z));
}

// ---------------------------------------------------------------------------
// Quantisation simulations of the official graph (numerics.rs). Each is
// written so that, given the same input floats, the output is bit-identical
// to the Rust reference: power-of-two scales from the exponent bits, IEEE
// divisions, round-half-even via rintf.

// 2^ceil(log2(r)) for a positive finite r (numerics::pow2_ceil).
__device__ float pow2_ceil(float r) {
    const u32 bits = __float_as_uint(r);
    const int exp_field = (bits >> 23) & 0xff;
    const u32 mantissa = bits & 0x7fffff;
    int e;
    if (exp_field == 0) {
        const int lz = __clz(mantissa) - 9;
        const int top = -127 - lz;
        e = (mantissa & (mantissa - 1)) == 0 ? top : top + 1;
    } else {
        const int fl = exp_field - 127;
        e = mantissa == 0 ? fl : fl + 1;
    }
    return ldexpf(1.0f, e);
}

// Nearest E4M3FN value to v (|v| <= 448), ties to the even code.
__device__ float e4m3_nearest(float v) {
    const float a = fabsf(v);
    float step;
    if (a < 0.015625f) {
        step = 0.001953125f;  // subnormal spacing 2^-9
    } else {
        const int fl = (int)((__float_as_uint(a) >> 23) & 0xff) - 127;
        step = ldexpf(1.0f, fl - 3);
    }
    const float q = fminf(rintf(a / step) * step, 448.0f);
    return copysignf(q, v);
}

// Nearest E2M1 magnitude to a (0 <= a <= 6), ties to the even code index.
__device__ float e2m1_nearest(float a) {
    if (a <= 0.25f) return 0.0f;
    if (a < 0.75f) return 0.5f;
    if (a <= 1.25f) return 1.0f;
    if (a < 1.75f) return 1.5f;
    if (a <= 2.5f) return 2.0f;
    if (a < 3.5f) return 3.0f;
    if (a <= 5.0f) return 4.0f;
    return 6.0f;
}

// FP8-E4M3 round trip of one block of `n` <= 64 values at `blk`, by one
// warp (lane handles elements lane and lane + 32).
__device__ void fp8_block_warp(float* blk, int n) {
    const int lane = threadIdx.x % DS4_WARP;
    const float x0 = lane < n ? blk[lane] : 0.0f;
    const float x1 = lane + 32 < n ? blk[lane + 32] : 0.0f;
    const float amax = fmaxf(warp_max(fmaxf(fabsf(x0), fabsf(x1))), 1e-4f);
    const float scale = pow2_ceil(amax / 448.0f);
    if (lane < n) blk[lane] = e4m3_nearest(fminf(fmaxf(x0 / scale, -448.0f), 448.0f)) * scale;
    if (lane + 32 < n)
        blk[lane + 32] = e4m3_nearest(fminf(fmaxf(x1 / scale, -448.0f), 448.0f)) * scale;
}

// FP8 round trip of row[0..n_nope) in blocks of 64, spread over the warps
// of the calling block. Callers synchronise around it.
__device__ void fp8_row_block(float* row, int n_nope) {
    const int warp = threadIdx.x / DS4_WARP, n_warps = blockDim.x / DS4_WARP;
    for (int b = warp; b * 64 < n_nope; b += n_warps) {
        const int n = min(64, n_nope - b * 64);
        fp8_block_warp(row + b * 64, n);
    }
}

// FP4-E2M1 round trip of one value per lane forming a block of 32.
__device__ __forceinline__ float fp4_lane(float x) {
    const float amax = fmaxf(warp_max(fabsf(x)), 7.052966104933725e-38f);
    const float scale = pow2_ceil(amax / 6.0f);
    const float v = fminf(fmaxf(x / scale, -6.0f), 6.0f);
    return copysignf(e2m1_nearest(fabsf(v)), v) * scale;
}

// Orthonormal Walsh-Hadamard transform of a 128-wide row by one warp, then
// (if fp4) the FP4 round trip in blocks of 32. Lane l holds elements
// l + 32j; butterflies keep numerics::hadamard's (a + b, a - b) order.
__device__ void hadamard128_warp(float* row, bool fp4) {
    const int lane = threadIdx.x % DS4_WARP;
    float v[4];
    for (int j = 0; j < 4; j++) v[j] = row[lane + 32 * j];
    for (int h = 1; h < 32; h <<= 1) {
        const bool upper = (lane & h) != 0;
        for (int j = 0; j < 4; j++) {
            const float other = __shfl_xor_sync(DS4_FULL_MASK, v[j], h);
            v[j] = upper ? other - v[j] : v[j] + other;
        }
    }
    for (int h = 1; h < 4; h <<= 1) {
        for (int j = 0; j < 4; j++) {
            if ((j & h) == 0) {
                const float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
        }
    }
    const float s = (float)0.08838834764831845;  // 1/sqrt(128), rounded once as in Rust
    for (int j = 0; j < 4; j++) v[j] *= s;
    if (fp4) {
        for (int j = 0; j < 4; j++) v[j] = fp4_lane(v[j]);
    }
    for (int j = 0; j < 4; j++) row[lane + 32 * j] = v[j];
}

// Rotates the trailing 2*n_pairs dims of a row of `width` (interleaved
// pairs) by position `pos`; pair k is handled by the thread with index k in
// [0, n_pairs). numerics::Rope::apply computes theta = pos * inv_freq[k] in f32.
__device__ __forceinline__ void rope_pair(float* row, int width, int n_pairs, int k,
                                          const float* inv_freq, int pos, bool inverse) {
    const float theta = (float)pos * inv_freq[k];
    float s, c;
    sincosf(theta, &s, &c);
    if (inverse) s = -s;
    const int i = width - 2 * n_pairs + 2 * k;
    const float x0 = row[i], x1 = row[i + 1];
    row[i] = x0 * c - x1 * s;
    row[i + 1] = x0 * s + x1 * c;
}

// Programmatic dependent launch (Hopper): the host may launch the next kernel
// of the stream before this one ends, so that its launch latency overlaps our
// tail. Every kernel calls this before touching memory that earlier kernels
// write: `wait` returns once the previous kernel has completed and its writes
// are visible (at once when the launch was an ordinary one), and only then do
// we let our own dependents launch, so at most one kernel waits behind a
// running one. Weights never change while a model is open, so a kernel may
// load them (or build tables from constants) before the wait.
__device__ __forceinline__ void ds4_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void ds4_pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void ds4_pdl_enter() {
    ds4_pdl_wait();
    ds4_pdl_launch_dependents();
}

// Asks L2 to fetch [p, p + n) ahead of its use (sm_90 bulk prefetch; the
// range is widened to 16-byte bounds), in 32 KB pieces over a warp's lanes.
// Weights never change while a model is open, so a kernel may do this before
// ds4_pdl_enter, while its predecessor still runs.
__device__ __forceinline__ void prefetch_l2(const u8* p, u64 n, int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const u64 a = (u64)p & ~(u64)15, e = ((u64)p + n + 15) & ~(u64)15;
    const u64 piece = 32768;
    for (u64 q = a + (u64)lane * piece; q < e; q += DS4_WARP * piece) {
        const u32 len = (u32)min(piece, e - q);
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(q), "r"(len) : "memory");
    }
#endif
}

// ---------------------------------------------------------------------------
// Tensor-core helpers (prefill GEMMs and attention).

__device__ __forceinline__ u32 pack16(u32 lo, u32 hi) { return (lo & 0xffff) | (hi << 16); }

// x (already scaled into f16 range) -> two f16 parts with x ~ a + b.
__device__ __forceinline__ void split2(float x, u32& a, u32& b) {
    a = f2h(x);
    b = f2h(x - h2f((u16)a));
}

// 2^e (-126 <= e <= 127) as an f32.
__device__ __forceinline__ float pow2f(int e) { return __int_as_float((e + 127) << 23); }

// D += A * B on the tensor cores, m16n8k16, f16 inputs, f32 accumulate.
__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                         u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_u32(const void* p) {
    u64 a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (u32)a;
}

// Four 8x8 b16 matrices from shared memory: lane l gives the (16-byte
// aligned) row address of matrix l / 8, row l % 8; register m holds, for
// this lane, elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of
// matrix m -- an mma fragment.
__device__ __forceinline__ void ldsm4(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// The same, transposed: register m holds elements (2 (l % 4), l / 4) and
// (2 (l % 4) + 1, l / 4) of matrix m.
__device__ __forceinline__ void ldsm4t(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// Asynchronous global -> shared copies of `n` bytes (16 or 8); `valid`
// false writes zeros (the source is not read).
template <int N>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(smem_u32(dst)), "l"(src),
                 "n"(N), "r"(valid ? N : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
