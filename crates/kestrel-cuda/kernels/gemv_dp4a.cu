// gemv_{q8_0,q4_0}_dp4a_t{T}: the decode GEMV with integer dot products (llama.cpp's MMVQ design),
// to measure against the dequantizing kernels of gemv_quant.cu: every block first quantizes the T
// rows of x into shared memory as 32-value blocks of int8 (d = amax / 127, q = round(x / d), as
// ggml's quantize_row_q8_1) with each block's sum of quants, then sums a weight chunk's quants times
// x's with __dp4a (4 byte products a instruction) and scales once per chunk:
//   Q8_0: d_w * d_x * sum(q_w q_x);  Q4_0: d_w * d_x * (sum(n_w q_x) - 8 sum(q_x)), n_w the nibbles.
// Same grid, K-split, modes (0, 1, 2), rounding and output as gemv_tiled.cuh (no fused norm here).
// Dynamic shared memory: T * in_features bytes of quants + T * in_features / 32 * 8 of (d, sum).
#include "quant_formats.cuh"

struct XBlock {
    float d;
    int sum;
};

// Quantizes T rows of x (bf16, in_features each) into xq (int8 as int words) and xb: one thread per
// 32-value block.
template <int T>
__device__ __forceinline__ void quantize_x(int *xq, XBlock *xb, const bf16 *__restrict__ x,
                                           int in_features) {
    const int nb = in_features / 32;
    for (int i = threadIdx.x; i < T * nb; i += blockDim.x) {
        const uint4 *src = reinterpret_cast<const uint4 *>(x) + (size_t)i * 4;
        float v[32];
#pragma unroll
        for (int j = 0; j < 4; ++j) unpack_bf16x8(src[j], v + 8 * j);
        float amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 32; ++j) amax = fmaxf(amax, fabsf(v[j]));
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
#pragma unroll
        for (int w = 0; w < 8; ++w) {
            unsigned word = 0;
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                const int q = __float2int_rn(v[4 * w + b] * id);
                sum += q;
                word |= (unsigned)(q & 0xFF) << (8 * b);
            }
            xq[i * 8 + w] = (int)word;
        }
        xb[i] = {d, sum};
    }
}

template <class F>
struct Dp4a;

template <>
struct Dp4a<Q8_0> {
    // chunk c = half a block: x words 4c .. 4c + 3
    static __device__ __forceinline__ float dot(const FormatQ8_0::Chunk &ch, const int *xq,
                                                const XBlock *xb, int c) {
        const int4 xv = reinterpret_cast<const int4 *>(xq)[c];
        int s = __dp4a((int)ch.q.x, xv.x, 0);
        s = __dp4a((int)ch.q.y, xv.y, s);
        s = __dp4a((int)ch.q.z, xv.z, s);
        s = __dp4a((int)ch.q.w, xv.w, s);
        return ch.d * xb[c >> 1].d * (float)s;
    }
};

template <>
struct Dp4a<Q4_0> {
    // chunk c = block c: low nibbles of word k = weights 4k.., high = 16 + 4k..
    static __device__ __forceinline__ float dot(const FormatQ4_0::Chunk &ch, const int *xq,
                                                const XBlock *xb, int c) {
        const int4 x0 = reinterpret_cast<const int4 *>(xq)[2 * c];
        const int4 x1 = reinterpret_cast<const int4 *>(xq)[2 * c + 1];
        const unsigned v[4] = {ch.q.x, ch.q.y, ch.q.z, ch.q.w};
        const int xl[4] = {x0.x, x0.y, x0.z, x0.w}, xh[4] = {x1.x, x1.y, x1.z, x1.w};
        int s = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            s = __dp4a((int)(v[k] & 0x0F0F0F0Fu), xl[k], s);
            s = __dp4a((int)((v[k] >> 4) & 0x0F0F0F0Fu), xh[k], s);
        }
        return ch.d * xb[c].d * (float)(s - 8 * xb[c].sum);
    }
};

template <class W, class F, int T>
__device__ __forceinline__ void gemv_dp4a(bf16 *y, const bf16 *__restrict__ x, const W w,
                                          const float *__restrict__ bias, int in_features,
                                          int rows, int mode, int k_split) {
    extern __shared__ int4 dp4a_smem[];
    int *xq = reinterpret_cast<int *>(dp4a_smem);
    XBlock *xb = reinterpret_cast<XBlock *>(xq + T * in_features / 4);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = warp / k_split, slice = warp - group * k_split;
    const bool silu = mode == MODE_SILU;
    const int row0 = (blockIdx.x * (GEMV_WARPS / k_split) + group) * (silu ? 1 : GEMV_R);
    const int chunks = in_features / W::PER_CHUNK;
    const int xwords = in_features / 4, xblocks = in_features / 32;
    const int per = (((chunks + k_split - 1) / k_split) + 7) & ~7;
    const int c_begin = slice * per, c_end = min(chunks, (slice + 1) * per);
    const int c0 = c_begin + lane;
    typename W::Row wv[GEMV_R];
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r) {
        const int n = silu ? min(row0, rows - 1) + r * rows : min(row0 + r, rows - 1);
        wv[r] = w.row(n);
    }
    typename W::Chunk first[GEMV_U][GEMV_R];
#pragma unroll
    for (int u = 0; u < GEMV_U; ++u)
#pragma unroll
        for (int r = 0; r < GEMV_R; ++r)
            first[u][r] = c0 + 32 * u < c_end ? w.load(wv[r], c0 + 32 * u) : W::zero();
    pdl_wait();
    pdl_launch_dependents();
    quantize_x<T>(xq, xb, x, in_features);
    __syncthreads();
    float acc[GEMV_R][T];
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) acc[r][t] = 0.0f;
    auto fma = [&](const typename W::Chunk(&wq)[GEMV_R], int c) {
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
            for (int r = 0; r < GEMV_R; ++r)
                acc[r][t] += Dp4a<F>::dot(wq[r], xq + t * xwords, xb + t * xblocks, c);
    };
#pragma unroll
    for (int u = 0; u < GEMV_U; ++u)
        if (c0 + 32 * u < c_end) fma(first[u], c0 + 32 * u);
    int c = c0 + 32 * GEMV_U;
    for (; c + 32 * (GEMV_U - 1) < c_end; c += 32 * GEMV_U) {
        typename W::Chunk wq[GEMV_U][GEMV_R];
#pragma unroll
        for (int u = 0; u < GEMV_U; ++u)
#pragma unroll
            for (int r = 0; r < GEMV_R; ++r) wq[u][r] = w.load(wv[r], c + 32 * u);
#pragma unroll
        for (int u = 0; u < GEMV_U; ++u) fma(wq[u], c + 32 * u);
    }
    for (; c < c_end; c += 32) {
        typename W::Chunk wq[GEMV_R];
#pragma unroll
        for (int r = 0; r < GEMV_R; ++r) wq[r] = w.load(wv[r], c);
        fma(wq, c);
    }
    gemv_finish<T>(acc, y, bias, rows, mode, k_split, rows, row0);
}

#define GEMV_DP4A(FMT, W, F, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_##FMT##_dp4a_t##T(       \
        bf16 *y, const bf16 *__restrict__ x, const unsigned char *__restrict__ qs,              \
        const void *__restrict__ aux0, const float *__restrict__ bias, int in_features,         \
        int rows, int mode, int k_split) {                                                      \
        gemv_dp4a<W, F, T>(y, x, W::make({qs, aux0, nullptr, nullptr, in_features}), bias,      \
                           in_features, rows, mode, k_split);                                   \
    }

GEMV_DP4A(q8_0, FormatQ8_0, Q8_0, 1)
GEMV_DP4A(q8_0, FormatQ8_0, Q8_0, 2)
GEMV_DP4A(q8_0, FormatQ8_0, Q8_0, 4)
GEMV_DP4A(q4_0, FormatQ4_0, Q4_0, 1)
GEMV_DP4A(q4_0, FormatQ4_0, Q4_0, 2)
GEMV_DP4A(q4_0, FormatQ4_0, Q4_0, 4)
