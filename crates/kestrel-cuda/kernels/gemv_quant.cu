// gemv_{q8_0,q4_0}_t{T}[_norm]: the decode GEMV of gemv_tiled.cuh (T = 1..8 tokens, the same fusions
// and modes) over GGUF block-quantized weights: y[t, n] = sum over 32-weight blocks b of d[n, b] *
// sum_i q[n, 32 b + i] * x[t, 32 b + i], f32 throughout, rounded to bf16 once. Activations stay bf16
// (dequantization in registers; the weights are what a decode step streams).
// Layouts (repacked at upload from GGUF's blocks, see src/ops/gemv_quant.rs; the bytes are the file's):
//   Q8_0: qs [rows, in_features] i8, a 16-byte chunk = 16 weights (half a block);
//   Q4_0: qs [rows, in_features / 2] bytes, a chunk = one block's 16 bytes (low nibbles weights 0..15,
//   high nibbles 16..31, each minus 8);
//   both: d [rows, in_features / 32] f16 bits. in_features % 32 == 0.
// i8 / nibble -> f32 without the (slow) conversion instruction: the value, biased to unsigned, becomes
// the low mantissa byte of 2^23 (one byte permute) and 2^23 + bias is subtracted: exact.
#include <cuda_fp16.h>
#include "gemv_tiled.cuh"

// 2^23 + byte b of v, as a float
__device__ __forceinline__ float byte_as_float(unsigned v, int b) {
    return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7540u | b));
}
__device__ __forceinline__ float load_scale(const unsigned short *d) {
    return __half2float(__ushort_as_half(__ldg(d)));
}

// acc += d * (w . x): the chunk's dot product, then its block scale (as llama.cpp's dequantizing
// kernels group it)
template <int E>
__device__ __forceinline__ void scaled_dot(float &acc, float d, const float (&wf)[E],
                                           const float (&xf)[E]) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < E; ++i) s = fmaf(xf[i], wf[i], s);
    acc = fmaf(d, s, acc);
}

// The weights of one format F (its PER_CHUNK weights per 16-byte chunk and their unpacking) in the
// repacked layout: what gemv_tiled.cuh asks of a weight format.
template <class F>
struct BlockWeights {
    static constexpr int PER_CHUNK = F::PER_CHUNK;
    struct Row {
        const uint4 *q;
        const unsigned short *d;
    };
    struct Chunk {
        uint4 q;
        float d;
    };
    const unsigned char *qs;
    const unsigned short *scales;
    int in_features;
    __device__ __forceinline__ Row row(int n) const {
        return {reinterpret_cast<const uint4 *>(qs + (size_t)n * (in_features / PER_CHUNK * 16)),
                scales + (size_t)n * (in_features / 32)};
    }
    __device__ __forceinline__ Chunk load(const Row &r, int c) const {
        return {ld_stream(r.q + c), load_scale(r.d + c * PER_CHUNK / 32)};
    }
    static __device__ __forceinline__ Chunk zero() { return {make_uint4(0, 0, 0, 0), 0.0f}; }
    static __device__ __forceinline__ void unpack(const Chunk &ch, float (&wf)[PER_CHUNK]) {
        F::unpack(ch.q, wf);
    }
    static __device__ __forceinline__ void accumulate(float &acc, const Chunk &ch,
                                                      const float (&wf)[PER_CHUNK],
                                                      const float (&xf)[PER_CHUNK]) {
        scaled_dot(acc, ch.d, wf, xf);
    }
};

// Q8_0: a chunk is 16 i8 weights, half a block.
struct Q8_0 {
    static constexpr int PER_CHUNK = 16;
    static __device__ __forceinline__ void unpack(uint4 q, float (&wf)[16]) {
        const unsigned v[4] = {q.x ^ 0x80808080u, q.y ^ 0x80808080u, q.z ^ 0x80808080u,
                               q.w ^ 0x80808080u};
#pragma unroll
        for (int k = 0; k < 4; ++k)
#pragma unroll
            for (int b = 0; b < 4; ++b) wf[4 * k + b] = byte_as_float(v[k], b) - 8388736.0f;
    }
};

// Q4_0: a chunk is one block, 32 nibbles (low halves weights 0..15, high halves 16..31), minus 8.
struct Q4_0 {
    static constexpr int PER_CHUNK = 32;
    static __device__ __forceinline__ void unpack(uint4 q, float (&wf)[32]) {
        const unsigned v[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const unsigned lo = v[k] & 0x0F0F0F0Fu, hi = (v[k] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                wf[4 * k + b] = byte_as_float(lo, b) - 8388616.0f;
                wf[16 + 4 * k + b] = byte_as_float(hi, b) - 8388616.0f;
            }
        }
    }
};

#define GEMV_QUANT(FMT, W, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_##FMT##_t##T(             \
        bf16 *y, const bf16 *__restrict__ x, const void *__restrict__ qs,                        \
        const unsigned short *__restrict__ d, const float *__restrict__ bias,                    \
        const float *__restrict__ norm_w, float eps, int in_features, int rows, int mode,        \
        int k_split) {                                                                           \
        gemv_tiled<W, T, false>(y, x, W{static_cast<const unsigned char *>(qs), d, in_features}, \
                                bias, norm_w, eps, in_features, rows, mode, k_split);            \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_##FMT##_t##T##_norm(      \
        bf16 *y, const bf16 *__restrict__ x, const void *__restrict__ qs,                        \
        const unsigned short *__restrict__ d, const float *__restrict__ bias,                    \
        const float *__restrict__ norm_w, float eps, int in_features, int rows, int mode,        \
        int k_split) {                                                                           \
        gemv_tiled<W, T, true>(y, x, W{static_cast<const unsigned char *>(qs), d, in_features},  \
                               bias, norm_w, eps, in_features, rows, mode, k_split);             \
    }
#define GEMV_QUANT_ALL_T(FMT, W)                                                                 \
    GEMV_QUANT(FMT, W, 1)                                                                        \
    GEMV_QUANT(FMT, W, 2)                                                                        \
    GEMV_QUANT(FMT, W, 3)                                                                        \
    GEMV_QUANT(FMT, W, 4)                                                                        \
    GEMV_QUANT(FMT, W, 5)                                                                        \
    GEMV_QUANT(FMT, W, 6)                                                                        \
    GEMV_QUANT(FMT, W, 7)                                                                        \
    GEMV_QUANT(FMT, W, 8)

GEMV_QUANT_ALL_T(q8_0, BlockWeights<Q8_0>)
GEMV_QUANT_ALL_T(q4_0, BlockWeights<Q4_0>)
