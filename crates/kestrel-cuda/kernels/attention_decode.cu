// Decode attention over the paged KV cache with q given (see attention_decode.cuh).
#include "attention_decode.cuh"

#define DECODE_KERNEL(G, U, S)                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * DECODE_WARPS) attention_decode_g##G(DECODE_PARAMS) { \
        const FusedQk none{};                                                                        \
        decode_partition<G, U, S, false>(out, ws_ml, ws_acc, done, q, k_cache, v_cache, cu_seqlens_q,   \
                                      context_lens, block_tables, num_heads, num_kv_heads, head_dim, \
                                      block_size, max_blocks, max_partitions, scale, none);          \
    }

// U: keys in flight per lane group (8 for G <= 2 measured slower on H200 at batch 64: 15.4k vs 21.7k tok/s)
// S: K/V ring stages (attention_decode_kv.cuh): measured a gain at G = 4 only (G = 8 untried)
DECODE_KERNEL(1, 4, 0)
DECODE_KERNEL(2, 4, 0)
DECODE_KERNEL(4, 4, 3)
DECODE_KERNEL(8, 2, 0)
