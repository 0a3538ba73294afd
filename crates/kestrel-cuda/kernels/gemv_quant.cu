// gemv_{fmt}_t{T}[_norm]: the decode GEMV of gemv_tiled.cuh (T = 1..8 tokens, the same fusions and
// modes) over GGUF block-quantized weights in the planes of quant_formats.cuh (Q8_0, Q4_0) and
// quant_kformats.cuh (Q5_0, Q4_K, Q6_K): y[t, n] = sum over chunks of the chunk's scales times its
// quants' dot product with x, f32 throughout, rounded to bf16 once.
// Activations stay bf16 (dequantization in registers; the weights are what a decode step streams).
#include "quant_formats.cuh"
#include "quant_kformats.cuh"

#define GEMV_QUANT(FMT, W, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_##FMT##_t##T(            \
        bf16 *y, const bf16 *__restrict__ x, const unsigned char *__restrict__ qs,              \
        const void *__restrict__ aux0, const void *__restrict__ aux1,                           \
        const void *__restrict__ aux2, const float *__restrict__ bias,                          \
        const float *__restrict__ norm_w, float eps, int in_features, int rows, int mode,       \
        int k_split, int ldy) {                                                                          \
        gemv_tiled<W, T, false>(y, x, W::make({qs, aux0, aux1, aux2, in_features}), bias,       \
                                norm_w, eps, in_features, rows, mode, k_split, ldy);                 \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_##FMT##_t##T##_norm(     \
        bf16 *y, const bf16 *__restrict__ x, const unsigned char *__restrict__ qs,              \
        const void *__restrict__ aux0, const void *__restrict__ aux1,                           \
        const void *__restrict__ aux2, const float *__restrict__ bias,                          \
        const float *__restrict__ norm_w, float eps, int in_features, int rows, int mode,       \
        int k_split, int ldy) {                                                                          \
        gemv_tiled<W, T, true>(y, x, W::make({qs, aux0, aux1, aux2, in_features}), bias,        \
                               norm_w, eps, in_features, rows, mode, k_split, ldy);                  \
    }
#define GEMV_QUANT_ALL_T(FMT, W)                                                                \
    GEMV_QUANT(FMT, W, 1)                                                                       \
    GEMV_QUANT(FMT, W, 2)                                                                       \
    GEMV_QUANT(FMT, W, 3)                                                                       \
    GEMV_QUANT(FMT, W, 4)                                                                       \
    GEMV_QUANT(FMT, W, 5)                                                                       \
    GEMV_QUANT(FMT, W, 6)                                                                       \
    GEMV_QUANT(FMT, W, 7)                                                                       \
    GEMV_QUANT(FMT, W, 8)

GEMV_QUANT_ALL_T(q8_0, FormatQ8_0)
GEMV_QUANT_ALL_T(q4_0, FormatQ4_0)
GEMV_QUANT_ALL_T(q5_0, FormatQ5_0)
GEMV_QUANT_ALL_T(q4_k, FormatQ4_K)
GEMV_QUANT_ALL_T(q6_k, FormatQ6_K)
