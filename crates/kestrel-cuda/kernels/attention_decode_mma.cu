// Decode attention on the tensor cores: the same job, grid, partitions, workspace and merge as
// attention_decode.cuh (read its header), with the q heads of a GQA group as the rows of
// mma.m16n8k16 (rows 0..7 = up to 8 heads; rows 8..15 stay zero) against tiles of 16 keys:
//   S = Q K^T: A = Q (ldmatrix from the q heads staged once in shared memory), B = the K tile by
//   ldmatrix (keys are B's columns);
//   O += P V: A = P, straight from S's accumulators as bf16 (the FA2 register reuse), B = the V tile
//   by ldmatrix.trans.
// Why: the lane kernel is issue-bound (ncu: 23% warps active, shuffle reductions per key and head,
// expf per key on every lane of a group) at ~57% of DRAM bandwidth over long contexts; here a
// 16-key tile costs each warp 48 mma, 20 ldmatrix (D = 128) and one softmax step for all its heads.
// Each warp owns every 4th tile of the partition and streams it through its own shared-memory ring
// (cp.async, or with TMA one bulk copy per key row; see decode_mma; rows padded by 8 bf16: ldmatrix's
// 8 rows fall on distinct banks; other layouts lost: BENCHMARKS.md, session 11); warps meet only after
// their last tile.
// Numerics: S in f32 (exact bf16 products, f32 sums), softmax with a running max and expf in f32,
// P.V with P as two bf16 terms (P = hi + lo, hi = bf16(P): 16 significant bits, within ~2^-17 of
// the f32 P the lane and prefill kernels use, so a sequence decodes alike in a mixed step, where the
// prefill kernel scores its row, and in a pure decode step), f32 accumulation; l sums the f32 P. The
// output is rounded to bf16 once.
// Launch: as attention_decode_g8 (grid (num_kv_heads * ceil(group / 8), num_seqs, max_partitions),
// block 32 * DECODE_WARPS), dynamic shared memory mma_att_smem(D, H) + mma_att_q_bytes(D) + (max_blocks
// + 1) u32 (+ 8-byte aligned, DECODE_WARPS * H barriers with TMA; src/ops/attention.rs); head_dim = D.
#include "attention_decode.cuh"
#include "mma_bf16.cuh"

#define MMA_ATT_G 8
#define MMA_ATT_KT 16

// A with rows 8..15 zero (the GQA heads fill rows 0..7 at most): only rows 0..7 of C are kept
__device__ __forceinline__ void mma_att(float (&c)[2], unsigned a0, unsigned a2, unsigned b0, unsigned b1) {
    mma_bf16_16816_top(c, a0, a2, b0, b1);
}

// Bytes of the warps' K/V rings at the start of the per-CTA area, `halves` 16-key K or V tiles a warp
// (also the fused q heads before the loop and the merge partials after it).
__host__ __device__ constexpr int mma_att_smem(int d, int halves) {
    return DECODE_WARPS * halves * MMA_ATT_KT * (d + 8) * 2;
}
// Bytes of the q heads after the rings (MMA_ATT_G rows padded like the tiles), read by ldmatrix at
// every tile rather than held in registers (2 * D / 16 of them, across the whole loop). The
// block-table entries follow.
__host__ __device__ constexpr int mma_att_q_bytes(int d) { return MMA_ATT_G * (d + 8) * 2; }

// The ring: H slots of one 16-key K or V tile each, a warp's tile t's K in slot 2t % H, its V in
// (2t + 1) % H. SPLIT = false: K and V of a tile are copied and waited for together (H = 2 x stages:
// while a warp reads tile t, tiles t + 1 .. t + H / 2 - 1 are in flight). SPLIT = true: each is its
// own copy group (H = 3: while a warp reads K or V of tile t, the next two are in flight, the same
// bytes as two stages in 3/4 of the shared memory: 4 CTAs an SM at D = 128 instead of 3; H = 4: three
// in flight in the two stages' memory). TMA (sm_90): a half is one bulk copy per key row, lanes 0..15
// each issuing its row's, counted on the slot's mbarrier (phase j / H of half j), instead of the
// whole warp's 16-byte cp.async copies and their groups.
template <int D, int H, bool SPLIT, bool FUSED, bool TMA>
__device__ void decode_mma(bf16 *__restrict__ out, float *__restrict__ ws_ml, float *__restrict__ ws_acc,
                           unsigned *__restrict__ done, const bf16 *__restrict__ q,
                           const bf16 *__restrict__ k_cache, const bf16 *__restrict__ v_cache,
                           const unsigned *__restrict__ cu_seqlens_q,
                           const unsigned *__restrict__ context_lens,
                           const unsigned *__restrict__ block_tables, int num_heads, int num_kv_heads,
                           int block_size, int max_blocks, int max_partitions, float scale,
                           const FusedQk &f) {
    constexpr int G = MMA_ATT_G, LD = D + 8, CH = D / 8, TILE = MMA_ATT_KT * LD;
    static_assert(D % 16 == 0 && 4 * DECODE_WARPS * G * (D + 2) <= mma_att_smem(D, H), "merge area");
    static_assert(SPLIT ? H >= 3 : H >= 4 && H % 2 == 0, "ring");
    extern __shared__ uint4 mma_att_area[];
    bf16 *area = reinterpret_cast<bf16 *>(mma_att_area);
    bf16 *s_q = area + mma_att_smem(D, H) / 2;
    unsigned *s_bt = reinterpret_cast<unsigned *>(area) + (mma_att_smem(D, H) + mma_att_q_bytes(D)) / 4;
    // TMA: each warp's H ring-slot barriers, after the block-table entries (8-byte aligned)
    unsigned long long *bars = reinterpret_cast<unsigned long long *>(
        reinterpret_cast<char *>(area) +
        ((mma_att_smem(D, H) + mma_att_q_bytes(D) + (max_blocks + 1) * 4 + 7) & ~7));
    pdl_enter();
    DecodeCta c;
    if (!decode_cta(c, G, cu_seqlens_q, context_lens, num_heads, num_kv_heads, max_partitions)) return;
    const int s = c.s, p = c.p, q_token = c.q_token, nparts = c.nparts, k_begin = c.k_begin,
              k_end = c.k_end, kvh = c.kvh, h0 = c.h0, gcount = c.gcount;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int qr = lane >> 2, qc = (lane & 3) * 2;  // fragment row (head) and column pair
    const size_t kv_stride = (size_t)num_kv_heads * D;
    const int b0 = k_begin / block_size;
    if (k_end > k_begin) {
        const unsigned *bt = block_tables + (size_t)s * max_blocks;
        for (int i = threadIdx.x; i <= (k_end - 1) / block_size - b0; i += blockDim.x) s_bt[i] = bt[b0 + i];
    }
    if constexpr (FUSED)
        fused_qk_prologue(area, f, q_token, p == nparts - 1, kvh, h0, gcount, num_heads, num_kv_heads, D,
                          kv_stride);
    if constexpr (FUSED && TMA) fence_proxy_async_global();  // the new key, before bulk copies read it
    __syncthreads();

    // the q heads into their padded rows (zero rows past the group), 16 bytes a thread a step
    const bf16 *qsrc = FUSED ? area : q + ((size_t)q_token * num_heads + h0) * D;
    for (int i = threadIdx.x; i < MMA_ATT_G * CH; i += blockDim.x) {
        const int r = i / CH, ch = i % CH;
        *reinterpret_cast<uint4 *>(s_q + r * LD + ch * 8) =
            r < gcount ? *reinterpret_cast<const uint4 *>(qsrc + r * D + ch * 8) : make_uint4(0, 0, 0, 0);
    }
    __syncthreads();  // s_q is whole (and the fused q heads are read before the rings overwrite them)

    // this warp's tiles: w, w + DECODE_WARPS, ... of the partition's ceil(keys / 16)
    const int ntiles = (k_end - k_begin + MMA_ATT_KT - 1) / MMA_ATT_KT;
    const int mine = ntiles > warp ? (ntiles - warp + DECODE_WARPS - 1) / DECODE_WARPS : 0;
    bf16 *ring = area + warp * H * TILE;
    // Copies half tile j of this warp (tile j / 2's K rows if j is even, its V rows if odd) into slot
    // j % H: lane r < 16 finds key r's slot, every lane then moves 16-byte chunks of the rows (zeros
    // past the partition); nothing past the warp's last tile.
    auto stage = [&](int j) {
        const int t = j >> 1;
        if (t >= mine) return;
        const int kb = k_begin + (warp + t * DECODE_WARPS) * MMA_ATT_KT;
        if constexpr (TMA) {
            // one bulk copy per key row (lanes 0..n-1), landing on the slot's barrier; V rows past the
            // partition are zeroed (P is 0 there, and 0 x a stale NaN would not be)
            const int n = min(MMA_ATT_KT, k_end - kb);
            bf16 *dst = ring + (j % H) * TILE;
            unsigned long long *bar = bars + warp * H + j % H;
            if (lane == 0) mbar_arrive_expect_tx(bar, (unsigned)(n * D * 2));
            __syncwarp();
            if (lane < n) {
                const int pos = kb + lane;
                const unsigned sl = s_bt[pos / block_size - b0] * (unsigned)block_size + pos % block_size;
                bulk_copy_g2s(dst + lane * LD, ((j & 1) ? v_cache : k_cache) + (size_t)sl * kv_stride + (size_t)kvh * D,
                              D * 2, bar);
            } else if ((j & 1) && lane < MMA_ATT_KT) {
                for (int c = 0; c < CH; ++c)
                    *reinterpret_cast<uint4 *>(dst + lane * LD + c * 8) = make_uint4(0, 0, 0, 0);
            }
            return;
        }
        const int pos = kb + (lane & 15);
        unsigned slot = 0xffffffffu;
        if (pos < k_end) slot = s_bt[pos / block_size - b0] * (unsigned)block_size + pos % block_size;
        bf16 *dst = ring + (j % H) * TILE;
        const bf16 *src = (j & 1) ? v_cache : k_cache;
#pragma unroll
        for (int k = lane; k < MMA_ATT_KT * CH; k += 32) {
            const int r = k / CH, ch = k % CH;
            const unsigned sl = __shfl_sync(0xffffffffu, slot, r);
            const size_t off = sl == 0xffffffffu ? 0 : (size_t)sl * kv_stride + (size_t)kvh * D + ch * 8;
            cp_async16(dst + r * LD + ch * 8, src + off, sl != 0xffffffffu);
        }
    };
    // One commit group per copy (a tile, or a half with SPLIT), empty past the last, so the wait
    // count stays fixed: IN_FLIGHT groups may still be pending when the one read next has landed.
    constexpr int IN_FLIGHT = SPLIT ? H - 2 : H / 2 - 2;
    auto issue = [&](int g) {  // group g: half tile g (SPLIT) or tile g
        if constexpr (SPLIT) {
            stage(g);
        } else {
            stage(2 * g);
            stage(2 * g + 1);
        }
        if constexpr (!TMA) cp_async_commit();
    };
    auto next = [&](int g) {  // wait for group g's copies, then refill the slots read before them
        if constexpr (TMA) {
            // half j's slot j % H completes its (j / H)-th phase
            const int j0 = SPLIT ? g : 2 * g;
            mbar_wait(bars + warp * H + j0 % H, (unsigned)(j0 / H) & 1);
            if constexpr (!SPLIT) mbar_wait(bars + warp * H + (j0 + 1) % H, (unsigned)((j0 + 1) / H) & 1);
        } else {
            cp_async_wait<IN_FLIGHT>();
        }
        __syncwarp();  // every lane's copies of group g have landed; the group before's slots are free
        issue(g + IN_FLIGHT + 1);
    };
    if constexpr (TMA) {
        if (lane < H) mbar_init(bars + warp * H + lane, 1);
        __syncwarp();
    }
#pragma unroll
    for (int g = 0; g <= IN_FLIGHT; ++g) issue(g);

    float o[D / 8][2], m = NEG_INF, l = 0.0f;  // row qr's running max, this lane's share of its sum
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = 0.0f;
    for (int i = 0; i < mine; ++i) {
        next(SPLIT ? 2 * i : i);
        const bf16 *sk = ring + (2 * i % H) * TILE;
        // S: two 8-key halves; ldmatrix matrix j = lane / 8 holds keys (j / 2) * 8 .., columns (j % 2) * 8 ..
        float sc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
        for (int kk2 = 0; kk2 < D / 32; ++kk2) {
            // Q as A fragments of two 16-column steps: matrix j = lane / 8 holds rows 0..7, columns
            // kk2 * 32 + j * 8 ..: a0, a2 of step 2 kk2, then of step 2 kk2 + 1
            unsigned qa[4];
            ldsm_x4<false>(qa, s_q + (lane & 7) * LD + kk2 * 32 + (lane >> 3) * 8);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int kk = 2 * kk2 + h;
                unsigned b[4];
                ldsm_x4<false>(b, sk + ((lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                mma_att(sc[0], qa[2 * h], qa[2 * h + 1], b[0], b[1]);
                mma_att(sc[1], qa[2 * h], qa[2 * h + 1], b[2], b[3]);
            }
        }
        // online softmax of row qr: this lane has keys qc, qc + 1 of each half; its quad has all 16
        const int kb = k_begin + (warp + i * DECODE_WARPS) * MMA_ATT_KT;
        float mt = m;
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                sc[h][e] = kb + h * 8 + qc + e < k_end ? sc[h][e] * scale : NEG_INF;
                mt = fmaxf(mt, sc[h][e]);
            }
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
        if (mt > m) {  // the tile's first key is in the partition, so mt is finite
            const float a = expf(m - mt);  // 0 while m = -inf
            l *= a;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) o[n][0] *= a, o[n][1] *= a;
            m = mt;
        }
        float pr[2][2];
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                pr[h][e] = expf(sc[h][e] - m);  // 0 for masked keys
                l += pr[h][e];
            }
        const uint2 pa0 = bf16x2_split(pr[0][0], pr[0][1]), pa2 = bf16x2_split(pr[1][0], pr[1][1]);
        if constexpr (SPLIT) next(2 * i + 1);
        const bf16 *sv = ring + ((2 * i + 1) % H) * TILE;
        // O += P V: matrix j holds keys (j % 2) * 8 .., columns (j / 2) * 8 .. of a 16-column slab
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
            unsigned b[4];
            ldsm_x4<true>(b, sv + (((lane >> 3) & 1) * 8 + (lane & 7)) * LD + dn * 16 + (lane >> 4) * 8);
            mma_att(o[2 * dn], pa0.x, pa2.x, b[0], b[1]);
            mma_att(o[2 * dn], pa0.y, pa2.y, b[0], b[1]);
            mma_att(o[2 * dn + 1], pa0.x, pa2.x, b[2], b[3]);
            mma_att(o[2 * dn + 1], pa0.y, pa2.y, b[2], b[3]);
        }
    }
    cp_async_wait<0>();
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    __syncthreads();  // every warp is done with its ring: the merge area may overwrite it

    float *s_max = reinterpret_cast<float *>(area);  // [DECODE_WARPS][G]
    float *s_sum = s_max + DECODE_WARPS * G;          // [DECODE_WARPS][G]
    float *s_acc = s_sum + DECODE_WARPS * G;          // [DECODE_WARPS][G][D]
    if ((lane & 3) == 0) s_max[warp * G + qr] = m;
    __syncthreads();
    float cta_max = s_max[qr];
    for (int w = 1; w < DECODE_WARPS; ++w) cta_max = fmaxf(cta_max, s_max[w * G + qr]);
    const float fw = m == NEG_INF ? 0.0f : expf(m - cta_max);
    if ((lane & 3) == 0) s_sum[warp * G + qr] = l * fw;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        s_acc[(warp * G + qr) * D + n * 8 + qc] = o[n][0] * fw;
        s_acc[(warp * G + qr) * D + n * 8 + qc + 1] = o[n][1] * fw;
    }
    __syncthreads();
    finish_partition<G>(out, ws_ml, ws_acc, done, s_max, s_sum, s_acc, s, p, nparts, q_token, h0, gcount,
                        num_heads, D, max_partitions);
}

#define DECODE_MMA_KERNELS(D, H, SPLIT, TMA, SUFFIX)                                                         \
    extern "C" __global__ void __launch_bounds__(32 * DECODE_WARPS)                                     \
        attention_decode_mma##SUFFIX##_d##D(DECODE_PARAMS) {                                             \
        const FusedQk none{};                                                                            \
        decode_mma<D, H, SPLIT, false, TMA>(out, ws_ml, ws_acc, done, q, k_cache, v_cache, cu_seqlens_q,  \
                                            context_lens, block_tables, num_heads, num_kv_heads,         \
                                            block_size, max_blocks, max_partitions, scale, none);        \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(32 * DECODE_WARPS)                                     \
        attention_decode_mma_qk##SUFFIX##_d##D(DECODE_QK_PARAMS) {                                       \
        DECODE_QK_INPUTS;                                                                                \
        decode_mma<D, H, SPLIT, true, TMA>(out, ws_ml, ws_acc, done, nullptr, k_cache, v_cache,          \
                                           cu_seqlens_q, context_lens, block_tables, num_heads,          \
                                           num_kv_heads, block_size, max_blocks, max_partitions, scale, \
                                           f);                                                           \
    }

// two stages a warp (4 half tiles), or three (6: two tiles in flight a warp), or K and V apart in 3
// slots (_h3). At D = 128: 108 registers (168 with a spill before the q heads moved to shared memory
// and rows 8..15 of the accumulators stopped taking registers); two stages: 3 CTAs an SM, bound by
// shared memory (72 KB a CTA, ncu, H100) — same speed as before on H100 (bench.py 0.6B 19,702 vs
// 19,712 / 19,541 output tok/s); _h3: 55 KB, 4 CTAs an SM; _h3tma: filled by bulk copies (sm_90), the
// default for small grids (src/ops/attention.rs; bulk copies into two stages lost: no instance);
// _h4 / _h4tma: 4 slots, the two stages' shared memory with three halves in flight.
DECODE_MMA_KERNELS(64, 4, false, false, )
DECODE_MMA_KERNELS(128, 4, false, false, )
DECODE_MMA_KERNELS(64, 6, false, false, _s3)
DECODE_MMA_KERNELS(128, 6, false, false, _s3)
DECODE_MMA_KERNELS(64, 3, true, false, _h3)
DECODE_MMA_KERNELS(128, 3, true, false, _h3)
DECODE_MMA_KERNELS(64, 3, true, true, _h3tma)
DECODE_MMA_KERNELS(128, 3, true, true, _h3tma)
DECODE_MMA_KERNELS(64, 4, true, false, _h4)
DECODE_MMA_KERNELS(128, 4, true, false, _h4)
DECODE_MMA_KERNELS(64, 4, true, true, _h4tma)
DECODE_MMA_KERNELS(128, 4, true, true, _h4tma)
