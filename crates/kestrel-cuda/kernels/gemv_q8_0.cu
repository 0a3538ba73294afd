// gemv_q8_0_t{T}[_norm]: the decode GEMV of gemv_tiled.cuh (T = 1..8 tokens, the same fusions and
// modes) over GGUF Q8_0 weights: y[t, n] = sum over 32-weight blocks b of d[n, b] * sum_i q[n, 32 b + i]
// * x[t, 32 b + i], f32 throughout, rounded to bf16 once. Activations stay bf16 (dequantization in
// registers; the weights are what a decode step streams).
// Layout (repacked at upload from GGUF's 34-byte blocks, see src/ops/gemv_quant.rs): qs [rows,
// in_features] i8 (16-byte aligned rows: one chunk is 16 weights, half a block) and d [rows,
// in_features / 32] f16 bits. in_features % 32 == 0.
#include <cuda_fp16.h>
#include "gemv_tiled.cuh"

struct WeightsQ8_0 {
    static constexpr int PER_CHUNK = 16;
    struct Row {
        const uint4 *q;
        const unsigned short *d;
    };
    struct Chunk {
        uint4 q;
        float d;
    };
    const signed char *qs;
    const unsigned short *scales;
    int in_features;
    __device__ __forceinline__ Row row(int n) const {
        return {reinterpret_cast<const uint4 *>(qs + (size_t)n * in_features),
                scales + (size_t)n * (in_features / 32)};
    }
    __device__ __forceinline__ Chunk load(const Row &r, int c) const {
        return {ld_stream(r.q + c), __half2float(__ushort_as_half(__ldg(r.d + (c >> 1))))};
    }
    static __device__ __forceinline__ Chunk zero() { return {make_uint4(0, 0, 0, 0), 0.0f}; }
    // i8 -> f32 without the (slow) conversion instruction: q + 128 as the low mantissa byte of
    // 2^23 (one byte permute), minus 2^23 + 128: exact, one integer and one float op per weight
    static __device__ __forceinline__ void unpack(const Chunk &ch, float (&wf)[16]) {
        const unsigned v[4] = {ch.q.x ^ 0x80808080u, ch.q.y ^ 0x80808080u, ch.q.z ^ 0x80808080u,
                               ch.q.w ^ 0x80808080u};
#pragma unroll
        for (int k = 0; k < 4; ++k)
#pragma unroll
            for (int b = 0; b < 4; ++b)
                wf[4 * k + b] = __uint_as_float(__byte_perm(v[k], 0x4B000000u, 0x7540u | b)) - 8388736.0f;
    }
    // the chunk's dot product, then its block scale (as llama.cpp's dequantizing kernels group it)
    static __device__ __forceinline__ void accumulate(float &acc, const Chunk &ch,
                                                      const float (&wf)[16], const float (&xf)[16]) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; ++i) s = fmaf(xf[i], wf[i], s);
        acc = fmaf(ch.d, s, acc);
    }
};

#define GEMV_Q8_0(T)                                                                             \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_q8_0_t##T(              \
        bf16 *y, const bf16 *__restrict__ x, const signed char *__restrict__ qs,                 \
        const unsigned short *__restrict__ d, const float *__restrict__ bias,                    \
        const float *__restrict__ norm_w, float eps, int in_features, int rows, int mode,        \
        int k_split) {                                                                           \
        gemv_tiled<WeightsQ8_0, T, false>(y, x, WeightsQ8_0{qs, d, in_features}, bias, norm_w,   \
                                          eps, in_features, rows, mode, k_split);                \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_q8_0_t##T##_norm(       \
        bf16 *y, const bf16 *__restrict__ x, const signed char *__restrict__ qs,                 \
        const unsigned short *__restrict__ d, const float *__restrict__ bias,                    \
        const float *__restrict__ norm_w, float eps, int in_features, int rows, int mode,        \
        int k_split) {                                                                           \
        gemv_tiled<WeightsQ8_0, T, true>(y, x, WeightsQ8_0{qs, d, in_features}, bias, norm_w,    \
                                         eps, in_features, rows, mode, k_split);                 \
    }
GEMV_Q8_0(1)
GEMV_Q8_0(2)
GEMV_Q8_0(3)
GEMV_Q8_0(4)
GEMV_Q8_0(5)
GEMV_Q8_0(6)
GEMV_Q8_0(7)
GEMV_Q8_0(8)
