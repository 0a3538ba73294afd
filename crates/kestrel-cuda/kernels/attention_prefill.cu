// Prefill attention (any query length per sequence, mixed with decodes) over the paged KV cache:
// flash-attention tiles with an online softmax, causal, GQA, cached prefixes included.
//   q, out: [num_tokens, num_heads * head_dim]; sequence s owns tokens cu_seqlens_q[s] ..
//     cu_seqlens_q[s + 1]; it holds context_lens[s] keys after this step, so its query i sits at
//     position context_lens[s] - query_len + i and attends keys 0 ..= that position
//   k_cache, v_cache: [num_slots, num_kv_heads * head_dim], key position pos of sequence s at slot
//     block_tables[s * max_blocks + pos / block_size] * block_size + pos % block_size
// One CTA: BQ queries of one head of one sequence; it walks the keys in tiles of BK, staging Q, K, V
// (bf16) and the probabilities P (f32) in shared memory. Thread (ty, tx) of a 16 x 16 layout owns
// query rows ty + 16 i (i < 4): for S = Q K^T the keys tx + 16 j (j < 4), for O = P V the 4-element
// column chunks tx + 16 c. The 16 threads of a row are one half-warp, so row maxima and sums are
// half-warp shuffles. Keys past the context are zero-filled, never read (the cache may hold anything
// there), and masked with -inf before the softmax.
// skip_single: sequences with exactly one query are left alone (a mixed step's decode rows, which the
// split-K decode kernel handles in a launch of its own).
// Numerics: f32 dot products, expf, f32 accumulation; the output is rounded to bf16 once. A query
// with no keys (an inconsistent context length) yields zeros.
// Launch: grid (ceil(max_query_len / BQ), num_heads, num_seqs), block PREFILL_THREADS, dynamic
// shared memory prefill_smem_bytes(D) (see src/ops/attention.rs); q, out, caches 16-byte aligned.
#include "common.cuh"
#include "attention_prefill.cuh"

#define BQ 64
#define BK 64
#define PREFILL_THREADS 256
#define NEG_INF __int_as_float(0xff800000u)
#define LDP (BK + 16)  // row stride of P in floats: the two half-warps' rows fall on disjoint banks

template <int D>
__device__ void prefill_tile(bf16 *__restrict__ out, const bf16 *__restrict__ q,
                             const bf16 *__restrict__ k_cache, const bf16 *__restrict__ v_cache,
                             const unsigned *__restrict__ cu_seqlens_q,
                             const unsigned *__restrict__ context_lens,
                             const unsigned *__restrict__ block_tables, int num_heads,
                             int num_kv_heads, int block_size, int max_blocks, float scale,
                             int skip_single) {
    constexpr int LD = D + 8;         // bf16 row stride of Q/K/V tiles: 16-byte rows, no bank conflicts
    constexpr int CH16 = D / 8;       // 16-byte chunks per row
    constexpr int CH4 = D / 4;        // 4-element chunks per row (P.V columns)
    constexpr int NCH = (CH4 + 15) / 16;
    extern __shared__ uint4 prefill_smem[];
    bf16 *sQ = reinterpret_cast<bf16 *>(prefill_smem);
    bf16 *sK = sQ + BQ * LD;
    bf16 *sV = sK + BK * LD;
    float *sP = reinterpret_cast<float *>(sV + BK * LD);

    const int qt = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
    const int q_start = (int)cu_seqlens_q[s];
    const int qlen = (int)cu_seqlens_q[s + 1] - q_start;
    const int q0 = qt * BQ;
    if (q0 >= qlen || (skip_single && qlen == 1)) return;
    const int rows = min(BQ, qlen - q0);
    const int first_pos = (int)context_lens[s] - qlen + q0;  // position of this tile's row 0
    const int kend = first_pos + rows;                         // keys [0, kend) are needed
    const int kvh = h / (num_heads / num_kv_heads);
    const size_t q_stride = (size_t)num_heads * D, kv_stride = (size_t)num_kv_heads * D;
    const unsigned *bt = block_tables + (size_t)s * max_blocks;
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;

    for (int i = tid; i < BQ * CH16; i += PREFILL_THREADS) {
        const int r = i / CH16, c = i % CH16;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < rows)
            v = *reinterpret_cast<const uint4 *>(q + (size_t)(q_start + q0 + r) * q_stride +
                                                 (size_t)h * D + c * 8);
        *reinterpret_cast<uint4 *>(sQ + r * LD + c * 8) = v;
    }

    float m[4], l[4], o[4][NCH * 4];
    int qpos[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = ty + 16 * i;
        qpos[i] = r < rows ? first_pos + r : -1;  // -1: a padding row, every key masked
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < NCH * 4; ++c) o[i][c] = 0.0f;
    }

    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();  // the previous tile's K, V and P are no longer read (and Q is stored)
        for (int i = tid; i < BK * CH16; i += PREFILL_THREADS) {
            const int j = i / CH16, c = i % CH16, pos = k0 + j;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
            if (pos < kend) {
                const size_t slot = (size_t)bt[pos / block_size] * block_size + pos % block_size;
                const size_t off = slot * kv_stride + (size_t)kvh * D + c * 8;
                kv = *reinterpret_cast<const uint4 *>(k_cache + off);
                vv = *reinterpret_cast<const uint4 *>(v_cache + off);
            }
            *reinterpret_cast<uint4 *>(sK + j * LD + c * 8) = kv;
            *reinterpret_cast<uint4 *>(sV + j * LD + c * 8) = vv;
        }
        __syncthreads();

        float sc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) sc[i][j] = 0.0f;
#pragma unroll 2
        for (int c = 0; c < CH16; ++c) {
            float qf[4][8], kf[4][8];
#pragma unroll
            for (int i = 0; i < 4; ++i)
                unpack_bf16x8(*reinterpret_cast<const uint4 *>(sQ + (ty + 16 * i) * LD + c * 8), qf[i]);
#pragma unroll
            for (int j = 0; j < 4; ++j)
                unpack_bf16x8(*reinterpret_cast<const uint4 *>(sK + (tx + 16 * j) * LD + c * 8), kf[j]);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int e = 0; e < 8; ++e) sc[i][j] = fmaf(qf[i][e], kf[j][e], sc[i][j]);
        }

        // Online softmax, row by row: the tile's max over the half-warp, rescale, P to shared memory.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float mx = NEG_INF;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                sc[i][j] = k0 + tx + 16 * j <= qpos[i] ? sc[i][j] * scale : NEG_INF;
                mx = fmaxf(mx, sc[i][j]);
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float m_new = fmaxf(m[i], mx);
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;  // no keys yet: avoid inf - inf
            const float alpha = expf(m[i] - m_use);
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float pr = expf(sc[i][j] - m_use);
                sP[(ty + 16 * i) * LDP + tx + 16 * j] = pr;
                sum += pr;
            }
            l[i] = l[i] * alpha + sum;  // this thread's share of the row sum
#pragma unroll
            for (int c = 0; c < NCH * 4; ++c) o[i][c] *= alpha;
            m[i] = m_new;
        }
        __syncthreads();

        const int kn = min(BK, kend - k0);
        for (int k = 0; k < kn; ++k) {
            float pr[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) pr[i] = sP[(ty + 16 * i) * LDP + k];
#pragma unroll
            for (int c = 0; c < NCH; ++c) {
                const int col = (tx + 16 * c) * 4;
                if (c * 16 + tx < CH4) {
                    const uint2 raw = *reinterpret_cast<const uint2 *>(sV + k * LD + col);
                    const float2 v01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.x));
                    const float2 v23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.y));
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        o[i][c * 4 + 0] = fmaf(pr[i], v01.x, o[i][c * 4 + 0]);
                        o[i][c * 4 + 1] = fmaf(pr[i], v01.y, o[i][c * 4 + 1]);
                        o[i][c * 4 + 2] = fmaf(pr[i], v23.x, o[i][c * 4 + 2]);
                        o[i][c * 4 + 3] = fmaf(pr[i], v23.y, o[i][c * 4 + 3]);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float sum = l[i];
#pragma unroll
        for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        const int r = ty + 16 * i;
        if (r >= rows) continue;
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        bf16 *dst = out + (size_t)(q_start + q0 + r) * q_stride + (size_t)h * D;
#pragma unroll
        for (int c = 0; c < NCH; ++c) {
            if (c * 16 + tx < CH4) {
                uint2 packed;
                *reinterpret_cast<__nv_bfloat162 *>(&packed.x) =
                    __floats2bfloat162_rn(o[i][c * 4 + 0] * inv, o[i][c * 4 + 1] * inv);
                *reinterpret_cast<__nv_bfloat162 *>(&packed.y) =
                    __floats2bfloat162_rn(o[i][c * 4 + 2] * inv, o[i][c * 4 + 3] * inv);
                *reinterpret_cast<uint2 *>(dst + (tx + 16 * c) * 4) = packed;
            }
        }
    }
}

#define PREFILL_KERNEL(D)                                                                           \
    extern "C" __global__ void __launch_bounds__(PREFILL_THREADS)                                   \
        attention_prefill_d##D(PREFILL_PARAMS) {                                                    \
        pdl_enter();                                                                                \
        prefill_tile<D>(PREFILL_ARGS);                                                              \
    }

// One instance per supported head_dim (src/ops/attention.rs: HEAD_DIMS).
PREFILL_KERNEL(16)
PREFILL_KERNEL(32)
PREFILL_KERNEL(64)
PREFILL_KERNEL(96)
PREFILL_KERNEL(128)
PREFILL_KERNEL(192)
PREFILL_KERNEL(256)
