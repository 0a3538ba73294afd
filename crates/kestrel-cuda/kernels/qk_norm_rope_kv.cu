// Per-head q/k RMSNorm (Qwen3; skipped when the norm weight is null, as in Qwen2) + neox RoPE +
// the paged KV-cache write, in one kernel over the output of the QKV projection.
//   qkv row: [q heads (num_heads * head_dim) | k heads (num_kv_heads * head_dim) | v heads (same)]
//   q_out: [num_tokens, num_heads * head_dim]
//   k_cache, v_cache: [num_slots, num_kv_heads * head_dim] with slot = block * block_size + offset,
//   i.e. vLLM's [num_blocks, block_size, num_kv_heads, head_dim]
// One warp per (token, head); the warps of k heads also copy the matching v head into the cache.
// Tokens whose slot is >= num_slots (KESTREL_NO_SLOT for padding) write no cache entry.
// Numerics: norm_rope_head (common.cuh), which decode attention's fused variant shares.
// Launch: grid (ceil(num_tokens * (num_heads + num_kv_heads) / warps_per_block)), block (32 * warps).
// head_dim % 16 == 0 and head_dim <= 256: lane l holds rotation pairs l, l + 32, ... below head_dim / 2
// (up to 4; with head_dim 32 lanes 16..31 hold none and add 0 to the norm's sum).
#include "common.cuh"

extern "C" __global__ void qk_norm_rope_kv_bf16(
    bf16 *__restrict__ q_out, bf16 *__restrict__ k_cache, bf16 *__restrict__ v_cache,
    const bf16 *__restrict__ qkv, const unsigned *__restrict__ positions,
    const unsigned *__restrict__ slot_mapping, const float *__restrict__ inv_freq,
    const float *__restrict__ q_norm, const float *__restrict__ k_norm, float eps, int num_tokens,
    int num_heads, int num_kv_heads, int head_dim, unsigned num_slots) {
    pdl_enter();
    const int heads = num_heads + num_kv_heads;
    const long long job = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (job >= (long long)num_tokens * heads) return;
    const int t = (int)(job / heads), h = (int)(job % heads);
    const bool is_q = h < num_heads;
    const int kv_dim = num_kv_heads * head_dim;
    const bf16 *row = qkv + (size_t)t * (num_heads * head_dim + 2 * kv_dim);
    const bf16 *src = row + (size_t)h * head_dim;  // k heads follow the q heads directly

    const unsigned slot = slot_mapping[t];
    const bool store = !is_q && slot < num_slots;
    if (!is_q && !store) return;  // a padding token: nothing to write for its k/v heads

    const int kv_head = h - num_heads;
    const bf16 *v_src = is_q ? nullptr : row + (size_t)num_heads * head_dim + kv_dim + (size_t)kv_head * head_dim;
    bf16 *dst = is_q ? q_out + (size_t)t * num_heads * head_dim + (size_t)h * head_dim
                     : k_cache + (size_t)slot * kv_dim + (size_t)kv_head * head_dim;
    bf16 *v_dst = is_q ? nullptr : v_cache + (size_t)slot * kv_dim + (size_t)kv_head * head_dim;
    norm_rope_head(dst, src, is_q ? q_norm : k_norm, eps, (float)positions[t], inv_freq, head_dim, v_dst,
                   v_src);
}
