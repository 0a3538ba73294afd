// Element-wise epilogues of the prefill (cuBLAS) matmuls, rounding where HF's bf16 model does.
// Launch: grid-stride over the elements; any grid and block.
#include "common.cuh"

// out[t, n] = bf16(acc[t, n] + bias[n]): the f32 GEMM result plus the bias, rounded once (HF's bf16
// linear with bias adds the bias in the GEMM's f32 epilogue). acc, out: [rows, cols]; bias: [cols].
extern "C" __global__ void bias_add_bf16(bf16 *__restrict__ out, const float *__restrict__ acc,
                                         const float *__restrict__ bias, int rows, int cols) {
    pdl_enter();
    const size_t total = (size_t)rows * cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(acc[i] + bias[i % cols]);
}

// residual = bf16(residual + x) over n elements (HF's `residual + proj(x)` in bf16).
extern "C" __global__ void residual_add_bf16(bf16 *__restrict__ residual, const bf16 *__restrict__ x,
                                             long long n) {
    pdl_enter();
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        residual[i] = __float2bfloat16(__bfloat162float(residual[i]) + __bfloat162float(x[i]));
}
