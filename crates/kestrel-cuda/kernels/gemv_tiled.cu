// gemv_bf16_t{T}[_norm]: the decode GEMV for T = 1..8 tokens over bf16 weights, same contract and
// rounding as gemv_bf16 (gemv_bf16.cu); the kernel body, its fusions and launch are in gemv_tiled.cuh.
#include "gemv_tiled.cuh"

#define GEMV_TILED(T)                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)                              \
        gemv_bf16_t##T(                                                                          \
        bf16 *y, const bf16 *__restrict__ x, const bf16 *__restrict__ w,                         \
        const float *__restrict__ bias, const float *__restrict__ norm_w, float eps,             \
        int in_features, int rows, int mode, int k_split) {                                      \
        gemv_tiled<WeightsBf16, T, false>(y, x, WeightsBf16{w, in_features}, bias, norm_w, eps, in_features, rows, mode, k_split, rows);      \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)                              \
        gemv_bf16_t##T##_norm(                                                                   \
        bf16 *y, const bf16 *__restrict__ x, const bf16 *__restrict__ w,                         \
        const float *__restrict__ bias, const float *__restrict__ norm_w, float eps,             \
        int in_features, int rows, int mode, int k_split) {                                      \
        gemv_tiled<WeightsBf16, T, true>(y, x, WeightsBf16{w, in_features}, bias, norm_w, eps, in_features, rows, mode, k_split, rows);       \
    }
GEMV_TILED(1)
GEMV_TILED(2)
GEMV_TILED(3)
GEMV_TILED(4)
GEMV_TILED(5)
GEMV_TILED(6)
GEMV_TILED(7)
GEMV_TILED(8)
