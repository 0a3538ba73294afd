// Element-wise epilogue of the prefill (cuBLAS) matmuls, rounding where HF's bf16 model does.
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
