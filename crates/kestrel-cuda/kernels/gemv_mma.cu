// gemv_mma.cu: the decode GEMV over 4- to 6-bit block-quantized weights (Q4_0, Q5_0, Q4_K, Q6_K, in
// the planes of quant_formats.cuh / quant_kformats.cuh) on the tensor cores, bf16 activations, for
// 1..8 tokens: the same function, fusions and modes as gemv_quant.cu (gemv_tiled.cuh). gemv_quant.cu
// decodes every weight to f32 and multiplies it in an FFMA (~3 instructions a weight: its 4-bit GEMVs
// reach 0.7-1.6 TB/s, bound by arithmetic). Here two quants become a bf16 pair by one byte permute
// (0x43 as the high byte: bf16(128 + q), exact for q < 128) and one bf16x2 FMA (minus 128 + OFF:
// exact, the quant's own value), and mma.m16n8k16 (f32 accumulation) multiplies them by x, 16 weights
// of 16 rows an instruction; the block scales go on the four f32 results a lane holds per block, and
// Q4_K's mins on the block's sums of x (staged once per block, f32). Products exact, sums f32: the
// result differs from gemv_quant.cu's in summation order only. (Folding the offset into the f32
// results instead, s * (C - (128 + OFF) * sum x), cancels ~7 bits: outputs near zero lost 13 bf16
// steps; measured, H200.)
#include "gemv_mma.cuh"

// Stages T rows of x (normalised with NORM) at a stride of in_features + MMA_XPAD values, and with
// SUMS the sums of each 16 of them (f32) after the rows: xsum[t * (in_features / 16) + j].
template <bool NORM, bool SUMS>
__device__ __forceinline__ void mma_stage_x(bf16 *xs, const bf16 *__restrict__ x,
                                            const float *__restrict__ norm_w, float eps, int T,
                                            int in_features) {
    __shared__ float red[MMA_WARPS][8];
    const int chunks = in_features >> 3, stride = (in_features + MMA_XPAD) >> 3;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint4 *xv = reinterpret_cast<uint4 *>(xs);
    const uint4 *src = reinterpret_cast<const uint4 *>(x);
    for (int t = 0; t < T; ++t) {
        float ss = 0.0f;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
            const uint4 raw = src[t * chunks + c];
            xv[t * stride + c] = raw;
            if constexpr (NORM) {
                float v[8];
                unpack_bf16x8(raw, v);
#pragma unroll
                for (int i = 0; i < 8; ++i) ss = fmaf(v[i], v[i], ss);
            }
        }
        if constexpr (NORM) {
            ss = warp_sum(ss);
            if (lane == 0) red[warp][t] = ss;
        }
    }
    __syncthreads();
    if constexpr (NORM) {
        const float4 *wn = reinterpret_cast<const float4 *>(norm_w);
        for (int t = 0; t < T; ++t) {
            float s = 0.0f;
            for (int w = 0; w < MMA_WARPS; ++w) s += red[w][t];
            const float inv = rsqrtf(s / (float)in_features + eps);
            for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
                const float4 w0 = wn[2 * c], w1 = wn[2 * c + 1];
                const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
                float v[8];
                unpack_bf16x8(xv[t * stride + c], v);  // written above by this same thread
#pragma unroll
                for (int i = 0; i < 8; ++i) v[i] = wv[i] * round_bf16(v[i] * inv);
                xv[t * stride + c] = pack_bf16x8(v);
            }
        }
        __syncthreads();
    }
    if constexpr (!SUMS) return;
    float *xsum = reinterpret_cast<float *>(xv + T * stride);
    const int sixteens = in_features >> 4;
    for (int i = threadIdx.x; i < T * sixteens; i += blockDim.x) {
        const int t = i / sixteens, j = i - t * sixteens;
        float a[8], b[8];
        unpack_bf16x8(xv[t * stride + 2 * j], a);
        unpack_bf16x8(xv[t * stride + 2 * j + 1], b);
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) s += a[k] + b[k];
        xsum[i] = s;
    }
    __syncthreads();
}

// One chunk of RT row tiles: the block's two mmas per tile (quants minus OFF, exact), then its
// scales into acc; Q4_K's mins times the block's sums of x (xsum0 / xsum1: tokens 2t, 2t + 1).
template <class M, int RT>
__device__ __forceinline__ void mma_chunk(const typename M::Raw (&raw)[RT][2], const bf16 *xrow,
                                          const float *xsum0, const float *xsum1, int c, int t,
                                          float (&acc)[RT][4]) {
    const uint2 b0 = *reinterpret_cast<const uint2 *>(xrow + 32 * c + 4 * t);
    const uint2 b1 = *reinterpret_cast<const uint2 *>(xrow + 32 * c + 16 + 4 * t);
#pragma unroll
    for (int r = 0; r < RT; ++r) {
        unsigned lo_g, hi_g, lo_h, hi_h;
        M::bytes(raw[r][0], t, lo_g, hi_g);
        M::bytes(raw[r][1], t, lo_h, hi_h);
        const float3 sg = M::scales(raw[r][0]), sh = M::scales(raw[r][1]);
        float c0[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_a<M::OFF>(c0, lo_g, lo_h, b0);
        if constexpr (M::SPLIT) {
            float c1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            mma_a<M::OFF>(c1, hi_g, hi_h, b1);
            acc[r][0] = fmaf(sg.y, c1[0], fmaf(sg.x, c0[0], acc[r][0]));
            acc[r][1] = fmaf(sg.y, c1[1], fmaf(sg.x, c0[1], acc[r][1]));
            acc[r][2] = fmaf(sh.y, c1[2], fmaf(sh.x, c0[2], acc[r][2]));
            acc[r][3] = fmaf(sh.y, c1[3], fmaf(sh.x, c0[3], acc[r][3]));
        } else {
            mma_a<M::OFF>(c0, hi_g, hi_h, b1);
            if constexpr (M::MIN) {
                const float xa = xsum0[2 * c] + xsum0[2 * c + 1];
                const float xb = xsum1[2 * c] + xsum1[2 * c + 1];
                acc[r][0] = fmaf(-sg.z, xa, acc[r][0]);
                acc[r][1] = fmaf(-sg.z, xb, acc[r][1]);
                acc[r][2] = fmaf(-sh.z, xa, acc[r][2]);
                acc[r][3] = fmaf(-sh.z, xb, acc[r][3]);
            }
            acc[r][0] = fmaf(sg.x, c0[0], acc[r][0]);
            acc[r][1] = fmaf(sg.x, c0[1], acc[r][1]);
            acc[r][2] = fmaf(sh.x, c0[2], acc[r][2]);
            acc[r][3] = fmaf(sh.x, c0[3], acc[r][3]);
        }
    }
}

template <class M, bool SILU, bool NORM>
__device__ __forceinline__ void gemv_mma(bf16 *y, const bf16 *__restrict__ x, const QuantPlanes p,
                                         const float *__restrict__ bias,
                                         const float *__restrict__ norm_w, float eps, int T,
                                         int rows, int mode, int k_split, int ldy) {
    constexpr int RT = SILU ? 2 : 1;  // row tiles per group: SwiGLU's gate and up
    constexpr int SB = MmaStage<M>::BYTES;
    extern __shared__ uint4 mma_smem[];
    __shared__ float partial[MMA_WARPS][RT * 4][32];
    const int in_features = p.in_features;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int group = warp / k_split, slice = warp - group * k_split;
    const int row0 = (blockIdx.x * (MMA_WARPS / k_split) + group) * 16;
    const int chunks = in_features / 32;
    // K-slices of whole rounds (MMA_U chunks: 128 bytes of qs, one K-quant super-block)
    const int per = ((chunks + k_split - 1) / k_split + MMA_U - 1) / MMA_U * MMA_U;
    const int c_begin = slice * per, c_end = min(chunks, c_begin + per);
    const int stride = in_features + MMA_XPAD, sixteens = in_features >> 4;
    const int x_bytes = (T * stride * 2 + T * sixteens * 4 + 15) & ~15;
    // this warp's two buffers of RT staged tiles, after the staged x
    unsigned char *stages =
        reinterpret_cast<unsigned char *>(mma_smem) + x_bytes + warp * (2 * RT * SB);
    // rows past the end re-read the last row (dropped at the end); SwiGLU's up rows are rows below
    const int rg = min(row0 + g, rows - 1), rh = min(row0 + g + 8, rows - 1);

    // The weights do not depend on the previous kernel: the first round is in flight before the wait
    unsigned sup[RT][2], sup_next[RT][2];
#pragma unroll
    for (int r = 0; r < RT; ++r) {
        if (c_begin < c_end) {
            mma_issue<M>(stages + r * SB, p, row0, rows, r * rows, c_begin, c_end, lane);
            mma_super<M>(sup[r], p, rg + r * rows, rh + r * rows, c_begin);
        }
    }
    cp_async_commit();
    pdl_wait();
    pdl_launch_dependents();

    bf16 *xs = reinterpret_cast<bf16 *>(mma_smem);
    mma_stage_x<NORM, M::MIN>(xs, x, norm_w, eps, T, in_features);
    const float *xsum = reinterpret_cast<const float *>(xs + T * stride);
    const bf16 *xrow = xs + min(g, T - 1) * stride;
    const float *xsum0 = xsum + min(2 * t, T - 1) * sixteens;
    const float *xsum1 = xsum + min(2 * t + 1, T - 1) * sixteens;

    float acc[RT][4];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[r][i] = 0.0f;
    int b = 0;
    for (int c = c_begin; c < c_end; c += MMA_U, b ^= 1) {
        // the next round into the other buffer while this one is used
        if (c + MMA_U < c_end) {
#pragma unroll
            for (int r = 0; r < RT; ++r) {
                mma_issue<M>(stages + ((b ^ 1) * RT + r) * SB, p, row0, rows, r * rows, c + MMA_U,
                             c_end, lane);
                mma_super<M>(sup_next[r], p, rg + r * rows, rh + r * rows, c + MMA_U);
            }
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncwarp();
        const unsigned char *cur = stages + b * RT * SB;
#pragma unroll
        for (int u = 0; u < MMA_U; ++u) {
            if (c + u >= c_end) break;
            typename M::Raw raw[RT][2];
#pragma unroll
            for (int r = 0; r < RT; ++r)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const unsigned char *tile = cur + r * SB;
                    const int row = g + 8 * h;
                    const unsigned q = *reinterpret_cast<const unsigned *>(
                        tile + row * MMA_QS_ROW + 16 * u + 4 * t);
                    const unsigned char *a0 = tile + MmaStage<M>::QS + (row * MMA_U + u) * M::A0;
                    const unsigned char *a1 =
                        tile + MmaStage<M>::QS + MmaStage<M>::A0 + (row * MMA_U + u) * M::A1;
                    raw[r][h] = M::stage(q, a0, a1, sup[r][h]);
                }
            mma_chunk<M, RT>(raw, xrow, xsum0, xsum1, c + u, t, acc);
        }
        __syncwarp();  // every lane is done with this buffer before it is refilled
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            sup[r][0] = sup_next[r][0];
            sup[r][1] = sup_next[r][1];
        }
    }

    // the K-slices of a group summed in a fixed order by its first warp
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int i = 0; i < 4; ++i) partial[warp][r * 4 + i][lane] = acc[r][i];
    __syncthreads();
    if (slice != 0) return;
    for (int j = 1; j < k_split; ++j)
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[r][i] += partial[warp + j][r * 4 + i][lane];
    // acc[r][i]: row g + 8 * (i >> 1) of tile r, token 2t + (i & 1)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int n = row0 + g + 8 * (i >> 1), tok = 2 * t + (i & 1);
        if (n >= rows || tok >= T) continue;
        bf16 *out = y + (size_t)tok * ldy + n;
        if constexpr (SILU) {
            const float gt = round_bf16(acc[0][i]);
            const float s = round_bf16(gt / (1.0f + expf(-gt)));
            *out = __float2bfloat16(s * round_bf16(acc[RT - 1][i]));
        } else {
            float v = acc[0][i];
            if (bias != nullptr) v += bias[n];
            if (mode == MODE_ADD) v = __bfloat162float(*out) + round_bf16(v);
            *out = __float2bfloat16(v);
        }
    }
}

#define GEMV_MMA_ONE(NAME, M, SILU, NORM)                                                          \
    extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS) NAME(                          \
        bf16 *y, const bf16 *__restrict__ x, const unsigned char *__restrict__ qs,              \
        const void *__restrict__ aux0, const void *__restrict__ aux1,                           \
        const void *__restrict__ aux2, const float *__restrict__ bias,                          \
        const float *__restrict__ norm_w, float eps, int tokens, int in_features, int rows,     \
        int mode, int k_split, int ldy) {                                                       \
        gemv_mma<M, SILU, NORM>(y, x, {qs, aux0, aux1, aux2, in_features}, bias, norm_w, eps,  \
                                tokens, rows, mode, k_split, ldy);                              \
    }
// gemv_mma_{fmt}[_norm]: modes 0 and 1, one 16-row tile per group; gemv_mma_{fmt}_silu[_norm]:
// mode 2 (rows = inter), the gate tile and its up tile.
#define GEMV_MMA(FMT, M)                                    \
    GEMV_MMA_ONE(gemv_mma_##FMT, M, false, false)           \
    GEMV_MMA_ONE(gemv_mma_##FMT##_norm, M, false, true)     \
    GEMV_MMA_ONE(gemv_mma_##FMT##_silu, M, true, false)     \
    GEMV_MMA_ONE(gemv_mma_##FMT##_silu_norm, M, true, true)

GEMV_MMA(q4_0, MmaQ4_0)
GEMV_MMA(q5_0, MmaQ5_0)
GEMV_MMA(q4_k, MmaQ4_K)
GEMV_MMA(q6_k, MmaQ6_K)
