// Token embedding lookup: out[t, :] = table[ids[t], :] as bf16 activations.
// Launch: grid (num_tokens), block (threads, multiple of 32). hidden % 8 == 0, 16-byte aligned rows.
// An id past the vocabulary writes NaN (a bug upstream shows instead of reading out of bounds).
#include "common.cuh"

extern "C" __global__ void embedding_bf16(bf16 *__restrict__ out, const bf16 *__restrict__ table,
                                          const unsigned *__restrict__ ids, int hidden,
                                          unsigned vocab) {
    pdl_enter();
    const unsigned id = ids[blockIdx.x];
    uint4 *dst = reinterpret_cast<uint4 *>(out + (size_t)blockIdx.x * hidden);
    const int chunks = hidden / 8;
    if (id >= vocab) {
        float nan8[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) nan8[i] = __int_as_float(0x7fc00000);
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) dst[c] = pack_bf16x8(nan8);
        return;
    }
    const uint4 *src = reinterpret_cast<const uint4 *>(table + (size_t)id * hidden);
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) dst[c] = src[c];
}

// f32 tables (some GGUF files) are rounded to bf16 once, as HF's .to(bfloat16) would.
extern "C" __global__ void embedding_f32(bf16 *__restrict__ out, const float *__restrict__ table,
                                         const unsigned *__restrict__ ids, int hidden,
                                         unsigned vocab) {
    pdl_enter();
    const unsigned id = ids[blockIdx.x];
    uint4 *dst = reinterpret_cast<uint4 *>(out + (size_t)blockIdx.x * hidden);
    const int chunks = hidden / 8;
    const float4 *src = reinterpret_cast<const float4 *>(table + (size_t)(id < vocab ? id : 0) * hidden);
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        float f[8];
        if (id < vocab) {
            const float4 a = src[2 * c], b = src[2 * c + 1];
            f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
            f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) f[i] = __int_as_float(0x7fc00000);
        }
        dst[c] = pack_bf16x8(f);
    }
}
