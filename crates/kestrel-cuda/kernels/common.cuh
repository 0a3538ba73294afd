// Shared device helpers, given to NVRTC as the header "common.cuh" (see src/compile.rs).
// Numerics: every reduction accumulates in f32; bf16 conversions round to nearest even, as PyTorch does.
#pragma once
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

// Slot value meaning "no KV-cache slot" (padding tokens of a captured batch): vLLM's -1 as unsigned.
#define KESTREL_NO_SLOT 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the block; every thread gets the result. blockDim.x must be a multiple of 32 (<= 1024).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // partial[] may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// Eight bf16 values in one 16-byte word.
__device__ __forceinline__ void unpack_bf16x8(const uint4 &v, float f[8]) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 p = __bfloat1622float2(h[i]);
        f[2 * i] = p.x;
        f[2 * i + 1] = p.y;
    }
}

__device__ __forceinline__ uint4 pack_bf16x8(const float f[8]) {
    uint4 v;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return v;
}

// Programmatic dependent launch (sm_90+; no-ops before). A kernel launched with the PDL attribute may
// start while the kernel before it still runs: it must call pdl_wait() before reading anything an
// earlier kernel wrote (or writing anything one reads), and in every block (a block that exits without
// waiting would let the grid finish before its predecessor, breaking the chain's transitivity). It
// calls pdl_launch_dependents() only after its own wait, so at most two grids overlap.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Both, at the top of a kernel that has nothing to do before its inputs are ready.
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch_dependents();
}

// Asks L2 to fetch the 128-byte line holding p (weights: they do not depend on earlier kernels, so a
// kernel prefetches them before pdl_wait()).
__device__ __forceinline__ void prefetch_l2(const void *p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// One warp normalises (Qwen3's per-head RMSNorm; skipped when norm is null, as in Qwen2) and rotates
// (neox RoPE at position pos) one head of head_dim values at src into dst; with v_src, it also copies
// the head at v_src to v_dst. Every load is issued before any arithmetic, so the whole job is one
// memory round trip. Numerics: the norm rounds as HF's Qwen3RMSNorm (n = bf16(x * rsqrt(var + eps)),
// bf16(w * n)); RoPE rotates those bf16 values in f32 with the angle computed as HF does (f32 pos *
// inv_freq) and accurate sin/cos, and rounds once (HF rounds cos/sin and each product to bf16; rounding
// once is closer to HF's float32 run, which the parity test measures).
// head_dim % 16 == 0 and <= 256: lane l holds rotation pairs l, l + 32, ... below head_dim / 2.
#define NORM_ROPE_MAX_PAIRS 4
__device__ __forceinline__ void norm_rope_head(bf16 *__restrict__ dst, const bf16 *__restrict__ src,
                                               const float *__restrict__ norm, float eps, float pos,
                                               const float *__restrict__ inv_freq, int head_dim,
                                               bf16 *__restrict__ v_dst, const bf16 *__restrict__ v_src) {
    const int lane = threadIdx.x & 31, half = head_dim / 2;
    float a[NORM_ROPE_MAX_PAIRS], b[NORM_ROPE_MAX_PAIRS], wa[NORM_ROPE_MAX_PAIRS], wb[NORM_ROPE_MAX_PAIRS],
        freq[NORM_ROPE_MAX_PAIRS], v_vals[2 * NORM_ROPE_MAX_PAIRS];
#pragma unroll
    for (int j = 0; j < NORM_ROPE_MAX_PAIRS; ++j) {
        const int i = lane + 32 * j;
        if (i < half) {
            a[j] = __bfloat162float(src[i]);
            b[j] = __bfloat162float(src[i + half]);
            freq[j] = inv_freq[i];
            if (norm != nullptr) {
                wa[j] = norm[i];
                wb[j] = norm[i + half];
            }
        }
    }
    if (v_src != nullptr) {
#pragma unroll
        for (int j = 0; j < 2 * NORM_ROPE_MAX_PAIRS; ++j)
            if (lane + 32 * j < head_dim) v_vals[j] = __bfloat162float(v_src[lane + 32 * j]);
    }
    if (norm != nullptr) {
        float sum_sq = 0.0f;
#pragma unroll
        for (int j = 0; j < NORM_ROPE_MAX_PAIRS; ++j)
            if (lane + 32 * j < half) sum_sq += a[j] * a[j] + b[j] * b[j];
        const float inv = rsqrtf(warp_sum(sum_sq) / (float)head_dim + eps);
#pragma unroll
        for (int j = 0; j < NORM_ROPE_MAX_PAIRS; ++j) {
            if (lane + 32 * j < half) {
                a[j] = round_bf16(wa[j] * round_bf16(a[j] * inv));
                b[j] = round_bf16(wb[j] * round_bf16(b[j] * inv));
            }
        }
    }
#pragma unroll
    for (int j = 0; j < NORM_ROPE_MAX_PAIRS; ++j) {
        if (lane + 32 * j < half) {
            const int i = lane + 32 * j;
            float s, c;
            sincosf(pos * freq[j], &s, &c);
            dst[i] = __float2bfloat16(a[j] * c - b[j] * s);
            dst[i + half] = __float2bfloat16(b[j] * c + a[j] * s);
        }
    }
    if (v_src != nullptr) {
#pragma unroll
        for (int j = 0; j < 2 * NORM_ROPE_MAX_PAIRS; ++j)
            if (lane + 32 * j < head_dim) v_dst[lane + 32 * j] = __float2bfloat16(v_vals[j]);
    }
}

// cp.async (global -> shared, 16 bytes, through L2) with its group commit and wait; pred false
// writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
                 "r"(pred ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Hopper's bulk copies (TMA, sm_90+; before, they trap and are never launched: the host picks them
// only on sm_90): a 16-byte multiple copied global -> shared by the copy engine, completing on a
// shared-memory mbarrier that counts the bytes it expects (arrive_expect_tx) against those landed.
__device__ __forceinline__ void mbar_init(unsigned long long *bar, unsigned count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)),
                 "r"(count)
                 : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
    __trap();
#endif
}
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned long long *bar, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                     (unsigned)__cvta_generic_to_shared(bar)),
                 "r"(bytes)
                 : "memory");
#else
    __trap();
#endif
}
// Spins until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(unsigned long long *bar, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned a = (unsigned)__cvta_generic_to_shared(bar);
    unsigned done = 0;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(a), "r"(parity)
                     : "memory");
    } while (!done);
#else
    __trap();
#endif
}
__device__ __forceinline__ void bulk_copy_g2s(void *smem, const void *gmem, unsigned bytes,
                                              unsigned long long *bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     (unsigned)__cvta_generic_to_shared(smem)),
                 "l"(gmem), "r"(bytes), "r"((unsigned)__cvta_generic_to_shared(bar))
                 : "memory");
#else
    __trap();
#endif
}
// Orders this thread's generic-proxy global writes before later bulk copies (async proxy) read them.
__device__ __forceinline__ void fence_proxy_async_global() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
#endif
}
