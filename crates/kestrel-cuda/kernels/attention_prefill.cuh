// The prefill-attention kernels' one argument list (attention_prefill.cu's f32 tiles and
// attention_prefill_mma.cu's tensor-core tiles take the same launch: src/ops/attention.rs).
#pragma once

#define PREFILL_PARAMS                                                                            \
    bf16 *out, const bf16 *q, const bf16 *k_cache, const bf16 *v_cache,                           \
        const unsigned *cu_seqlens_q, const unsigned *context_lens, const unsigned *block_tables, \
        int num_heads, int num_kv_heads, int block_size, int max_blocks, float scale,             \
        int skip_single
#define PREFILL_ARGS                                                                              \
    out, q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, num_heads, num_kv_heads,  \
        block_size, max_blocks, scale, skip_single
