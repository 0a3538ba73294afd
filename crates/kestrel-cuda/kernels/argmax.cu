// Greedy sampling on the GPU: out[r] = the index of the largest value of row r of bf16 logits
// [rows, cols], ties to the lowest index (torch.argmax). NaNs never win; a row with no number above
// -inf gives its first -inf (index 0), as the CPU's argmax does.
// Launch: grid (rows), block (threads, a power of 2 from 32 to 1024); rows 16-byte aligned when
// cols % 8 == 0.
#include "common.cuh"

#define NEG_INF __int_as_float(0xff800000)

// The better of two (value, index) candidates: larger value, then lower index.
__device__ __forceinline__ void take_better(float &v, int &i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

extern "C" __global__ void argmax_bf16(unsigned *__restrict__ out, const bf16 *__restrict__ logits,
                                       int cols) {
    pdl_enter();
    const bf16 *row = logits + (size_t)blockIdx.x * cols;
    float best = NEG_INF;
    int best_i = 0x7fffffff;
    if ((cols & 7) == 0) {
        // 16-byte loads, four in flight per thread: one block streams a 151,936-wide row at
        // bandwidth instead of waiting on one 2-byte load at a time
        const uint4 *rv = reinterpret_cast<const uint4 *>(row);
        const int chunks = cols >> 3, step = blockDim.x;
        int c = threadIdx.x;
        for (; c + 3 * step < chunks; c += 4 * step) {
            uint4 raw[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) raw[u] = rv[c + u * step];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                float f[8];
                unpack_bf16x8(raw[u], f);
#pragma unroll
                for (int i = 0; i < 8; ++i) take_better(best, best_i, f[i], (c + u * step) * 8 + i);
            }
        }
        for (; c < chunks; c += step) {
            float f[8];
            unpack_bf16x8(rv[c], f);
#pragma unroll
            for (int i = 0; i < 8; ++i) take_better(best, best_i, f[i], c * 8 + i);
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            take_better(best, best_i, __bfloat162float(row[c]), c);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, best_i, offset);
        take_better(best, best_i, ov, oi);
    }
    __shared__ float warp_v[32];
    __shared__ int warp_i[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        warp_v[warp] = best;
        warp_i[warp] = best_i;
    }
    __syncthreads();
    if (warp != 0) return;
    const int warps = blockDim.x >> 5;
    best = lane < warps ? warp_v[lane] : NEG_INF;
    best_i = lane < warps ? warp_i[lane] : 0x7fffffff;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, best_i, offset);
        take_better(best, best_i, ov, oi);
    }
    if (lane == 0) out[blockIdx.x] = best_i < cols ? (unsigned)best_i : 0u;
}

// Asynchronous scheduling: a decode step's input ids fed from the previous step's output on the
// device. An id with the top bit set stands for row (id & 0x7fffffff) of `prev`; others stay.
// Launch: grid (ceil(n / 256)), block (256).
extern "C" __global__ void feed_decode_inputs(unsigned *__restrict__ ids, const unsigned *__restrict__ prev,
                                              int n) {
    pdl_enter();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const unsigned v = ids[i];
        if (v & 0x80000000u) ids[i] = prev[v & 0x7fffffffu];
    }
}
