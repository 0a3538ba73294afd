// SwiGLU activation over the merged gate/up projection: out[t, i] = silu(gate[t, i]) * up[t, i],
// where gate_up rows are [gate (inter) | up (inter)].
// Rounding as HF's bf16 MLP: s = bf16(g / (1 + exp(-g))) (PyTorch's silu in f32), out = bf16(s * u).
// Launch: grid-stride over num_tokens * inter / 8 chunks. inter % 8 == 0, 16-byte aligned rows.
#include "common.cuh"

extern "C" __global__ void silu_mul_bf16(bf16 *__restrict__ out, const bf16 *__restrict__ gate_up,
                                         int num_tokens, int inter) {
    pdl_enter();
    const int chunks_per_row = inter / 8;
    const size_t total = (size_t)num_tokens * chunks_per_row;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t t = idx / chunks_per_row, c = idx % chunks_per_row;
        const uint4 *row = reinterpret_cast<const uint4 *>(gate_up + t * 2 * inter);
        float g[8], u[8];
        unpack_bf16x8(row[c], g);
        unpack_bf16x8(row[chunks_per_row + c], u);
#pragma unroll
        for (int i = 0; i < 8; ++i) g[i] = round_bf16(g[i] / (1.0f + expf(-g[i]))) * u[i];
        reinterpret_cast<uint4 *>(out + t * inter)[c] = pack_bf16x8(g);
    }
}
