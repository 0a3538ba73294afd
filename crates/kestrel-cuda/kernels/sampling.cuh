// sampling.cuh: the helpers of sampling.cu (block reductions, the scan, the row walk, the order and
// binning of scaled logits) and the per-row penalties (Pen).
#pragma once
#include "common.cuh"

#define THREADS 1024
#define CAP 4096
#define BINS 256
#define NO_TOKEN 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
#define NONE 0x7fffffff

struct RowParams {
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    float u;
};

// f(index, value) for each element of the row this thread owns.
template <typename F>
__device__ __forceinline__ void for_each(const bf16 *row, int cols, F f) {
    if ((cols & 7) == 0) {
        const uint4 *rv = reinterpret_cast<const uint4 *>(row);
        for (int c = threadIdx.x; c < (cols >> 3); c += THREADS) {
            float v[8];
            unpack_bf16x8(rv[c], v);
#pragma unroll
            for (int i = 0; i < 8; ++i) f(c * 8 + i, v[i]);
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += THREADS) f(c, __bfloat162float(row[c]));
    }
}

__shared__ float s_red_f[32];
__shared__ int s_red_i[32];

__device__ float block_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) s_red_f[threadIdx.x >> 5] = v;
    __syncthreads();
    v = s_red_f[threadIdx.x & 31];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// min (is_min) or sum of an int over the block; every thread gets it
__device__ int block_int(int v, bool is_min) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const int w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_min ? min(v, w) : v + w;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) s_red_i[threadIdx.x >> 5] = v;
    __syncthreads();
    v = s_red_i[threadIdx.x & 31];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const int w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_min ? min(v, w) : v + w;
    }
    return v;
}

// Exclusive prefix sum over the block in thread order (fixed order: deterministic); *total gets the sum.
__device__ float block_exclusive_scan(float v, float *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    __syncthreads();
    if (lane == 31) s_red_f[warp] = incl;
    __syncthreads();
    float w = s_red_f[lane], wincl = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float n = __shfl_up_sync(0xffffffffu, wincl, o);
        if (lane >= o) wincl += n;
    }
    *total = __shfl_sync(0xffffffffu, wincl, 31);
    const float before_warp = __shfl_sync(0xffffffffu, wincl - w, warp);
    return before_warp + incl - v;
}

typedef unsigned long long u64;
__shared__ u64 s_red_u[32];

// block_exclusive_scan for u64 (integer sums: exact, so any order gives the same result).
__device__ u64 block_exclusive_scan_u64(u64 v, u64 *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    __syncthreads();
    if (lane == 31) s_red_u[warp] = incl;
    __syncthreads();
    u64 w = s_red_u[lane], wincl = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 n = __shfl_up_sync(0xffffffffu, wincl, o);
        if (lane >= o) wincl += n;
    }
    *total = __shfl_sync(0xffffffffu, wincl, 31);
    const u64 before_warp = __shfl_sync(0xffffffffu, wincl - w, warp);
    return before_warp + incl - v;
}

__device__ __forceinline__ bool before(float xa, int ia, float xb, int ib) {
    return xa > xb || (xa == xb && ia < ib);
}

// Bitonic sort of sx / si [0, n) (n <= CAP) into the sampling order (larger x first, equal x by
// token id); pads up to a power of two, so CAP slots must exist.
__device__ void sort_by_order(float *sx, int *si, int n) {
    const int tid = threadIdx.x;
    int size = 1;
    while (size < n) size <<= 1;
    for (int i = n + tid; i < size; i += THREADS) {
        sx[i] = NEG_INF;
        si[i] = NONE;
    }
    __syncthreads();
    for (int k = 2; k <= size; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int t = tid; t < size; t += THREADS) {
                const int o = t ^ j;
                if (o > t) {
                    const float xa = sx[t], xb = sx[o];
                    const int ia = si[t], ib = si[o];
                    if ((t & k) == 0 ? before(xb, ib, xa, ia) : before(xa, ia, xb, ib)) {
                        sx[t] = xb, sx[o] = xa, si[t] = ib, si[o] = ia;
                    }
                }
            }
            __syncthreads();
        }
    }
}

// x = l / T as the host computes it: an explicit rounded product, so it is never fused into an FMA
// (which would make the histogram and the gather below disagree, and x differ from the reference's).
__device__ __forceinline__ float scaled(float l, float inv_t) { return __fmul_rn(l, inv_t); }

// Histogram bin of a finite scaled logit x: floor(8 (M - x)), at most BINS - 1 (monotone in x).
__device__ __forceinline__ int bin_of(float m, float x) {
    return (int)fminf(floorf(__fsub_rn(m, x) * 8.0f), (float)(BINS - 1));
}

// A row's penalties in shared memory: tokens sorted, each word token | repeated << 31 | subtracts << 30,
// the amounts to subtract, and a 4,096-bit filter of token & 4095 that skips the search for almost
// every token. The f32 operations are the host's (engine/penalties.rs), each rounded once.
#define MAX_PEN 1024
#define BLOOM_WORDS 128
struct Pen {
    const unsigned *tok;
    const float *sub;
    const unsigned *bloom;
    int n;
    float rep;
    __device__ __forceinline__ float apply(int i, float l) const {
        const unsigned h = (unsigned)i & 4095u;
        if (!((bloom[h >> 5] >> (h & 31)) & 1u)) return l;
        int lo = 0, hi = n;
        while (lo < hi) {
            const int mid = (lo + hi) >> 1;
            if ((tok[mid] & 0x3fffffffu) < (unsigned)i) lo = mid + 1;
            else hi = mid;
        }
        if (lo >= n || (tok[lo] & 0x3fffffffu) != (unsigned)i) return l;
        const unsigned w = tok[lo];
        if ((w >> 31) && rep != 1.0f) l = l > 0.0f ? __fdiv_rn(l, rep) : __fmul_rn(l, rep);
        if ((w >> 30) & 1u) l = __fsub_rn(l, sub[lo]);
        return l;
    }
};

// for_each over the row's values after its penalties (PEN) or as they are.
template <bool PEN, typename F>
__device__ __forceinline__ void for_each_pen(const bf16 *row, int cols, const Pen &pen, F f) {
    for_each(row, cols, [&](int i, float l) { f(i, PEN ? pen.apply(i, l) : l); });
}
