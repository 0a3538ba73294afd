// Decode attention with Qwen3's q/k RMSNorm + RoPE + the KV-cache write fused in (FusedQk in
// attention_decode.cuh): a decode step's layer needs no qk_norm_rope_kv launch.
#include "attention_decode.cuh"

#define DECODE_QK_KERNEL(G, U, S)                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * DECODE_WARPS) attention_decode_qk_g##G(DECODE_QK_PARAMS) { \
        DECODE_QK_INPUTS;                                                                            \
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
