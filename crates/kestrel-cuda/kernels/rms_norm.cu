// RMSNorm with HF's rounding points (Qwen3RMSNorm in bf16):
//   x -> f32; var = mean(x^2) in f32; n = bf16(x * rsqrt(var + eps)); out = bf16(w * n)
// The weight is kept in f32 (bf16 checkpoints convert exactly), so w * n matches HF's bf16 * bf16.
// Launch: grid (rows), block (threads, multiple of 32, <= 1024). hidden % 8 == 0, 16-byte aligned rows.
#include "common.cuh"

__device__ __forceinline__ void normalize_row(bf16 *__restrict__ out, const bf16 *src,
                                              const float *__restrict__ weight, float sum_sq,
                                              float eps, int hidden) {
    const float inv = rsqrtf(block_sum(sum_sq) / (float)hidden + eps);
    const uint4 *s = reinterpret_cast<const uint4 *>(src);
    uint4 *d = reinterpret_cast<uint4 *>(out);
    const float4 *w = reinterpret_cast<const float4 *>(weight);
    for (int c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
        float x[8];
        unpack_bf16x8(s[c], x);
        const float4 w0 = w[2 * c], w1 = w[2 * c + 1];
        const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) x[i] = wv[i] * round_bf16(x[i] * inv);
        d[c] = pack_bf16x8(x);
    }
}

extern "C" __global__ void rms_norm_bf16(bf16 *__restrict__ out, const bf16 *__restrict__ x,
                                         const float *__restrict__ weight, float eps, int hidden) {
    pdl_enter();
    const bf16 *row = x + (size_t)blockIdx.x * hidden;
    const uint4 *s = reinterpret_cast<const uint4 *>(row);
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
        float v[8];
        unpack_bf16x8(s[c], v);
#pragma unroll
        for (int i = 0; i < 8; ++i) sum_sq += v[i] * v[i];
    }
    normalize_row(out + (size_t)blockIdx.x * hidden, row, weight, sum_sq, eps, hidden);
}

// The decoder layer's `residual = residual + x; out = norm(residual)`, carrying the residual in place.
// The sum is rounded to bf16 first, as HF's bf16 add does, and the norm reads the rounded value.
extern "C" __global__ void add_rms_norm_bf16(bf16 *__restrict__ out, bf16 *__restrict__ residual,
                                             const bf16 *__restrict__ x,
                                             const float *__restrict__ weight, float eps,
                                             int hidden) {
    pdl_enter();
    bf16 *res_row = residual + (size_t)blockIdx.x * hidden;
    uint4 *r = reinterpret_cast<uint4 *>(res_row);
    const uint4 *s = reinterpret_cast<const uint4 *>(x + (size_t)blockIdx.x * hidden);
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
        float a[8], b[8];
        unpack_bf16x8(r[c], a);
        unpack_bf16x8(s[c], b);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            a[i] = round_bf16(a[i] + b[i]);
            sum_sq += a[i] * a[i];
        }
        r[c] = pack_bf16x8(a);  // re-read below by this same thread only
    }
    normalize_row(out + (size_t)blockIdx.x * hidden, res_row, weight, sum_sq, eps, hidden);
}
