// Per-head q/k RMSNorm (Qwen3; skipped when the norm weight is null, as in Qwen2) + neox RoPE +
// the paged KV-cache write, in one kernel over the output of the QKV projection.
//   qkv row: [q heads (num_heads * head_dim) | k heads (num_kv_heads * head_dim) | v heads (same)]
//   q_out: [num_tokens, num_heads * head_dim]
//   k_cache, v_cache: [num_slots, num_kv_heads * head_dim] with slot = block * block_size + offset,
//   i.e. vLLM's [num_blocks, block_size, num_kv_heads, head_dim]
// One warp per (token, head); the warps of k heads also copy the matching v head into the cache.
// Tokens whose slot is >= num_slots (KESTREL_NO_SLOT for padding) write no cache entry.
// Numerics: the norm rounds as HF's Qwen3RMSNorm (n = bf16(x * rsqrt(var + eps)), bf16(w * n));
// RoPE rotates those bf16 values in f32 with the angle computed as HF does (f32 pos * inv_freq) and
// accurate sin/cos, and rounds once. HF instead rounds cos/sin and each product to bf16; rounding once
// is closer to HF's float32 run, which is what the parity test measures.
// Launch: grid (ceil(num_tokens * (num_heads + num_kv_heads) / warps_per_block)), block (32 * warps).
// head_dim % 16 == 0 and head_dim <= 256: lane l holds rotation pairs l, l + 32, ... below head_dim / 2
// (up to 4; with head_dim 32 lanes 16..31 hold none and add 0 to the norm's sum).
#include "common.cuh"

#define MAX_PAIRS_PER_LANE 4

extern "C" __global__ void qk_norm_rope_kv_bf16(
    bf16 *__restrict__ q_out, bf16 *__restrict__ k_cache, bf16 *__restrict__ v_cache,
    const bf16 *__restrict__ qkv, const unsigned *__restrict__ positions,
    const unsigned *__restrict__ slot_mapping, const float *__restrict__ inv_freq,
    const float *__restrict__ q_norm, const float *__restrict__ k_norm, float eps, int num_tokens,
    int num_heads, int num_kv_heads, int head_dim, unsigned num_slots) {
    pdl_enter();
    const int lane = threadIdx.x & 31;
    const int heads = num_heads + num_kv_heads;
    const long long job = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (job >= (long long)num_tokens * heads) return;
    const int t = (int)(job / heads), h = (int)(job % heads);
    const bool is_q = h < num_heads;
    const int half = head_dim / 2;
    const int kv_dim = num_kv_heads * head_dim;
    const bf16 *row = qkv + (size_t)t * (num_heads * head_dim + 2 * kv_dim);
    const bf16 *src = row + (size_t)h * head_dim;  // k heads follow the q heads directly

    const unsigned slot = slot_mapping[t];
    const bool store = !is_q && slot < num_slots;
    if (!is_q && !store) return;  // a padding token: nothing to write for its k/v heads

    // Every load this warp needs is issued up front, so the chain is one memory round trip, not five
    // (decode runs this kernel at a few dozen warps: latency is all it costs).
    const float *norm = is_q ? q_norm : k_norm;
    const float pos = (float)positions[t];
    float a[MAX_PAIRS_PER_LANE], b[MAX_PAIRS_PER_LANE], wa[MAX_PAIRS_PER_LANE],
        wb[MAX_PAIRS_PER_LANE], freq[MAX_PAIRS_PER_LANE];
    float sum_sq = 0.0f;
#pragma unroll
    for (int j = 0; j < MAX_PAIRS_PER_LANE; ++j) {
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
    float v_vals[MAX_PAIRS_PER_LANE * 2];
    const int kv_head = h - num_heads;
    if (!is_q) {
        const bf16 *v_src = row + (size_t)num_heads * head_dim + kv_dim + (size_t)kv_head * head_dim;
#pragma unroll
        for (int j = 0; j < 2 * MAX_PAIRS_PER_LANE; ++j)
            if (lane + 32 * j < head_dim) v_vals[j] = __bfloat162float(v_src[lane + 32 * j]);
    }
#pragma unroll
    for (int j = 0; j < MAX_PAIRS_PER_LANE; ++j)
        if (lane + 32 * j < half) sum_sq += a[j] * a[j] + b[j] * b[j];
    if (norm != nullptr) {
        const float inv = rsqrtf(warp_sum(sum_sq) / (float)head_dim + eps);
#pragma unroll
        for (int j = 0; j < MAX_PAIRS_PER_LANE; ++j) {
            if (lane + 32 * j < half) {
                a[j] = round_bf16(wa[j] * round_bf16(a[j] * inv));
                b[j] = round_bf16(wb[j] * round_bf16(b[j] * inv));
            }
        }
    }

    bf16 *dst = is_q ? q_out + (size_t)t * num_heads * head_dim + (size_t)h * head_dim
                     : k_cache + (size_t)slot * kv_dim + (size_t)kv_head * head_dim;
#pragma unroll
    for (int j = 0; j < MAX_PAIRS_PER_LANE; ++j) {
        if (lane + 32 * j < half) {
            const int i = lane + 32 * j;
            float s, c;
            sincosf(pos * freq[j], &s, &c);
            dst[i] = __float2bfloat16(a[j] * c - b[j] * s);
            dst[i + half] = __float2bfloat16(b[j] * c + a[j] * s);
        }
    }
    if (!is_q) {
        bf16 *v_dst = v_cache + (size_t)slot * kv_dim + (size_t)kv_head * head_dim;
#pragma unroll
        for (int j = 0; j < 2 * MAX_PAIRS_PER_LANE; ++j)
            if (lane + 32 * j < head_dim) v_dst[lane + 32 * j] = __float2bfloat16(v_vals[j]);
    }
}
