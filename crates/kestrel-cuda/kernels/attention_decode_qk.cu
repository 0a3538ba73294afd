// Decode attention with Qwen3's q/k RMSNorm + RoPE + the KV-cache write fused in (FusedQk in
// attention_decode.cuh): a decode step's layer needs no qk_norm_rope_kv launch.
#include "attention_decode.cuh"

#define DECODE_QK_KERNEL(G, U, S)                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * DECODE_WARPS) attention_decode_qk_g##G(        \
        bf16 *out, float *ws_ml, float *ws_acc, unsigned *done, const bf16 *qkv, bf16 *k_cache,     \
        bf16 *v_cache, const unsigned *cu_seqlens_q, const unsigned *context_lens,                 \
        const unsigned *block_tables, const unsigned *positions, const unsigned *slot_mapping,      \
        const float *inv_freq, const float *q_norm, const float *k_norm, float eps,                 \
        unsigned num_slots, int num_heads, int num_kv_heads, int head_dim, int block_size,          \
        int max_blocks, int max_partitions, float scale) {                                          \
        const FusedQk f{qkv, positions, slot_mapping, inv_freq, q_norm, k_norm, k_cache, v_cache,    \
                        eps, num_slots};                                                             \
        decode_partition<G, U, S, true>(out, ws_ml, ws_acc, done, nullptr, k_cache, v_cache,            \
                                     cu_seqlens_q, context_lens, block_tables, num_heads,            \
                                     num_kv_heads, head_dim, block_size, max_blocks,                 \
                                     max_partitions, scale, f);                                      \
    }

// the same U and S per G as attention_decode.cu
DECODE_QK_KERNEL(1, 4, 0)
DECODE_QK_KERNEL(2, 4, 0)
DECODE_QK_KERNEL(4, 4, 3)
DECODE_QK_KERNEL(8, 2, 0)
