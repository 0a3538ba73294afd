// dequant_{fmt}: rows of a block-quantized weight (the planes of quant_formats.cuh and
// quant_kformats.cuh) to bf16, for prefill (dequantized tiles for the tensor-core GEMM) and the
// embedding lookup from a quantized table.
// out[r, :] = bf16(dequant(row ids[r] or row0 + r)), each value as ggml's dequantize_row_* computes it
// in f32, then rounded to nearest bf16 once.
// Launch: grid-stride over nrows * (in_features / PER_CHUNK) chunks, one chunk per thread, any grid.
// An id outside [0, rows) is the caller's bug (the host checks token ids before they go up).
// PDL: waits for the kernel before it first: ids may come from it (a decode step's inputs fed from
// the previous step's argmax), and the GEMM after a tile reads what this kernel's predecessors wrote
// only if this grid ends after them (common.cuh). Without the wait, asynchronous decode steps of a
// quantized model read half-written token ids (CUDA_ERROR_ILLEGAL_ADDRESS in bench.py, session 13).
#include "quant_formats.cuh"
#include "quant_kformats.cuh"

template <class W>
__device__ __forceinline__ void dequant_rows(bf16 *__restrict__ out, const W w,
                                             const int *__restrict__ ids, int row0, int nrows,
                                             int in_features) {
    pdl_enter();
    constexpr int E = W::PER_CHUNK;
    const int chunks = in_features / E;
    const long long total = (long long)nrows * chunks;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int r = (int)(i / chunks), c = (int)(i - (long long)r * chunks);
        const int n = ids != nullptr ? ids[r] : row0 + r;
        float wf[E];
        W::dequant(w.load(w.row(n), c), wf);
        uint4 *o = reinterpret_cast<uint4 *>(out + (size_t)r * in_features + (size_t)c * E);
#pragma unroll
        for (int j = 0; j < E / 8; ++j) {
            float v[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = wf[8 * j + k];
            o[j] = pack_bf16x8(v);
        }
    }
}

#define DEQUANT(FMT, W)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) dequant_##FMT(                            \
        bf16 *out, const unsigned char *__restrict__ qs, const void *__restrict__ aux0,         \
        const void *__restrict__ aux1, const void *__restrict__ aux2,                           \
        const int *__restrict__ ids, int row0, int nrows, int in_features) {                    \
        dequant_rows<W>(out, W::make({qs, aux0, aux1, aux2, in_features}), ids, row0, nrows,    \
                        in_features);                                                           \
    }

DEQUANT(q8_0, FormatQ8_0)
DEQUANT(q4_0, FormatQ4_0)
DEQUANT(q5_0, FormatQ5_0)
DEQUANT(q4_k, FormatQ4_K)
DEQUANT(q6_k, FormatQ6_K)
