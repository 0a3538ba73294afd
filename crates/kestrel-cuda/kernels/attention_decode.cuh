// attention_decode.cuh: the decode-attention CTA shared by attention_decode.cu (q given) and
// attention_decode_qk.cu (q/k norm + RoPE + cache write fused in).
// Decode attention (one query token per sequence) over the paged KV cache: flash-decoding, i.e.
// split-K over the context, then a reduce that merges the partitions.
//   q, out: [num_tokens, num_heads * head_dim]; sequence s owns token cu_seqlens_q[s] if its query
//     length is 1; any other length writes nothing (0: a padding sequence; more: a prefill row of a
//     mixed step, which the prefill kernel handles)
//   k_cache, v_cache: [num_slots, num_kv_heads * head_dim], key position pos of sequence s at slot
//     block_tables[s * max_blocks + pos / block_size] * block_size + pos % block_size
//   workspace: ml [num_seqs, num_heads, max_partitions, 2] (running max, sum of exp), then
//     acc [num_seqs, num_heads, max_partitions, head_dim] (unnormalised P.V of the partition)
//   done: [num_seqs, gridDim.x] u32 counters, zero between launches
// The last CTA of a (sequence, head group) to finish its partition merges all of them (a counter
// bumped after a fence elects it, then resets the counter), so decode attention is one launch.
// The grid depends only on (num_seqs, heads, max_partitions), never on the context lengths, which are
// read from device memory: a CUDA graph captured once replays right as the sequences grow. Each
// sequence splits its context into partitions of partition_size(ctx) keys (at most max_partitions
// of them); CTAs past the last partition exit at once. A sequence with a single partition writes its
// output directly.
// Numerics: f32 dot products, softmax with a running max (expf, not the fast intrinsic; the max moves
// once per U keys of a lane group) and f32 P.V
// accumulation; the output is rounded to bf16 once. A sequence with no keys yields zeros.
#pragma once
#include "attention_decode_kv.cuh"
#include "attention_decode_merge.cuh"

#define MIN_PARTITION 64  // keys; partitions are multiples of PARTITION_ALIGN of at least this
#define PARTITION_ALIGN 32

__device__ __forceinline__ int partition_size(int ctx, int max_partitions) {
    int per = (ctx + max_partitions - 1) / max_partitions;
    per = (per + PARTITION_ALIGN - 1) / PARTITION_ALIGN * PARTITION_ALIGN;
    return max(per, MIN_PARTITION);
}

__device__ __forceinline__ int partition_count(int ctx, int part) {
    return ctx <= 0 ? 1 : (ctx + part - 1) / part;
}

// What a decode CTA works on, from its grid position: sequence s (its query row q_token), partition p
// of nparts (keys k_begin .. k_end), kv head kvh and its gcount q heads h0 .. (G per CTA). False:
// nothing to do (padding, a mixed step's prefill row, or a partition past the context).
struct DecodeCta {
    int s, p, q_token, nparts, k_begin, k_end, kvh, h0, gcount;
};
__device__ __forceinline__ bool decode_cta(DecodeCta &c, int G, const unsigned *cu_seqlens_q,
                                           const unsigned *context_lens, int num_heads, int num_kv_heads,
                                           int max_partitions) {
    c.s = blockIdx.y;
    c.p = blockIdx.z;
    c.q_token = (int)cu_seqlens_q[c.s];
    if ((int)cu_seqlens_q[c.s + 1] - c.q_token != 1) return false;
    const int ctx = (int)context_lens[c.s];
    const int part = partition_size(ctx, max_partitions);
    c.nparts = partition_count(ctx, part);
    if (c.p >= c.nparts) return false;
    c.k_begin = c.p * part;
    c.k_end = min(ctx, c.k_begin + part);
    const int group = num_heads / num_kv_heads, chunks = (group + G - 1) / G;
    c.kvh = blockIdx.x / chunks;
    const int g0 = (blockIdx.x % chunks) * G;
    c.h0 = c.kvh * group + g0;
    c.gcount = min(G, group - g0);
    return true;
}

// The fused variant's inputs (attention_decode_qk_g*): q comes raw from the QKV projection and is
// normalised and rotated per CTA (norm_rope_head, exactly as qk_norm_rope_kv_bf16 does), and the CTA
// of the partition holding the new key writes that key and its value into the cache before reading
// the partition: a decode step needs no separate q/k-norm + RoPE + cache-write launch.
struct FusedQk {
    const bf16 *qkv;  // [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim]
    const unsigned *positions, *slot_mapping;
    const float *inv_freq, *q_norm, *k_norm;  // norms null for Qwen2
    bf16 *k_cache, *v_cache;                  // the caches below, written
    float eps;
    unsigned num_slots;
};

// Every decode kernel's parameters, and the fused (_qk) kernels': src/ops/attention.rs launches the
// lane and tensor-core instances of a kind with one argument list. DECODE_QK_INPUTS makes the FusedQk
// `f` of the fused parameters.
#define DECODE_PARAMS                                                                             \
    bf16 *out, float *ws_ml, float *ws_acc, unsigned *done, const bf16 *q, const bf16 *k_cache,   \
        const bf16 *v_cache, const unsigned *cu_seqlens_q, const unsigned *context_lens,         \
        const unsigned *block_tables, int num_heads, int num_kv_heads, int head_dim,              \
        int block_size, int max_blocks, int max_partitions, float scale
#define DECODE_QK_PARAMS                                                                          \
    bf16 *out, float *ws_ml, float *ws_acc, unsigned *done, const bf16 *qkv, bf16 *k_cache,       \
        bf16 *v_cache, const unsigned *cu_seqlens_q, const unsigned *context_lens,               \
        const unsigned *block_tables, const unsigned *positions, const unsigned *slot_mapping,    \
        const float *inv_freq, const float *q_norm, const float *k_norm, float eps,               \
        unsigned num_slots, int num_heads, int num_kv_heads, int head_dim, int block_size,        \
        int max_blocks, int max_partitions, float scale
#define DECODE_QK_INPUTS                                                                          \
    const FusedQk f{qkv, positions, slot_mapping, inv_freq, q_norm, k_norm, k_cache, v_cache, eps, num_slots}

// The fused variant's start of a CTA (DECODE_WARPS warps): its gcount q heads h0 .. normalised and
// rotated into q_s ([gcount, head_dim] bf16); and the new key, the last of the context: its
// partition's CTA stores it and its value (every head chunk's CTA does when a group spans several:
// the same bytes) before the key loop reads them back (after a __syncthreads()).
__device__ __forceinline__ void fused_qk_prologue(bf16 *q_s, const FusedQk &f, int q_token,
                                                  bool last_partition, int kvh, int h0, int gcount,
                                                  int num_heads, int num_kv_heads, int head_dim,
                                                  size_t kv_stride) {
    const int warp = threadIdx.x >> 5;
    const bf16 *row = f.qkv + (size_t)q_token * (num_heads + 2 * num_kv_heads) * head_dim;
    const float pos = (float)f.positions[q_token];
    for (int g = warp; g < gcount; g += DECODE_WARPS)
        norm_rope_head(q_s + g * head_dim, row + (size_t)(h0 + g) * head_dim, f.q_norm, f.eps, pos,
                       f.inv_freq, head_dim, nullptr, nullptr);
    const unsigned slot = f.slot_mapping[q_token];
    if (last_partition && slot < f.num_slots && warp == DECODE_WARPS - 1) {
        const size_t off = (size_t)slot * kv_stride + (size_t)kvh * head_dim;
        norm_rope_head(f.k_cache + off, row + (size_t)(num_heads + kvh) * head_dim, f.k_norm, f.eps,
                       pos, f.inv_freq, head_dim, f.v_cache + off,
                       row + (size_t)(num_heads + num_kv_heads + kvh) * head_dim);
    }
}

// One CTA: one partition of one sequence's keys, for G q heads sharing one kv head (K/V are read
// once for the group). A lane group of LPK = pow2 >= head_dim / 8 lanes owns one key at a time, each
// lane 8 elements (16 bytes) of it; every lane group keeps its own running max / sum / accumulator
// over the keys it visits (no barrier in the key loop), and the CTA merges them at the end.
// Launch: grid (num_kv_heads * ceil(group / G), num_seqs, max_partitions), block 32 * DECODE_WARPS,
// dynamic shared memory: the K/V ring, S * U * 2 * 32 * DECODE_WARPS 16-byte slots (KvFetch), then
// DECODE_WARPS * G * (head_dim + 2) floats, then (max_blocks + 1) u32 (the partition's block-table
// entries).
template <int G, int U, int S, bool FUSED>
__device__ void decode_partition(bf16 *__restrict__ out, float *__restrict__ ws_ml,
                                 float *__restrict__ ws_acc, unsigned *__restrict__ done,
                                 const bf16 *__restrict__ q,
                                 const bf16 *__restrict__ k_cache, const bf16 *__restrict__ v_cache,
                                 const unsigned *__restrict__ cu_seqlens_q,
                                 const unsigned *__restrict__ context_lens,
                                 const unsigned *__restrict__ block_tables, int num_heads,
                                 int num_kv_heads, int head_dim, int block_size, int max_blocks,
                                 int max_partitions, float scale, const FusedQk &f) {
    extern __shared__ uint4 decode_ring[];
    constexpr int RING_SLOTS = S * U * 2 * 32 * DECODE_WARPS;
    float *decode_smem = reinterpret_cast<float *>(decode_ring + RING_SLOTS);
    pdl_enter();
    DecodeCta c;
    if (!decode_cta(c, G, cu_seqlens_q, context_lens, num_heads, num_kv_heads, max_partitions)) return;
    const int s = c.s, p = c.p, q_token = c.q_token, nparts = c.nparts, k_begin = c.k_begin,
              k_end = c.k_end, kvh = c.kvh, h0 = c.h0, gcount = c.gcount;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int dchunks = head_dim / 8;
    int lpk = 1;
    while (lpk < dchunks) lpk <<= 1;
    const int keys_per_warp = 32 / lpk, key_slots = DECODE_WARPS * keys_per_warp;
    const int cl = lane % lpk, slot_in_cta = warp * keys_per_warp + lane / lpk;
    const bool active = cl < dchunks;
    const size_t kv_stride = (size_t)num_kv_heads * head_dim;
    // This partition's block-table entries, staged in shared memory once: the key loop then finds
    // each key's slot without a dependent global load before its K/V loads.
    unsigned *s_bt = reinterpret_cast<unsigned *>(decode_smem + DECODE_WARPS * G * (head_dim + 2));
    const int b0 = k_begin / block_size;
    if (k_end > k_begin) {
        const unsigned *bt = block_tables + (size_t)s * max_blocks;
        for (int i = threadIdx.x; i <= (k_end - 1) / block_size - b0; i += blockDim.x) s_bt[i] = bt[b0 + i];
    }
    // fused: this CTA's q heads, normalised and rotated into shared memory (aliasing the merge area,
    // which is only used after the key loop)
    bf16 *q_s = reinterpret_cast<bf16 *>(decode_smem);
    if constexpr (FUSED)
        fused_qk_prologue(q_s, f, q_token, p == nparts - 1, kvh, h0, gcount, num_heads, num_kv_heads,
                          head_dim, kv_stride);
    __syncthreads();

    float qf[G][8], acc[G][8], m[G], l[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        uint4 raw = make_uint4(0, 0, 0, 0);
        if (active && g < gcount)
            raw = FUSED ? *reinterpret_cast<const uint4 *>(q_s + g * head_dim + cl * 8)
                        : *reinterpret_cast<const uint4 *>(q + ((size_t)q_token * num_heads + h0 + g) * head_dim +
                                                           cl * 8);
        unpack_bf16x8(raw, qf[g]);
        m[g] = NEG_INF;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
    }
    if constexpr (FUSED) __syncthreads();  // q_s is read before the merge area is written

    // The softmax is updated once per U keys, not once per key: the U scores of a lane group are
    // computed first, the running max moves once, then the U weights are accumulated (the key loop is
    // issue-bound: ncu, 64 sequences, 0.49 instructions per scheduler cycle at 25% occupancy).
    // expf, not exp2f with log2(e) folded in: mixed prefill+decode steps score decode rows with the
    // prefill kernel, which uses expf, and a batch must decode as each sequence alone does.
    // The trip count is the same for every thread (shuffles below need whole warps).
    const int per_iter = key_slots * U;
    const int iters = (k_end - k_begin + per_iter - 1) / per_iter;
    const KvFetch<U, S, FUSED> kv{decode_ring, k_cache, v_cache, s_bt, k_begin, k_end, iters, per_iter,
                                  key_slots, slot_in_cta, b0, block_size, kv_stride,
                                  (size_t)kvh * head_dim + cl * 8, active};
    kv.start();
    for (int it = 0; it < iters; ++it) {
        const int base = k_begin + it * per_iter;
        uint4 kraw[U], vraw[U];
        bool ok[U];
        kv.fetch(it, kraw, vraw);
#pragma unroll
        for (int u = 0; u < U; ++u) ok[u] = base + slot_in_cta + u * key_slots < k_end;
        float sc[U][G];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kf[8];
            unpack_bf16x8(kraw[u], kf);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                float dot = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; ++e) dot = fmaf(qf[g][e], kf[e], dot);
                for (int off = lpk >> 1; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
                sc[u][g] = ok[u] ? dot * scale : NEG_INF;
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float mt = m[g];
#pragma unroll
            for (int u = 0; u < U; ++u) mt = fmaxf(mt, sc[u][g]);
            if (mt > m[g]) {
                const float a = expf(m[g] - mt);  // 0 while m = -inf
                l[g] *= a;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[g][e] *= a;
                m[g] = mt;
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (!ok[u]) continue;
            float vf[8];
            unpack_bf16x8(vraw[u], vf);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float pr = expf(sc[u][g] - m[g]);
                l[g] += pr;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(pr, vf[e], acc[g][e]);
            }
        }
    }

    // Merge the lane groups: a common max per head over the CTA, then sums of the rescaled states.
    float *s_max = decode_smem;                        // [DECODE_WARPS][G]
    float *s_sum = s_max + DECODE_WARPS * G;           // [DECODE_WARPS][G]
    float *s_acc = s_sum + DECODE_WARPS * G;           // [DECODE_WARPS][G][head_dim]
    float cta_max[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float mx = m[g];
        for (int off = lpk; off < 32; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        if (lane == 0) s_max[warp * G + g] = mx;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
        cta_max[g] = s_max[g];
        for (int w = 1; w < DECODE_WARPS; ++w) cta_max[g] = fmaxf(cta_max[g], s_max[w * G + g]);
        const float f = m[g] == NEG_INF ? 0.0f : expf(m[g] - cta_max[g]);
        l[g] *= f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] *= f;
        for (int off = lpk; off < 32; off <<= 1) {
            l[g] += __shfl_xor_sync(0xffffffffu, l[g], off);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], off);
        }
        if (lane == 0) s_sum[warp * G + g] = l[g];
        if (lane < lpk && active) {
#pragma unroll
            for (int e = 0; e < 8; ++e) s_acc[(warp * G + g) * head_dim + cl * 8 + e] = acc[g][e];
        }
    }
    __syncthreads();

    finish_partition<G>(out, ws_ml, ws_acc, done, s_max, s_sum, s_acc, s, p, nparts, q_token, h0, gcount,
                        num_heads, head_dim, max_partitions);
}
