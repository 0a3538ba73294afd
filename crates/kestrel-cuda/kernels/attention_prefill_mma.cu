// Prefill attention on the tensor cores: the job, arguments and grid of attention_prefill.cu (read
// its header), as flash-attention 2 does it with mma.m16n8k16:
//   one CTA = PM_BQ queries of one head of one sequence, 4 warps of 16 query rows each;
//   S = Q K^T per 64-key tile: A = the warp's Q rows (registers, by ldmatrix once), B = the K tile by
//   ldmatrix (keys are B's columns);
//   O += P V: A = P straight from S's accumulators (as two bf16 terms), B = the V tile by
//   ldmatrix.trans.
// K/V tiles go through a two-stage shared-memory ring filled by cp.async from all threads, so the
// next tile's loads overlap this tile's mma.
// Why: the CUDA-core kernel spends f32 FMAs on every (query, key, dim) (~11 TFLOP in nano-vllm's
// bench.py workload at Qwen3-0.6B, and a large share of pp512).
// Numerics as attention_prefill.cu within rounding: S in f32 (exact bf16 products, f32 sums in
// another order), the tile-wise online softmax with the same 64-key tiles (same running maxima) and
// expf in f32, P.V with P as hi + lo bf16 terms (~2^-17 of the f32 P), f32 accumulation, the output
// rounded to bf16 once. Keys past a query's position are masked with -inf before the softmax; keys
// past the context are zero-filled, never read.
// Launch: grid (ceil(max_query_len / PM_BQ), num_heads, num_seqs), block PM_THREADS, dynamic shared
// memory prefill_mma_smem(D) (src/ops/attention.rs); q, out, caches 16-byte aligned; D = head_dim.
#include "mma_bf16.cuh"
#include "attention_prefill.cuh"

#define PM_BQ 64
#define PM_BK 64
#define PM_THREADS 128
#define PM_NEG_INF __int_as_float(0xff800000u)

// Q tile, then two stages of a K and a V tile; rows padded by 8 bf16 (ldmatrix's 8 rows fall on
// distinct banks).
__host__ __device__ constexpr int prefill_mma_smem(int d) { return (PM_BQ + 2 * 2 * PM_BK) * (d + 8) * 2; }

template <int D>
__device__ void prefill_mma(bf16 *__restrict__ out, const bf16 *__restrict__ q,
                            const bf16 *__restrict__ k_cache, const bf16 *__restrict__ v_cache,
                            const unsigned *__restrict__ cu_seqlens_q,
                            const unsigned *__restrict__ context_lens,
                            const unsigned *__restrict__ block_tables, int num_heads, int num_kv_heads,
                            int block_size, int max_blocks, float scale, int skip_single) {
    constexpr int LD = D + 8, CH = D / 8, TILE = PM_BK * LD;
    static_assert(D % 16 == 0, "head_dim");
    extern __shared__ uint4 prefill_mma_area[];
    bf16 *sQ = reinterpret_cast<bf16 *>(prefill_mma_area);
    bf16 *ring = sQ + PM_BQ * LD;  // stage t: K at ring + 2 t TILE, V after it

    const int qt = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
    const int q_start = (int)cu_seqlens_q[s];
    const int qlen = (int)cu_seqlens_q[s + 1] - q_start;
    const int q0 = qt * PM_BQ;
    if (q0 >= qlen || (skip_single && qlen == 1)) return;
    const int rows = min(PM_BQ, qlen - q0);
    const int first_pos = (int)context_lens[s] - qlen + q0;  // position of this tile's row 0
    const int kend = first_pos + rows;                         // keys [0, kend) are needed
    const int kvh = h / (num_heads / num_kv_heads);
    const size_t q_stride = (size_t)num_heads * D, kv_stride = (size_t)num_kv_heads * D;
    const unsigned *bt = block_tables + (size_t)s * max_blocks;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int qr = lane >> 2, qc = (lane & 3) * 2;  // fragment row and column pair

    // Copies key tile t into its stage (zeros past kend); one commit group per call, empty past the
    // last tile, so the wait count stays fixed.
    const int ntiles = (kend + PM_BK - 1) / PM_BK;
    auto issue = [&](int t) {
        if (t < ntiles) {
            bf16 *sk = ring + (t & 1) * 2 * TILE, *sv = sk + TILE;
            for (int i = tid; i < PM_BK * CH; i += PM_THREADS) {
                const int j = i / CH, c = i % CH, pos = t * PM_BK + j;
                const bool in = pos < kend;
                size_t off = 0;
                if (in) {
                    const size_t slot = (size_t)bt[pos / block_size] * block_size + pos % block_size;
                    off = slot * kv_stride + (size_t)kvh * D + c * 8;
                }
                cp_async16(sk + j * LD + c * 8, k_cache + off, in);
                cp_async16(sv + j * LD + c * 8, v_cache + off, in);
            }
        }
        cp_async_commit();
    };
    issue(0);
    for (int i = tid; i < PM_BQ * CH; i += PM_THREADS) {
        const int r = i / CH, c = i % CH;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < rows)
            v = *reinterpret_cast<const uint4 *>(q + (size_t)(q_start + q0 + r) * q_stride + (size_t)h * D + c * 8);
        *reinterpret_cast<uint4 *>(sQ + r * LD + c * 8) = v;
    }
    __syncthreads();

    // This warp's 16 query rows as A fragments: tile l / 8 of ldmatrix = rows (l / 8 % 2) 8 .., k (l / 16) 8 ..
    unsigned qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        ldsm_x4<false>(qa[kk], sQ + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);

    // rows qr and qr + 8 of the warp: their positions (-1: padding, every key masked), running
    // maxima and this lane's shares of their sums
    int qpos[2];
    float m[2], l[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int r = warp * 16 + qr + 8 * e;
        qpos[e] = r < rows ? first_pos + r : -1;
        m[e] = PM_NEG_INF;
        l[e] = 0.0f;
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    for (int t = 0; t < ntiles; ++t) {
        issue(t + 1);  // into the stage tile t - 1 used: every warp left it at the end of the last round
        cp_async_wait<1>();
        __syncthreads();  // tile t has landed, from every thread's copies
        const bf16 *sk = ring + (t & 1) * 2 * TILE, *sv = sk + TILE;
        const int k0 = t * PM_BK;

        // S = Q K^T over 8 key groups of 8: ldmatrix tile j = keys (j / 2) 8 .., dims (j % 2) 8 ..
        float sc[PM_BK / 8][4];
#pragma unroll
        for (int n = 0; n < PM_BK / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
            for (int np = 0; np < PM_BK / 16; ++np) {
                unsigned b[4];
                ldsm_x4<false>(b, sk + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 +
                                      ((lane >> 3) & 1) * 8);
                mma_bf16_16816(sc[2 * np], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b[0], b[1]);
                mma_bf16_16816(sc[2 * np + 1], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b[2], b[3]);
            }

        // Online softmax per row (e = 0: row qr, accumulators 0-1; e = 1: row qr + 8, 2-3); a quad
        // holds a row's 64 keys.
        float alpha[2], m_use[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float mt = PM_NEG_INF;
#pragma unroll
            for (int n = 0; n < PM_BK / 8; ++n)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    float &v = sc[n][2 * e + c];
                    v = k0 + n * 8 + qc + c <= qpos[e] ? v * scale : PM_NEG_INF;
                    mt = fmaxf(mt, v);
                }
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
            const float m_new = fmaxf(m[e], mt);
            m_use[e] = m_new == PM_NEG_INF ? 0.0f : m_new;  // no keys yet: avoid inf - inf
            alpha[e] = expf(m[e] - m_use[e]);
            m[e] = m_new;
            l[e] *= alpha[e];
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][0] *= alpha[0], o[n][1] *= alpha[0];
            o[n][2] *= alpha[1], o[n][3] *= alpha[1];
        }
#pragma unroll
        for (int n = 0; n < PM_BK / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                sc[n][c] = expf(sc[n][c] - m_use[c >> 1]);  // 0 for masked keys
                l[c >> 1] += sc[n][c];
            }

        // O += P V, 16 keys a step: P's A fragment is S's accumulators of key groups 2j and 2j + 1;
        // ldmatrix.trans tile i = keys (i % 2) 8 .., dims (i / 2) 8 .. of a 16-dim slab
#pragma unroll
        for (int j = 0; j < PM_BK / 16; ++j) {
            const uint2 a0 = bf16x2_split(sc[2 * j][0], sc[2 * j][1]);
            const uint2 a1 = bf16x2_split(sc[2 * j][2], sc[2 * j][3]);
            const uint2 a2 = bf16x2_split(sc[2 * j + 1][0], sc[2 * j + 1][1]);
            const uint2 a3 = bf16x2_split(sc[2 * j + 1][2], sc[2 * j + 1][3]);
#pragma unroll
            for (int dn = 0; dn < D / 16; ++dn) {
                unsigned b[4];
                ldsm_x4<true>(b, sv + (j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + dn * 16 +
                                     (lane >> 4) * 8);
                mma_bf16_16816(o[2 * dn], a0.x, a1.x, a2.x, a3.x, b[0], b[1]);
                mma_bf16_16816(o[2 * dn], a0.y, a1.y, a2.y, a3.y, b[0], b[1]);
                mma_bf16_16816(o[2 * dn + 1], a0.x, a1.x, a2.x, a3.x, b[2], b[3]);
                mma_bf16_16816(o[2 * dn + 1], a0.y, a1.y, a2.y, a3.y, b[2], b[3]);
            }
        }
        __syncthreads();  // every warp is done with this stage before the next round refills it
    }
    cp_async_wait<0>();

#pragma unroll
    for (int e = 0; e < 2; ++e) {
        float sum = l[e];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int r = warp * 16 + qr + 8 * e;
        if (r >= rows) continue;
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        bf16 *dst = out + (size_t)(q_start + q0 + r) * q_stride + (size_t)h * D;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<__nv_bfloat162 *>(dst + n * 8 + qc) =
                __floats2bfloat162_rn(o[n][2 * e] * inv, o[n][2 * e + 1] * inv);
    }
}

#define PREFILL_MMA_KERNEL(D)                                                                       \
    extern "C" __global__ void __launch_bounds__(PM_THREADS)                                        \
        attention_prefill_mma_d##D(PREFILL_PARAMS) {                                                \
        pdl_enter();                                                                                \
        prefill_mma<D>(PREFILL_ARGS);                                                               \
    }

PREFILL_MMA_KERNEL(64)
PREFILL_MMA_KERNEL(128)
