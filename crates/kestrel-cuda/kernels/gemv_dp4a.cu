// gemv_{q4_0,q5_0,q4_k,q6_k}_dp4a_t{T}[_norm]: the decode GEMV with integer dot products (llama.cpp's
// MMVQ design) for the 4- to 6-bit formats, whose dequantizing GEMV (gemv_quant.cu) is bound by the
// decode arithmetic (BENCHMARKS.md). Every block first quantizes the T rows of x (or, with _norm,
// rms_norm(x) * norm_w with gemv_tiled.cuh's rounding) into shared memory as 32-value blocks of int8
// (d = amax / 127, q = round(x / d), as ggml's quantize_row_q8_1) with each half-block's sum of
// quants, then sums a 32-weight chunk's quants times x's with __dp4a (4 byte products an instruction,
// exact in int32) and scales once per chunk, in f32:
//   Q4_0 / Q5_0: d_w d_x (sum(q x) - 8 or 16 sum(x));  Q4_K: (d sc) d_x sum(q x) - (dmin m) d_x sum(x);
//   Q6_K: d_x ((d sc0) (sum0(q x) - 32 sum0(x)) + (d sc1) (sum1(q x) - 32 sum1(x))) over its 16-halves.
// Same grid, K-split, modes (0, 1, 2), ldy, output rounding and epilogue as gemv_tiled.cuh (gemv_finish).
// Dynamic shared memory: (_norm: T * in_features * 2) + T * in_features + T * in_features / 32 * 12.
#include "quant_kformats.cuh"

struct XBlock {
    float d;
    int sum_lo, sum_hi;  // sums of the quants of values 0..15 and 16..31
};

// Quantizes T rows of x (bf16, in_features each; global or shared) into xq (int8 as int words) and
// xb: one thread per 32-value block.
template <int T>
__device__ __forceinline__ void quantize_x(int *xq, XBlock *xb, const bf16 *x, int in_features) {
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
        int sum[2] = {0, 0};
#pragma unroll
        for (int w = 0; w < 8; ++w) {
            unsigned word = 0;
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                const int q = __float2int_rn(v[4 * w + b] * id);
                sum[w / 4] += q;
                word |= (unsigned)(q & 0xFF) << (8 * b);
            }
            xq[i * 8 + w] = (int)word;
        }
        xb[i] = {d, sum[0], sum[1]};
    }
}

// sum over k of dp4a(lo[k], x[k]) and dp4a(hi[k], x[4 + k]): a chunk's two halves
__device__ __forceinline__ int2 dot_halves(const unsigned (&lo)[4], const unsigned (&hi)[4],
                                           const int *xq) {
    const int4 a = reinterpret_cast<const int4 *>(xq)[0], b = reinterpret_cast<const int4 *>(xq)[1];
    const int xl[4] = {a.x, a.y, a.z, a.w}, xh[4] = {b.x, b.y, b.z, b.w};
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        s0 = __dp4a((int)lo[k], xl[k], s0);
        s1 = __dp4a((int)hi[k], xh[k], s1);
    }
    return make_int2(s0, s1);
}

// A format's chunk (32 weights, x block c) dotted with x's quants: xq points at the block's 8 words.
template <class W>
struct Dp4a;

template <>
struct Dp4a<FormatQ4_0> {
    static __device__ __forceinline__ float dot(const FormatQ4_0::Chunk &ch, const int *xq,
                                                const XBlock &x) {
        unsigned lo[4], hi[4];
        q32_bytes<0, 0>(ch.q, 0u, 0u, lo, hi);
        const int2 s = dot_halves(lo, hi, xq);
        return ch.d * x.d * (float)(s.x + s.y - 8 * (x.sum_lo + x.sum_hi));
    }
};

template <>
struct Dp4a<FormatQ5_0> {
    static __device__ __forceinline__ float dot(const FormatQ5_0::Chunk &ch, const int *xq,
                                                const XBlock &x) {
        unsigned lo[4], hi[4];
        q32_bytes<1, 4>(ch.q, ch.h, ch.h, lo, hi);
        const int2 s = dot_halves(lo, hi, xq);
        return ch.d * x.d * (float)(s.x + s.y - 16 * (x.sum_lo + x.sum_hi));
    }
};

template <>
struct Dp4a<FormatQ4_K> {
    static __device__ __forceinline__ float dot(const FormatQ4_K::Chunk &ch, const int *xq,
                                                const XBlock &x) {
        unsigned lo[4], hi[4];
        q32_bytes<0, 0>(ch.q, 0u, 0u, lo, hi);
        const int2 s = dot_halves(lo, hi, xq);
        return x.d * (ch.d * (float)(s.x + s.y) - ch.m * (float)(x.sum_lo + x.sum_hi));
    }
};

template <>
struct Dp4a<FormatQ6_K> {
    static __device__ __forceinline__ float dot(const FormatQ6_K::Chunk &ch, const int *xq,
                                                const XBlock &x) {
        unsigned lo[4], hi[4];
        q32_bytes<2, 0>(ch.q, ch.h.x, ch.h.y, lo, hi);
        const int2 s = dot_halves(lo, hi, xq);
        return x.d * (ch.d0 * (float)(s.x - 32 * x.sum_lo) + ch.d1 * (float)(s.y - 32 * x.sum_hi));
    }
};

template <class W, int T, bool NORM>
__device__ __forceinline__ void gemv_dp4a(bf16 *y, const bf16 *__restrict__ x, const W w,
                                          const float *__restrict__ bias,
                                          const float *__restrict__ norm_w, float eps,
                                          int in_features, int rows, int mode, int k_split,
                                          int ldy) {
    extern __shared__ int4 dp4a_smem[];
    uint4 *xs = reinterpret_cast<uint4 *>(dp4a_smem);  // _norm: the normed rows, bf16
    int *xq = reinterpret_cast<int *>(dp4a_smem) + (NORM ? T * in_features / 2 : 0);
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
    if constexpr (NORM) {
        norm_rows_to_shared<T>(xs, x, norm_w, eps, in_features);
        quantize_x<T>(xq, xb, reinterpret_cast<const bf16 *>(xs), in_features);
    } else {
        quantize_x<T>(xq, xb, x, in_features);
    }
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
                acc[r][t] += Dp4a<W>::dot(wq[r], xq + t * xwords + 8 * c, xb[t * xblocks + c]);
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
    gemv_finish<T>(acc, y, bias, rows, mode, k_split, ldy, row0);
}

#define GEMV_DP4A_NORM(FMT, W, T, NORM, SUFFIX)                                                 \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_##FMT##_dp4a_t##T##SUFFIX( \
        bf16 *y, const bf16 *__restrict__ x, const unsigned char *__restrict__ qs,               \
        const void *__restrict__ aux0, const void *__restrict__ aux1,                            \
        const void *__restrict__ aux2, const float *__restrict__ bias,                           \
        const float *__restrict__ norm_w, float eps, int in_features, int rows, int mode,        \
        int k_split, int ldy) {                                                                  \
        gemv_dp4a<W, T, NORM>(y, x, W::make({qs, aux0, aux1, aux2, in_features}), bias, norm_w,  \
                              eps, in_features, rows, mode, k_split, ldy);                       \
    }
#define GEMV_DP4A(FMT, W, T)                                                                     \
    GEMV_DP4A_NORM(FMT, W, T, false, )                                                           \
    GEMV_DP4A_NORM(FMT, W, T, true, _norm)
#define GEMV_DP4A_ALL_T(FMT, W)                                                                  \
    GEMV_DP4A(FMT, W, 1)                                                                         \
    GEMV_DP4A(FMT, W, 2)                                                                         \
    GEMV_DP4A(FMT, W, 3)                                                                         \
    GEMV_DP4A(FMT, W, 4)

GEMV_DP4A_ALL_T(q4_0, FormatQ4_0)
GEMV_DP4A_ALL_T(q5_0, FormatQ5_0)
GEMV_DP4A_ALL_T(q4_k, FormatQ4_K)
GEMV_DP4A_ALL_T(q6_k, FormatQ6_K)
