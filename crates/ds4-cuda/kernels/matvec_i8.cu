// Decode GEMVs of the routed experts (IQ2_XXS gate/up, Q2_K down) on int8
// activation planes, summed with dp4a.
//
// The f32 kernels of matvec.cu spend ~5 instructions per weight turning
// 2-bit codes into floats (byte permute, subtraction, sign select, FMA) and
// are issue-bound (Nsight, docs/bench r20). Here each block first writes
// its activation row into shared memory as three int8 planes per 32-value
// group: with 2^(e+6) > max |x| of the group,
//
//     x = 2^e (q1 + q2 / 2^7 + q3 / 2^14) + r,   |qi| <= 64,  |r| <= 2^(e-15),
//
// i.e. x kept to 21 bits below the group's largest value (the prefill
// GEMMs' two f16 parts keep 22). Every step is exact in f32 (power-of-two
// scalings, residuals that fit the mantissa) but the last rounding; e is
// clamped to [-100, 100] (finite activations below 2^100 assumed: a NaN or
// infinity gives a wrong finite sum here, not a NaN; the residual stream
// still carries it). A weight
// group's dot with that x is then one int32,
//
//     S = ((sum w q1) 2^7 + sum w q2) 2^7 + sum w q3     (|S| < 2^31 here),
//
// three dp4a chains, scaled once by the weight scale and 2^(e-14). Integer
// sums do not depend on their order: runs are bit-identical, and the sum
// is exact for the planes' x. An IQ2_XXS word of 4 signed weights costs one
// byte permute (its selector from two table lookups), a Q2_K word a shift
// and a mask.
//
// Memory latency limits these launches as much as issue (Nsight, docs/bench
// r42, r45: long-scoreboard stalls at 16 warps per SM), so a block issues
// the weight loads of its first pass before it quantises x, and those of
// pass p + 1 before it computes pass p.
//
// Plane layout, per 32-value group (DS4_XQ_STRIDE = 112 bytes):
//   [q1: 32 B][q2: 32 B][q3: 32 B][2^(e-14): f32][sum of the first 16 and
//   of the last 16 values of the planes' x: 2 x f32][pad: 4 B]
// with 32 more bytes after every 8 groups (`xq_group`), so that the 8 lanes
// of a 16-byte load phase hit distinct banks both for consecutive groups
// (IQ2_XXS) and for Q2_K's pattern (groups 0, 4, 8, 12 + j, two halves).

#define DS4_XQ_STRIDE 112
#define DS4_XQ_BYTES (DS4_XS_MAX / 32 * DS4_XQ_STRIDE + DS4_XS_MAX / 256 * 32)

__device__ __forceinline__ int xq_group(int g) { return g * DS4_XQ_STRIDE + (g >> 3) * 32; }

// One group of 32 values, one per lane, into its planes (see above).
__device__ __forceinline__ void plane_group(float v, u8* __restrict__ out, int lane) {
    float a = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    // a = m 2^k with 0.5 <= m < 1: k = biased exponent - 126 (normal a).
    const int k = (int)((__float_as_uint(a) >> 23) & 0xff) - 126;
    const int e = min(max(k - 6, -100), 100);
    const float t = v * pow2f(-e);  // |t| < 64
    const float q1 = rintf(t);
    const float t2 = (t - q1) * 128.0f;  // |t2| <= 64
    const float q2 = rintf(t2);
    const float q3 = rintf((t2 - q2) * 128.0f);
    const int i1 = (int)q1, i2 = (int)q2, i3 = (int)q3;
    out[lane] = (u8)i1;
    out[32 + lane] = (u8)i2;
    out[64 + lane] = (u8)i3;
    // The planes' x in units of 2^(e-14), summed over each half: |s| < 2^24,
    // exact as a float.
    int s = (i1 << 14) + (i2 << 7) + i3;
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const float scale = pow2f(e - 14);
    if (lane == 0) *(float*)(out + 96) = scale;
    if ((lane & 15) == 0) *(float*)(out + 100 + 4 * (lane >> 4)) = (float)s * scale;
}

// The block's planes of the f32 row x (row_len values), one warp per group.
__device__ __forceinline__ void stage_planes(const float* __restrict__ x, int row_len, u8* xq) {
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int groups = row_len >> 5;
    int g = warp;
    // Four groups' loads in flight (x was just written: L2 hits).
    for (; g + 3 * DS4_GEMV_WARPS < groups; g += 4 * DS4_GEMV_WARPS) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = x[32 * (g + u * DS4_GEMV_WARPS) + lane];
#pragma unroll
        for (int u = 0; u < 4; u++)
            plane_group(v[u], xq + xq_group(g + u * DS4_GEMV_WARPS), lane);
    }
    for (; g < groups; g += DS4_GEMV_WARPS) plane_group(x[32 * g + lane], xq + xq_group(g), lane);
}

__device__ __forceinline__ int dp4a_s8(u32 a, u32 b, int c) { return __dp4a((int)a, (int)b, c); }

// Words j = 0..7 of a group's weights against the three planes (p[0..1]:
// plane 1, p[2..3]: plane 2, p[4..5]: plane 3): S as above.
__device__ __forceinline__ int planes_dot8(const u32 w[8], const uint4 p[6]) {
    int s = 0;
#pragma unroll
    for (int pl = 0; pl < 3; pl++) {
        if (pl) s <<= 7;
        s = dp4a_s8(w[0], p[2 * pl].x, s);
        s = dp4a_s8(w[1], p[2 * pl].y, s);
        s = dp4a_s8(w[2], p[2 * pl].z, s);
        s = dp4a_s8(w[3], p[2 * pl].w, s);
        s = dp4a_s8(w[4], p[2 * pl + 1].x, s);
        s = dp4a_s8(w[5], p[2 * pl + 1].y, s);
        s = dp4a_s8(w[6], p[2 * pl + 1].z, s);
        s = dp4a_s8(w[7], p[2 * pl + 1].w, s);
    }
    return s;
}

// Words 0..3 of 16 values against half `hf` of the planes (3 x uint4).
__device__ __forceinline__ int planes_dot4(const u32 w[4], const uint4 p[3]) {
    int s = 0;
#pragma unroll
    for (int pl = 0; pl < 3; pl++) {
        if (pl) s <<= 7;
        s = dp4a_s8(w[0], p[pl].x, s);
        s = dp4a_s8(w[1], p[pl].y, s);
        s = dp4a_s8(w[2], p[pl].z, s);
        s = dp4a_s8(w[3], p[pl].w, s);
    }
    return s;
}

// Formats: a format struct holds the weights of one lane's CH chunks of R
// rows (chunks c0, c0 + cstep, ...: the host makes a row exactly CH chunks
// per lane); `load` issues their loads, `add` sums them against the planes.

// IQ2_XXS: a chunk is one 32-value group (8 bytes: a0 = 4 grid indices,
// a1 = 4 sign indices + scale). A word of 4 signed weights is one byte
// permute: from the 8 bytes {8, 25, 43, 0, -8, -25, -43, 0}, selector
// nibble k = (grid code of weight k: 0, 1, 2 for 8, 25, 43) + 4 (negative).
// The selectors of a grid row (8 nibbles: `gsel`) and the sign bits of a
// sign index (bit 2 of each nibble: `ssel`) come from shared-memory tables
// held in 32 copies, lane l reading copy l (in bank l), so that a warp's
// random lookups never meet in a bank (docs/bench r44/r45: one copy of u64
// tables made these launches shared-memory bound, 16 copies left a third
// of the wavefronts to conflicts). The tables are 48 KB of dynamic shared
// memory (DS4_IQ2_TABLE_BYTES).
#define DS4_IQ2_COPIES 32
#define DS4_IQ2_TABLE_BYTES ((256 + 128) * DS4_IQ2_COPIES * 4)
#define DS4_IQ2_VALUES_POS 0x002B1908u
#define DS4_IQ2_VALUES_NEG 0x00D5E7F8u

// prmt.b32 in its default mode (the selector nibbles here never set the
// sign-replicate bit 3; __byte_perm would mask them with 0x7777 first).
__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {
    u32 d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

template <int R, int CH>
struct I8IQ2XXS {
    static constexpr int BLK = 256;
    uint2 q[CH][R];
    float d[CH][R];

    __device__ __forceinline__ void load(const u8* r0, u64 rb, int rmax, int B, int c0,
                                         int cstep) {
#pragma unroll
        for (int u = 0; u < CH; u++) {
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int c = c0 + u * cstep;
                q[u][r] = ld_w8(DS4_ROW(r) + 8 * c);
                d[u][r] = h2f(ld_nc_u16(DS4_ROW(r) + 64 * B + 2 * (c >> 3)));
            }
        }
    }

    // gsel, ssel: the tables (entry i of copy c at word i * COPIES + c);
    // copy4: 4 * this lane's copy.
    __device__ __forceinline__ void add(const u8* xq, int c0, int cstep, float* acc,
                                        const u32* gsel, const u32* ssel, u32 copy4) const {
        const char* gb = (const char*)gsel;
        const char* sb = (const char*)ssel;
#pragma unroll
        for (int u = 0; u < CH; u++) {
            const u8* xg = xq + xq_group(c0 + u * cstep);
            uint4 p[6];
#pragma unroll
            for (int i = 0; i < 6; i++) p[i] = ((const uint4*)xg)[i];
            const float xs = *(const float*)(xg + 96);
#pragma unroll
            for (int r = 0; r < R; r++) {
                const u32 a0 = q[u][r].x, a1 = q[u][r].y;
                u32 w[8];
#pragma unroll
                for (int l = 0; l < 4; l++) {
                    // Byte offsets 128 * index + copy4 (one shift, one mask-or).
                    const u32 go = (l == 0 ? a0 << 7 : a0 >> (8 * l - 7)) & (0xffu << 7);
                    const u32 so = (l == 0 ? a1 << 7 : a1 >> (7 * l - 7)) & (0x7fu << 7);
                    const u32 sel = *(const u32*)(gb + (go | copy4)) |
                                    *(const u32*)(sb + (so | copy4));
                    w[2 * l] = prmt(DS4_IQ2_VALUES_POS, DS4_IQ2_VALUES_NEG, sel);
                    w[2 * l + 1] = prmt(DS4_IQ2_VALUES_POS, DS4_IQ2_VALUES_NEG, sel >> 16);
                }
                const int sq = planes_dot8(w, p);
                const float db = d[u][r] * (0.5f + (float)(a1 >> 28)) * 0.25f;
                acc[r] = fmaf(db * xs, (float)sq, acc[r]);
            }
        }
    }
};

// Q2_K: a chunk is 16 bytes of qs = 64 values, 4 runs of 16 (32 apart, run
// j from bits 2j..2j+1), each with its scale and min: per run
// acc += d sc xs S - dmin m (sum of the planes' x over the run).
template <int R, int CH>
struct I8Q2K {
    static constexpr int BLK = 256;
    uint4 q[CH][R];
    uint2 sc[CH][R];
    u32 dd[CH][R];

    __device__ __forceinline__ void load(const u8* r0, u64 rb, int rmax, int B, int c0,
                                         int cstep) {
#pragma unroll
        for (int u = 0; u < CH; u++) {
            const int c = c0 + u * cstep;
            const int b = c >> 2, k = c & 3, h = k >> 1;
#pragma unroll
            for (int r = 0; r < R; r++) {
                const u8* blk = DS4_ROW(r) + 80 * b;
                q[u][r] = ld_stream16(blk + 16 * k);
                sc[u][r] = ld_w8(blk + 64 + 8 * h);
                dd[u][r] = ld_nc_u32(DS4_ROW(r) + 80 * B + 4 * b);
            }
        }
    }

    __device__ __forceinline__ void add(const u8* xq, int c0, int cstep, float* acc,
                                        const u32*, const u32*, u32) const {
#pragma unroll
        for (int u = 0; u < CH; u++) {
            const int c = c0 + u * cstep;
            const int b = c >> 2, k = c & 3, h = k >> 1, hf = k & 1;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                // Values 256 b + 128 h + 32 j + 16 hf + (0..15): group 8b + 4h + j, half hf.
                const u8* xg = xq + xq_group(8 * b + 4 * h + j);
                uint4 p[3];
#pragma unroll
                for (int pl = 0; pl < 3; pl++) p[pl] = *(const uint4*)(xg + 32 * pl + 16 * hf);
                const float xs = *(const float*)(xg + 96);
                const float xsum = *(const float*)(xg + 100 + 4 * hf);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    // scales byte 8h + 2j + hf: byte (2j + hf) of the 8 loaded.
                    const u32 sw = j < 2 ? sc[u][r].x : sc[u][r].y;
                    const u32 sb = (sw >> (8 * (2 * (j & 1) + hf))) & 0xff;
                    const float dl = h2f((u16)(dd[u][r] & 0xffff)) * (float)(sb & 15);
                    const float ml = h2f((u16)(dd[u][r] >> 16)) * (float)(sb >> 4);
                    u32 w[4];
                    w[0] = (q[u][r].x >> (2 * j)) & 0x03030303u;
                    w[1] = (q[u][r].y >> (2 * j)) & 0x03030303u;
                    w[2] = (q[u][r].z >> (2 * j)) & 0x03030303u;
                    w[3] = (q[u][r].w >> (2 * j)) & 0x03030303u;
                    const int sq = planes_dot4(w, p);
                    acc[r] = fmaf(-ml, xsum, fmaf(dl * xs, (float)sq, acc[r]));
                }
            }
        }
    }
};

// The GEMV driver on planes: gemv_impl's warp layout and reduction (the
// host picks these kernels only for one x row per item, row_len <=
// DS4_XS_MAX, CH chunks per lane). A block walks row batches n_blocks apart,
// loading pass p + 1 while it computes pass p; the first pass's loads go
// out before the block quantises its x row.
template <class Fmt, int R>
__device__ __forceinline__ void gemv_i8_impl(const MatJobs& js, const u32* tab0,
                                             const u32* tab1, u8* xq) {
    __shared__ float part[DS4_GEMV_WARPS][R];
    const MatJob& J = js.j[gemv_job(js)];
    const int item = blockIdx.y;
    if (item >= J.n_items) return;  // uniform over the block
    const int warp = threadIdx.x / DS4_WARP, lane = threadIdx.x % DS4_WARP;
    const int ks = J.ksplit, rgs = DS4_GEMV_WARPS / ks, s = warp % ks;
    const int batches = (J.n_rows + R - 1) / R;
    const int B = J.row_len / Fmt::BLK, c0 = lane + DS4_WARP * s, cstep = DS4_WARP * ks;
    const int stride = J.n_blocks * rgs;
    int b0 = ((int)blockIdx.x - J.block0) * rgs;
    Fmt cur, next;
    GemvRows g = gemv_rows(J, item, b0 + warp / ks, R);
    cur.load(g.r0, J.row_bytes, g.rmax, B, c0, cstep);
    stage_planes(J.x + (i64)(item / J.x_div) * J.x_stride, J.row_len, xq);
    __syncthreads();
    // Every warp runs the same passes (gemv_store may synchronise the
    // block); a batch past the end reads clamped rows and stores nothing.
    for (; b0 < batches; b0 += stride) {
        const GemvRows gn = gemv_rows(J, item, b0 + stride + warp / ks, R);
        if (b0 + stride < batches) next.load(gn.r0, J.row_bytes, gn.rmax, B, c0, cstep);
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = 0.0f;
        cur.add(xq, c0, cstep, acc, tab0, tab1, 4 * (lane % DS4_IQ2_COPIES));
        gemv_store<R>(J, item, g.row0, acc, s, warp, lane, part);
        if (ks > 1) __syncthreads();  // part[] is reused by the next pass
        cur = next;
        g = gn;
    }
}

// The selector tables depend on constants only, so they are built before
// the dependent-launch wait, overlapping the previous kernel's tail.
extern "C" __global__ void __launch_bounds__(256, 2) gemv_iq2_xxs_i8(const MatJobs js) {
    extern __shared__ __align__(16) u32 tables[];  // DS4_IQ2_TABLE_BYTES
    u32* gsel = tables;
    u32* ssel = tables + 256 * DS4_IQ2_COPIES;
    __shared__ __align__(16) u8 xq[DS4_XQ_BYTES];
    {
        const int i = threadIdx.x;
        const u64 g = ds4_iq2xxs_grid[i];
        u32 v = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const u32 b = (u32)(g >> (8 * k)) & 0xff;  // 8, 25 or 43
            v |= ((b > 8) + (b > 25)) << (4 * k);
        }
        u32 sv = 0;
        const u32 sg = ksigns_iq2xs(i & 127);
#pragma unroll
        for (int k = 0; k < 8; k++) sv |= ((sg >> k) & 1) << (4 * k + 2);
        // Copies as 16-byte stores: 4 copies of the entry per store.
        const uint4 v4 = make_uint4(v, v, v, v), s4 = make_uint4(sv, sv, sv, sv);
#pragma unroll
        for (int c = 0; c < DS4_IQ2_COPIES; c += 4) {
            *(uint4*)&gsel[i * DS4_IQ2_COPIES + c] = v4;
            if (i < 128) *(uint4*)&ssel[i * DS4_IQ2_COPIES + c] = s4;
        }
    }
    ds4_pdl_enter();
    gemv_i8_impl<I8IQ2XXS<2, 4>, 2>(js, gsel, ssel, xq);
}

extern "C" __global__ void __launch_bounds__(256, 2) gemv_q2_k_i8(const MatJobs js) {
    ds4_pdl_enter();
    __shared__ __align__(16) u8 xq[DS4_XQ_BYTES];
    gemv_i8_impl<I8Q2K<4, 1>, 4>(js, nullptr, nullptr, xq);
}
