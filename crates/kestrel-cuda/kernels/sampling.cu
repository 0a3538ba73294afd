// Sampling on the GPU: one token per row of bf16 logits [rows, cols] under that row's temperature,
// top-k, top-p, min-p and uniform draw u, with the semantics of kestrel's engine/row_sampling.rs
// (sorted by value descending, equal values by index; top-k, softmax, top-p, min-p, inverse CDF in
// sorted order). f32 math throughout, no atomics on floats: the result depends only on the inputs.
//
// Why it needs no full sort: after the max M of x = l / T is known, a 256-bin histogram of
// d = M - x (bins 1/8 wide, the last one everything below M - 31.875) finds the longest run of top
// bins holding at most CAP tokens; those are gathered into shared memory and bitonic-sorted, and the
// filters and the draw run on that sorted prefix. Tokens outside it weigh < exp(-cut) each; their
// total is bounded, and where the kept set provably ends inside the prefix, or the rest is too light
// to matter (< 1e-9 of the mass), the answer is exact. Otherwise (very flat rows), and for rows with no
// finite logit, greedy rows with +inf, or overflowing l / T, the row's output is NO_TOKEN and the host
// samples it (the launch wrapper's caller does).
// Launch: grid (rows), block (THREADS); rows 16-byte aligned when cols % 8 == 0.
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

__device__ __forceinline__ bool before(float xa, int ia, float xb, int ib) {
    return xa > xb || (xa == xb && ia < ib);
}

// x = l / T as the host computes it: an explicit rounded product, so it is never fused into an FMA
// (which would make the histogram and the gather below disagree, and x differ from the reference's).
__device__ __forceinline__ float scaled(float l, float inv_t) { return __fmul_rn(l, inv_t); }

// Histogram bin of a finite scaled logit x: floor(8 (M - x)), at most BINS - 1 (monotone in x).
__device__ __forceinline__ int bin_of(float m, float x) {
    return (int)fminf(floorf(__fsub_rn(m, x) * 8.0f), (float)(BINS - 1));
}

extern "C" __global__ void __launch_bounds__(THREADS)
    sample_bf16(unsigned *__restrict__ out, const bf16 *__restrict__ logits,
                const RowParams *__restrict__ params, int cols) {
    pdl_enter();
    __shared__ float sx[CAP];  // scaled logits, then cumulative masses
    __shared__ int si[CAP];    // token ids
    __shared__ int hist[BINS];
    __shared__ int s_count, s_cut, s_first;
    const RowParams p = params[blockIdx.x];
    const bf16 *row = logits + (size_t)blockIdx.x * cols;
    const int tid = threadIdx.x;

    float lmax = NEG_INF;
    int n_finite = 0, n_pos_inf = 0;
    for_each(row, cols, [&](int, float l) {
        if (isfinite(l)) {
            lmax = fmaxf(lmax, l);
            ++n_finite;
        } else if (l > 0.0f) {
            ++n_pos_inf;
        }
    });
    lmax = block_max(lmax);
    n_finite = block_int(n_finite, false);
    n_pos_inf = block_int(n_pos_inf, false);
    if (n_finite == 0 || (p.temperature == 0.0f && n_pos_inf > 0)) {
        if (tid == 0) out[blockIdx.x] = NO_TOKEN;
        return;
    }
    if (p.temperature == 0.0f) {  // greedy: the first largest
        int first = NONE;
        for_each(row, cols, [&](int i, float l) {
            if (l == lmax) first = min(first, i);
        });
        first = block_int(first, true);
        if (tid == 0) out[blockIdx.x] = (unsigned)first;
        return;
    }
    const float inv_t = 1.0f / p.temperature;
    const float m = scaled(lmax, inv_t);  // the largest x (scaling by inv_t > 0 is monotone)
    if (!isfinite(m)) {
        if (tid == 0) out[blockIdx.x] = NO_TOKEN;
        return;
    }

    for (int b = tid; b < BINS; b += THREADS) hist[b] = 0;
    __syncthreads();
    for_each(row, cols, [&](int, float l) {
        if (isfinite(l)) atomicAdd(&hist[bin_of(m, scaled(l, inv_t))], 1);
    });
    __syncthreads();
    if (tid == 0) {
        // as few top bins as decide the row: up to the k-th token, or (top-p off: it normalises over
        // all of top-k) the first bin wholly below min_p (bin b's tokens have e <= exp(-b / 8))
        int cut = -1, acc = 0;
        const bool by_min_p = p.min_p > 0.0f && p.top_p >= 1.0f;
        for (int b = 0; b < BINS && acc + hist[b] <= CAP; ++b) {
            if (by_min_p && b > 0 && expf(-(float)b * 0.125f) < p.min_p) break;
            acc += hist[b];
            cut = b;
            if (p.top_k > 0 && acc >= p.top_k) break;
        }
        s_cut = cut;
        s_count = 0;
    }
    __syncthreads();
    const int cut = s_cut;
    if (cut < 0) {
        if (tid == 0) out[blockIdx.x] = NO_TOKEN;
        return;
    }
    for_each(row, cols, [&](int i, float l) {
        if (isfinite(l) && bin_of(m, scaled(l, inv_t)) <= cut) {
            const int slot = atomicAdd(&s_count, 1);
            if (slot < CAP) sx[slot] = scaled(l, inv_t), si[slot] = i;
        }
    });
    __syncthreads();
    const int n = s_count;
    if (n > CAP) {  // cannot happen (same bins as the histogram); never write past the buffers
        if (tid == 0) out[blockIdx.x] = NO_TOKEN;
        return;
    }
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

    // e = exp(x - m) for the sorted prefix (4 consecutive per thread), cumulated in order into sx
    float e[4], local = 0.0f;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const int i = tid * 4 + q;
        e[q] = i < n ? expf(sx[i] - m) : 0.0f;
        local += e[q];
    }
    float z_s;
    float run = block_exclusive_scan(local, &z_s);
    __syncthreads();
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        run += e[q];
        sx[tid * 4 + q] = run;
    }
    __syncthreads();
    const int rest = n_finite - n;
    // each token outside the prefix has d >= (cut + 1) / 8
    const float e_rest = rest > 0 ? expf(-(float)(cut + 1) * 0.125f) : 0.0f;
    const float rest_mass = (float)rest * e_rest;
    const bool light = rest_mass <= z_s * 1e-9f;

    // The first sorted position i < limit (thread tid holds 4 tid .. 4 tid + 3) whose cumulative mass
    // reaches target, or (by_e) whose e is below target; NONE if none.
    auto first_where = [&](bool by_e, float target, int limit) {
        if (tid == 0) s_first = NONE;
        __syncthreads();
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int i = tid * 4 + q;
            if (i < limit && (by_e ? e[q] < target : sx[i] >= target)) {
                atomicMin(&s_first, i);
                break;
            }
        }
        __syncthreads();
        const int f = s_first;
        __syncthreads();  // read by all before the next call resets it
        return f;
    };
    auto first_reaching = [&](float target, int limit) { return first_where(false, target, limit); };

    // Each filter's kept length, where the prefix decides it (else NONE: it runs past the prefix).
    const bool k_inside = p.top_k > 0 && p.top_k <= n;
    const int kk = k_inside ? p.top_k : n;
    int len = k_inside || rest == 0 ? kk : NONE;
    if (p.top_p < 1.0f) {
        const float z_k = sx[kk - 1];
        const float z_hi = k_inside || rest == 0 ? z_k : z_k + rest_mass;
        const int lo = first_reaching(p.top_p * z_k, kk), hi = first_reaching(p.top_p * z_hi, kk);
        if (lo != hi && !light) {  // the unseen tail could move the boundary
            if (tid == 0) out[blockIdx.x] = NO_TOKEN;
            return;
        }
        if (lo != NONE) len = min(len, lo + 1);
    }
    if (p.min_p > 0.0f) {
        const int below = first_where(true, p.min_p, n);
        // e is non-increasing: everything from `below` on is cut
        if (below != NONE) len = min(len, max(below, 1));
        else if (rest == 0 || e_rest < p.min_p) len = min(len, n);
    }
    if (len == NONE) {
        if (!light) {
            if (tid == 0) out[blockIdx.x] = NO_TOKEN;
            return;
        }
        len = n;
    }
    const float target = p.u * sx[len - 1];
    int pick = first_reaching(target, len);
    if (pick == NONE) pick = len - 1;
    if (tid == 0) out[blockIdx.x] = (unsigned)si[pick];
}
