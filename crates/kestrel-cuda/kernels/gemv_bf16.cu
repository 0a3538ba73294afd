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

// ---------------------------------------------------------------------------------------------
// gemv_bf16_t{T}: the decode path for T = 1..8 tokens, same contract and rounding as gemv_bf16.
// A block of 8 warps is split into groups of k_split warps (1, 2, 4 or 8); each group owns GEMV_R
// output rows and each of its warps sums one contiguous K-slice of them (split-K inside the block,
// so no workspace and no second launch), reduced through shared memory in a fixed order.
// Every lane keeps GEMV_U x GEMV_R 16-byte weight loads in flight (streamed past L1); each weight
// chunk is used for all T tokens, whose activations come through the read-only cache.
// Launch: grid ceil(out_features / (GEMV_R * 8 / k_split)), block 256; in_features % 8 == 0.
#define GEMV_R 2
#define GEMV_U 4
#define GEMV_WARPS 8

__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

template <int T>
__device__ __forceinline__ void fma_chunk(const uint4 (&wq)[GEMV_R], const uint4 *__restrict__ xv,
                                          int chunks, int c, float (&acc)[GEMV_R][T]) {
    float wf[GEMV_R][8];
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r) unpack_bf16x8(wq[r], wf[r]);
#pragma unroll
    for (int t = 0; t < T; ++t) {
        float xf[8];
        unpack_bf16x8(__ldg(xv + (size_t)t * chunks + c), xf);
#pragma unroll
        for (int r = 0; r < GEMV_R; ++r)
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[r][t] = fmaf(xf[i], wf[r][i], acc[r][t]);
    }
}

template <int T>
__device__ __forceinline__ void gemv_tiled(bf16 *y, const bf16 *__restrict__ x,
                                           const bf16 *__restrict__ w,
                                           const float *__restrict__ bias, int in_features,
                                           int out_features, int add_to_y, int k_split) {
    __shared__ float partial[GEMV_WARPS][GEMV_R * T];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = warp / k_split, slice = warp - group * k_split;
    const int row0 = (blockIdx.x * (GEMV_WARPS / k_split) + group) * GEMV_R;
    const int chunks = in_features >> 3;
    // K-slices of whole 128-byte lines
    const int per = (((chunks + k_split - 1) / k_split) + 7) & ~7;
    const int c_end = min(chunks, (slice + 1) * per);
    const uint4 *xv = reinterpret_cast<const uint4 *>(x);
    const uint4 *wv[GEMV_R];
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r) {
        // rows past the end re-read the last row so that the loop has no branch; dropped below
        const int n = min(row0 + r, out_features - 1);
        wv[r] = reinterpret_cast<const uint4 *>(w + (size_t)n * in_features);
    }
    float acc[GEMV_R][T];
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) acc[r][t] = 0.0f;

    int c = slice * per + lane;
    for (; c + 32 * (GEMV_U - 1) < c_end; c += 32 * GEMV_U) {
        uint4 wq[GEMV_U][GEMV_R];
#pragma unroll
        for (int u = 0; u < GEMV_U; ++u)
#pragma unroll
            for (int r = 0; r < GEMV_R; ++r) wq[u][r] = ld_stream(wv[r] + c + 32 * u);
#pragma unroll
        for (int u = 0; u < GEMV_U; ++u) fma_chunk<T>(wq[u], xv, chunks, c + 32 * u, acc);
    }
    for (; c < c_end; c += 32) {
        uint4 wq[GEMV_R];
#pragma unroll
        for (int r = 0; r < GEMV_R; ++r) wq[r] = ld_stream(wv[r] + c);
        fma_chunk<T>(wq, xv, chunks, c, acc);
    }
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const float s = warp_sum(acc[r][t]);
            if (lane == 0) partial[warp][r * T + t] = s;
        }
    __syncthreads();
    // lane i of a group's first warp finishes output (row r, token t) = (i / T, i % T)
    if (slice != 0 || lane >= GEMV_R * T) return;
    const int r = lane / T, t = lane - r * T, n = row0 + r;
    if (n >= out_features) return;
    float v = 0.0f;
    for (int j = 0; j < k_split; ++j) v += partial[warp + j][lane];
    if (bias != nullptr) v += bias[n];
    bf16 *out = y + (size_t)t * out_features + n;
    if (add_to_y) v = __bfloat162float(*out) + round_bf16(v);
    *out = __float2bfloat16(v);
}

#define GEMV_TILED(T)                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_bf16_t##T(                \
        bf16 *y, const bf16 *__restrict__ x, const bf16 *__restrict__ w,                         \
        const float *__restrict__ bias, int in_features, int out_features, int add_to_y,         \
        int k_split) {                                                                           \
        gemv_tiled<T>(y, x, w, bias, in_features, out_features, add_to_y, k_split);              \
    }
GEMV_TILED(1)
GEMV_TILED(2)
GEMV_TILED(3)
GEMV_TILED(4)
GEMV_TILED(5)
GEMV_TILED(6)
GEMV_TILED(7)
GEMV_TILED(8)
