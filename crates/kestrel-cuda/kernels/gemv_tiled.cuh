// gemv_tiled.cuh: the decode GEMV for T = 1..8 tokens over any weight format W (gemv_tiled.cu: bf16,
// same contract and rounding as gemv_bf16.cu; gemv_q8_0.cu: GGUF Q8_0 blocks), bf16 activations:
// y[t, n] = sum_k x[t, k] * w[n, k] with f32 accumulation, rounded once.
// A format W gives: PER_CHUNK weights per 16-byte chunk, Row (a row's pointers), Chunk (one loaded
// chunk), row(n), load(row, c), unpack(chunk, floats) and accumulate(acc, chunk, w floats, x floats).
// A block of 8 warps is split into groups of k_split warps (1, 2, 4 or 8); each group owns GEMV_R
// weight rows and each of its warps sums one contiguous K-slice of them (split-K inside the block,
// so no workspace and no second launch), reduced through shared memory in a fixed order.
// Every lane keeps GEMV_U x GEMV_R 16-byte weight loads in flight (streamed past L1); each weight
// chunk is used for all T tokens.
// Fusions (so a decoder layer is 6 kernels, not 10):
// - `_norm`: x is the residual stream and the kernel first computes rms_norm(x) * norm_w with HF's
//   rounding (see rms_norm.cu) into shared memory (T * in_features bf16, dynamic): the layer's input
//   norm without a launch of its own. Every block recomputes it from L1/L2-resident rows.
// - mode 0: y = bf16(x.w + bias); mode 1: y = bf16(y + bf16(x.w)) (o_proj / down_proj with the
//   residual add); mode 2: SwiGLU over a merged [gate; up] weight of 2 * inter rows: a group owns gate
//   row n and up row n and writes y[t, n] = bf16(bf16(silu(bf16(g))) * bf16(u)), y being [T, inter].
// PDL: the block loads its first weight chunks before waiting for the previous kernel.
// Launch: grid ceil(rows / (R * 8 / k_split)) with R = GEMV_R (modes 0, 1) or 1 (mode 2, rows =
// inter), block 256, dynamic shared memory T * in_features * 2 bytes with _norm; in_features % 8 == 0.
// y's rows are ldy apart (rows, or wider where y holds several matrices' outputs side by side).
#pragma once
#include "common.cuh"

#define GEMV_R 2
#define GEMV_U 4
#define GEMV_WARPS 8
#define MODE_OVERWRITE 0
#define MODE_ADD 1
#define MODE_SILU 2

__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// One weight chunk per row (GEMV_R rows) against T tokens' x: the weights are unpacked once.
template <class W, int T, bool NORM>
__device__ __forceinline__ void fma_chunk(const typename W::Chunk (&wq)[GEMV_R],
                                          const uint4 *__restrict__ xv, int xchunks, int c,
                                          float (&acc)[GEMV_R][T]) {
    constexpr int E = W::PER_CHUNK, XC = E / 8;
    float wf[GEMV_R][E];
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r) W::unpack(wq[r], wf[r]);
#pragma unroll
    for (int t = 0; t < T; ++t) {
        float xf[E];
#pragma unroll
        for (int j = 0; j < XC; ++j) {
            if constexpr (NORM)
                unpack_bf16x8(xv[t * xchunks + c * XC + j], xf + 8 * j);  // shared memory
            else
                unpack_bf16x8(__ldg(xv + (size_t)t * xchunks + c * XC + j), xf + 8 * j);
        }
#pragma unroll
        for (int r = 0; r < GEMV_R; ++r) W::accumulate(acc[r][t], wq[r], wf[r], xf);
    }
}

// bf16 weights ([rows, in_features], HF's layout): 8 per chunk, accumulated straight into acc.
struct WeightsBf16 {
    static constexpr int PER_CHUNK = 8;
    struct Row {
        const uint4 *p;
    };
    struct Chunk {
        uint4 q;
    };
    const bf16 *w;
    int in_features;
    __device__ __forceinline__ Row row(int n) const {
        return {reinterpret_cast<const uint4 *>(w + (size_t)n * in_features)};
    }
    __device__ __forceinline__ Chunk load(const Row &r, int c) const { return {ld_stream(r.p + c)}; }
    static __device__ __forceinline__ Chunk zero() { return {make_uint4(0, 0, 0, 0)}; }
    static __device__ __forceinline__ void unpack(const Chunk &ch, float (&wf)[8]) {
        unpack_bf16x8(ch.q, wf);
    }
    static __device__ __forceinline__ void accumulate(float &acc, const Chunk &, const float (&wf)[8],
                                                      const float (&xf)[8]) {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc = fmaf(xf[i], wf[i], acc);
    }
};

// rms_norm of T rows of x into xs (shared), HF's rounding: bf16(w * bf16(x * rsqrt(mean(x^2) + eps))).
template <int T>
__device__ __forceinline__ void norm_rows_to_shared(uint4 *xs, const bf16 *__restrict__ x,
                                                    const float *__restrict__ norm_w, float eps,
                                                    int in_features) {
    __shared__ float red[GEMV_WARPS][T];
    const int chunks = in_features >> 3, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint4 *xv = reinterpret_cast<const uint4 *>(x);
    float ss[T];
#pragma unroll
    for (int t = 0; t < T; ++t) ss[t] = 0.0f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const uint4 raw = xv[t * chunks + c];
            xs[t * chunks + c] = raw;
            float v[8];
            unpack_bf16x8(raw, v);
#pragma unroll
            for (int i = 0; i < 8; ++i) ss[t] = fmaf(v[i], v[i], ss[t]);
        }
    }
#pragma unroll
    for (int t = 0; t < T; ++t) {
        const float s = warp_sum(ss[t]);
        if (lane == 0) red[warp][t] = s;
    }
    __syncthreads();
    float inv[T];
#pragma unroll
    for (int t = 0; t < T; ++t) {
        float s = 0.0f;
        for (int w = 0; w < GEMV_WARPS; ++w) s += red[w][t];
        inv[t] = rsqrtf(s / (float)in_features + eps);
    }
    const float4 *wn = reinterpret_cast<const float4 *>(norm_w);
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const float4 w0 = wn[2 * c], w1 = wn[2 * c + 1];
        const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
        for (int t = 0; t < T; ++t) {
            float v[8];
            unpack_bf16x8(xs[t * chunks + c], v);  // written above by this same thread
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = wv[i] * round_bf16(v[i] * inv[t]);
            xs[t * chunks + c] = pack_bf16x8(v);
        }
    }
    __syncthreads();
}

// The end of a tiled GEMV (any weight format, any activation form): each warp's sums through shared
// memory, the K-slices added in a fixed order by the group's first warp, then the mode's epilogue.
template <int T>
__device__ __forceinline__ void gemv_finish(float (&acc)[GEMV_R][T], bf16 *y,
                                            const float *__restrict__ bias, int rows, int mode,
                                            int k_split, int ldy, int row0) {
    __shared__ float partial[GEMV_WARPS][GEMV_R * T];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int slice = warp % k_split;
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const float s = warp_sum(acc[r][t]);
            if (lane == 0) partial[warp][r * T + t] = s;
        }
    __syncthreads();
    if (slice != 0) return;
    if (mode == MODE_SILU) {
        // lane t of a group's first warp finishes token t of its one output row
        if (lane >= T || row0 >= rows) return;
        float g = 0.0f, u = 0.0f;
        for (int j = 0; j < k_split; ++j) {
            g += partial[warp + j][lane];
            u += partial[warp + j][T + lane];
        }
        g = round_bf16(g);
        const float s = round_bf16(g / (1.0f + expf(-g)));
        y[(size_t)lane * ldy + row0] = __float2bfloat16(s * round_bf16(u));
        return;
    }
    // lane i of a group's first warp finishes output (row r, token t) = (i / T, i % T)
    if (lane >= GEMV_R * T) return;
    const int r = lane / T, t = lane - r * T, n = row0 + r;
    if (n >= rows) return;
    float v = 0.0f;
    for (int j = 0; j < k_split; ++j) v += partial[warp + j][lane];
    if (bias != nullptr) v += bias[n];
    bf16 *out = y + (size_t)t * ldy + n;
    if (mode == MODE_ADD) v = __bfloat162float(*out) + round_bf16(v);
    *out = __float2bfloat16(v);
}

template <class W, int T, bool NORM>
__device__ __forceinline__ void gemv_tiled(bf16 *y, const bf16 *__restrict__ x, const W w,
                                           const float *__restrict__ bias,
                                           const float *__restrict__ norm_w, float eps,
                                           int in_features, int rows, int mode, int k_split,
                                           int ldy) {
    extern __shared__ uint4 gemv_xs[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = warp / k_split, slice = warp - group * k_split;
    const bool silu = mode == MODE_SILU;
    // modes 0/1: the group's GEMV_R consecutive rows; mode 2: gate row row0 and up row row0 + rows
    const int row0 = (blockIdx.x * (GEMV_WARPS / k_split) + group) * (silu ? 1 : GEMV_R);
    const int chunks = in_features / W::PER_CHUNK, xchunks = in_features >> 3;
    // K-slices of whole 128-byte lines
    const int per = (((chunks + k_split - 1) / k_split) + 7) & ~7;
    const int c_begin = slice * per, c_end = min(chunks, (slice + 1) * per);
    const int c0 = c_begin + lane;
    typename W::Row wv[GEMV_R];
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r) {
        // rows past the end re-read the last row so that the loop has no branch; dropped below
        const int n = silu ? min(row0, rows - 1) + r * rows : min(row0 + r, rows - 1);
        wv[r] = w.row(n);
    }
    // The weights do not depend on the previous kernel: the first GEMV_U chunks of each row go into
    // registers before waiting for it (PDL), so their fetch overlaps its tail; for decode-sized
    // matrices that is often all of them.
    typename W::Chunk first[GEMV_U][GEMV_R];
#pragma unroll
    for (int u = 0; u < GEMV_U; ++u)
#pragma unroll
        for (int r = 0; r < GEMV_R; ++r)
            first[u][r] = c0 + 32 * u < c_end ? w.load(wv[r], c0 + 32 * u) : W::zero();
    pdl_wait();
    pdl_launch_dependents();

    const uint4 *xv;
    if constexpr (NORM) {
        norm_rows_to_shared<T>(gemv_xs, x, norm_w, eps, in_features);
        xv = gemv_xs;
    } else {
        xv = reinterpret_cast<const uint4 *>(x);
    }
    float acc[GEMV_R][T];
#pragma unroll
    for (int r = 0; r < GEMV_R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) acc[r][t] = 0.0f;
#pragma unroll
    for (int u = 0; u < GEMV_U; ++u)
        if (c0 + 32 * u < c_end) fma_chunk<W, T, NORM>(first[u], xv, xchunks, c0 + 32 * u, acc);
    int c = c0 + 32 * GEMV_U;
    for (; c + 32 * (GEMV_U - 1) < c_end; c += 32 * GEMV_U) {
        typename W::Chunk wq[GEMV_U][GEMV_R];
#pragma unroll
        for (int u = 0; u < GEMV_U; ++u)
#pragma unroll
            for (int r = 0; r < GEMV_R; ++r) wq[u][r] = w.load(wv[r], c + 32 * u);
#pragma unroll
        for (int u = 0; u < GEMV_U; ++u) fma_chunk<W, T, NORM>(wq[u], xv, xchunks, c + 32 * u, acc);
    }
    for (; c < c_end; c += 32) {
        typename W::Chunk wq[GEMV_R];
#pragma unroll
        for (int r = 0; r < GEMV_R; ++r) wq[r] = w.load(wv[r], c);
        fma_chunk<W, T, NORM>(wq, xv, xchunks, c, acc);
    }
    gemv_finish<T>(acc, y, bias, rows, mode, k_split, ldy, row0);
}

