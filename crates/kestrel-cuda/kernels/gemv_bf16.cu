// Decode GEMV: y[b, n] = sum_k x[b, k] * w[n, k] (+ bias[n]) for a few tokens b, with
// w the [out_features, in_features] bf16 weight as HF's nn.Linear stores it.
// Each warp owns ROWS output rows; each lane reads 16 bytes (8 bf16) of every row per step, so a warp
// streams 512 contiguous bytes per row per step. Accumulation is f32; the result is rounded once
// (HF's bf16 linear with bias: one cuBLAS epilogue). With add_to_y the kernel is the fused residual add
// of o_proj / down_proj: y = bf16(y + bf16(x.w)), rounding as HF's `residual + proj(x)` does.
// Launch: grid (ceil(out_features / (ROWS * warps_per_block)), num_tokens), block (32 * warps).
// in_features % 8 == 0; x and w 16-byte aligned.
#include "common.cuh"

#define ROWS 2

extern "C" __global__ void gemv_bf16(bf16 *y, const bf16 *__restrict__ x,
                                     const bf16 *__restrict__ w, const float *__restrict__ bias,
                                     int in_features, int out_features, int add_to_y) {
    pdl_enter();
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * ROWS;
    if (row0 >= out_features) return;
    const int token = blockIdx.y;
    const uint4 *xv = reinterpret_cast<const uint4 *>(x + (size_t)token * in_features);
    const uint4 *wv[ROWS];
    bool live[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        live[r] = row0 + r < out_features;
        // a dead row re-reads row0 so that the loop has no branch; its sum is dropped
        wv[r] = reinterpret_cast<const uint4 *>(w + (size_t)(live[r] ? row0 + r : row0) * in_features);
    }
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;

    const int chunks = in_features / 8;
#pragma unroll 4
    for (int c = lane; c < chunks; c += 32) {
        float xf[8];
        unpack_bf16x8(xv[c], xf);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            float wf[8];
            unpack_bf16x8(wv[r][c], wf);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[r] = fmaf(xf[i], wf[i], acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[r] = warp_sum(acc[r]);
    if (lane != 0) return;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        if (!live[r]) continue;
        const int n = row0 + r;
        float v = acc[r] + (bias != nullptr ? bias[n] : 0.0f);
        bf16 *out = y + (size_t)token * out_features + n;
        if (add_to_y) v = __bfloat162float(*out) + round_bf16(v);
        *out = __float2bfloat16(v);
    }
}
