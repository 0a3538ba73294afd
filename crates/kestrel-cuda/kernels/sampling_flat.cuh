// sampling_flat.cuh: the exact path of sampling.cu for rows its sorted prefix cannot decide (flat
// rows: high temperatures, random weights, a top-k or top-p reaching past CAP tokens), so those rows
// stay on the GPU instead of costing the host a sort of the whole vocabulary.
//
// Masses are fixed point: exp(x - M) in units of 2^-40, rounded once per token (the largest weighs
// exactly 2^40; a token below 2^-41 weighs 0, a 151,936-token row loses < 1e-7 of its mass), so sums
// are exact integers whatever the order, and every pass agrees with every other. Each decision of
// row_sampling.rs (the k-th position, the top-p crossing, the min-p prefix, the draw u) is a
// "locate": the first sorted position whose cumulative count or mass reaches a target, found by
//   level 1: the row's 256 bins of d = M - x (1/8 wide; count and mass per bin, one pass),
//   level 2: that bin's 256 sub-bins (1/2048 wide; one pass),
//   level 3: that sub-bin's distinct values with their counts (a hash table in shared memory, then
//   sorted: bf16 logits tie a lot, so few values), the position among a value's ties by arithmetic
//   (equal values weigh the same), and the token by one pass in id order (the draw only).
// Every step is monotone in x and ties go by token id, so this is the sorted order's answer; it
// differs from the host reference (f64 sums of f32 terms) only within rounding of a boundary.
#pragma once
#include "sampling.cuh"

#define MASS_ONE 1099511627776.0f  // 2^40
#define EMPTY_KEY 0x7fffffffu      // a NaN: no finite x has these bits

// exp(x - M) in fixed point (f32 as the host computes it, scaled by a power of two, rounded once).
__device__ __forceinline__ u64 fixed_mass(float x, float m) {
    return __float2ull_rn(__fmul_rn(expf(__fsub_rn(x, m)), MASS_ONE));
}

// Sub-bin of x inside its level-1 bin b: floor(2048 (d - b / 8)), clamped (monotone in x within b).
__device__ __forceinline__ int sub_bin_of(float m, float x, int b) {
    const float r = __fmul_rn(__fsub_rn(__fsub_rn(m, x), (float)b * 0.125f), 2048.0f);
    return (int)fminf(fmaxf(floorf(r), 0.0f), (float)(BINS - 1));
}

// ceil(f * z) for 0 <= f < 1: the fixed-point target of "cumulative >= f x total".
__device__ __forceinline__ u64 mass_target(float f, u64 z) {
    return (u64)ceil(fmax((double)f, 0.0) * (double)z);
}

struct Located {
    int pos;      // first sorted position whose cumulative count / mass reaches the target; NONE: not placed
    u64 through;  // the mass of positions 0 ..= pos
    int token;    // its token id (NONE where it weighs 0: only counts can end there)
};

// The row's view for the passes below (penalties applied, as in sampling.cu).
template <bool PEN>
struct FlatRow {
    const bf16 *row;
    int cols;
    const Pen &pen;
    float inv_t, m;
    // f(index, x) for each finite scaled logit this thread owns
    template <typename F>
    __device__ __forceinline__ void each(F f) const {
        for_each_pen<PEN>(row, cols, pen, [&](int i, float l) {
            if (isfinite(l)) f(i, scaled(l, inv_t));
        });
    }
};

// First walk of a histogram: the first bin where before + cumulative (count or mass) reaches target;
// before_count / before_mass advance past the bins ahead of it. NONE if none does.
__device__ int walk(const int *count, const u64 *mass, bool by_mass, u64 target, u64 &before_count,
                    u64 &before_mass) {
    for (int b = 0; b < BINS; ++b) {
        // (an empty bin never ends a walk: a target of 0 ends at the first token)
        if (count[b] > 0 &&
            (by_mass ? before_mass + mass[b] : before_count + (u64)count[b]) >= target)
            return b;
        before_count += (u64)count[b];
        before_mass += mass[b];
    }
    return NONE;
}

// The j-th (0-based) token id, in id order, with scaled logit == x0: each thread scans a contiguous
// chunk, so an exclusive scan of the per-thread counts orders them. NONE if there are fewer.
template <bool PEN>
__device__ int nth_with_value(const FlatRow<PEN> &r, float x0, u64 j) {
    __shared__ int s_token;
    const int chunk = (r.cols + THREADS - 1) / THREADS;
    const int lo = min(r.cols, (int)threadIdx.x * chunk), hi = min(r.cols, lo + chunk);
    auto is_x0 = [&](int i) {
        const float l = __bfloat162float(r.row[i]);
        const float v = PEN ? r.pen.apply(i, l) : l;
        return isfinite(v) && scaled(v, r.inv_t) == x0;
    };
    u64 mine = 0, total;
    for (int i = lo; i < hi; ++i) mine += is_x0(i);
    const u64 before = block_exclusive_scan_u64(mine, &total);
    if (threadIdx.x == 0) s_token = NONE;
    __syncthreads();
    if (j >= before && j < before + mine) {
        u64 seen = before;
        for (int i = lo; i < hi; ++i) {
            if (is_x0(i) && seen++ == j) {
                s_token = i;
                break;
            }
        }
    }
    __syncthreads();
    return s_token;
}

// The locate of the header comment. hist / hist_mass: the level-1 histogram; sx / si: scratch.
// want_token: find the token id too (one more pass; only the draw needs it).
template <bool PEN>
__device__ Located locate(const FlatRow<PEN> &r, bool by_mass, bool want_token, u64 target,
                          const int *hist, const u64 *hist_mass, float *sx, int *si) {
    __shared__ int s_bin, s_n, s_first;
    __shared__ u64 s_count, s_mass;
    const int tid = threadIdx.x;
    const Located fail{NONE, 0, NONE};
    __syncthreads();  // the previous locate's readers are done with the scratch
    if (tid == 0) {
        u64 c = 0, ms = 0;
        s_bin = walk(hist, hist_mass, by_mass, target, c, ms);
        s_count = c, s_mass = ms;
    }
    __syncthreads();
    const int b = s_bin;
    u64 count_before = s_count, mass_before = s_mass;
    if (b == NONE) return fail;
    if (b == BINS - 1) {
        // d >= 31.875: exp(-d) 2^40 < 0.02, every token there weighs 0, so only a count ends here
        // and its cumulative mass is what came before
        if (by_mass) return fail;
        return {(int)(target - 1), mass_before, NONE};
    }

    // level 2: bin b's sub-bins (counts in si, masses in sx: both free until the table)
    int *count2 = si;
    u64 *mass2 = reinterpret_cast<u64 *>(sx);
    for (int i = tid; i < BINS; i += THREADS) count2[i] = 0, mass2[i] = 0;
    __syncthreads();
    r.each([&](int, float x) {
        if (bin_of(r.m, x) != b) return;
        const int s = sub_bin_of(r.m, x, b);
        atomicAdd(&count2[s], 1);
        atomicAdd(&mass2[s], fixed_mass(x, r.m));
    });
    __syncthreads();
    if (tid == 0) {
        u64 c = count_before, ms = mass_before;
        const int s = walk(count2, mass2, by_mass, target, c, ms);
        s_bin = s, s_n = s == NONE ? 0 : count2[s];
        s_count = c, s_mass = ms;
    }
    __syncthreads();
    const int sub = s_bin, n = s_n;
    count_before = s_count, mass_before = s_mass;
    if (sub == NONE) return fail;
    auto in_sub = [&](float x) { return bin_of(r.m, x) == b && sub_bin_of(r.m, x, b) == sub; };

    // The sub-bin's distinct values with their counts (bf16 logits tie a lot): an open-addressing
    // table of `size` slots, value bits in sx (EMPTY: a NaN no finite x has), counts in si.
    int size = 64;
    while (size < 2 * n && size < CAP) size <<= 1;
    unsigned *keys = reinterpret_cast<unsigned *>(sx);
    for (int i = tid; i < size; i += THREADS) keys[i] = EMPTY_KEY, si[i] = 0;
    if (tid == 0) s_first = 0;  // "full"
    __syncthreads();
    r.each([&](int, float x) {
        if (!in_sub(x)) return;
        const unsigned bits = __float_as_uint(x == 0.0f ? 0.0f : x);  // -0 ties with 0
        unsigned h = (bits * 2654435761u) >> 20;
        for (int probe = 0; probe < size; ++probe, ++h) {
            const unsigned prev = atomicCAS(&keys[h & (size - 1)], EMPTY_KEY, bits);
            if (prev == EMPTY_KEY || prev == bits) {
                atomicAdd(&si[h & (size - 1)], 1);
                return;
            }
        }
        s_first = 1;
    });
    __syncthreads();
    if (s_first) return fail;  // more distinct values than slots: the host decides
    for (int i = tid; i < size; i += THREADS)
        if (keys[i] == EMPTY_KEY) sx[i] = NEG_INF;
    __syncthreads();
    sort_by_order(sx, si, size);  // distinct values: the order of x alone

    // counts and masses of 4 consecutive values per thread, cumulated in order
    u64 c[4], e[4], local_c = 0, local_e = 0, total;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const int i = tid * 4 + q;
        c[q] = i < size ? (u64)si[i] : 0;
        e[q] = c[q] ? c[q] * fixed_mass(sx[i], r.m) : 0;
        local_c += c[q], local_e += e[q];
    }
    u64 run_c = count_before + block_exclusive_scan_u64(local_c, &total);
    u64 run_e = mass_before + block_exclusive_scan_u64(local_e, &total);
    if (tid == 0) s_first = NONE;
    __syncthreads();
    const u64 c0 = run_c, e0 = run_e;  // before this thread's values
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        run_c += c[q], run_e += e[q];
        if (c[q] && (by_mass ? run_e : run_c) >= target) {
            atomicMin(&s_first, tid * 4 + q);
            break;
        }
    }
    __syncthreads();
    const int f = s_first;
    if (f == NONE) return fail;
    if (tid == f >> 2) {  // what comes before value f
        u64 bc = c0, be = e0;
        for (int q = 0; q < (f & 3); ++q) bc += c[q], be += e[q];
        s_count = bc, s_mass = be;
    }
    __syncthreads();
    count_before = s_count, mass_before = s_mass;
    const float x = sx[f];
    const u64 ties = (u64)si[f], one = fixed_mass(x, r.m);
    // the position among the ties (equal values go by token id)
    u64 j;
    if (by_mass) j = one && target > mass_before ? (target - mass_before + one - 1) / one - 1 : 0;
    else j = target - count_before - 1;  // the walks placed target within this value's count
    j = min(j, ties - 1);
    const int token = want_token ? nth_with_value(r, x, j) : NONE;
    if (want_token && token == NONE) return fail;
    return {(int)(count_before + j), mass_before + (j + 1) * one, token};
}

// The token of a row under p, exactly as row_sampling.rs defines it, or NO_TOKEN (see locate).
// hist / hist_mass / sx / si: the kernel's shared arrays (overwritten).
template <bool PEN>
__device__ unsigned sample_flat(const bf16 *row, int cols, const Pen &pen, const RowParams &p,
                                float inv_t, float m, int n_finite, int *hist, u64 *hist_mass,
                                float *sx, int *si) {
    const FlatRow<PEN> r{row, cols, pen, inv_t, m};
    __syncthreads();  // the caller's readers of hist are done
    for (int b = threadIdx.x; b < BINS; b += THREADS) hist[b] = 0, hist_mass[b] = 0;
    __syncthreads();
    r.each([&](int, float x) {
        const int b = bin_of(m, x);
        atomicAdd(&hist[b], 1);
        atomicAdd(&hist_mass[b], fixed_mass(x, m));
    });
    __syncthreads();
    u64 z = 0;  // the kept set's mass, as the filters narrow it
    for (int b = 0; b < BINS; ++b) z += hist_mass[b];

    // top-k: the first k positions
    const int k = p.top_k > 0 && p.top_k < n_finite ? p.top_k : n_finite;
    int keep = k;
    if (k < n_finite) {
        const Located at = locate(r, false, false, (u64)k, hist, hist_mass, sx, si);
        if (at.pos == NONE) return NO_TOKEN;
        z = at.through;
    }
    // top-p: through the first position whose cumulative mass reaches top_p of the top-k's
    if (p.top_p < 1.0f) {
        const Located at = locate(r, true, false, mass_target(p.top_p, z), hist, hist_mass, sx, si);
        if (at.pos == NONE) return NO_TOKEN;
        if (at.pos + 1 < keep) keep = at.pos + 1, z = at.through;
    }
    // min-p: exp(x - M) >= min_p is a prefix of the order (the first always stays)
    if (p.min_p > 0.0f) {
        int c = 0;
        u64 ms = 0, total;
        r.each([&](int, float x) {
            if (expf(__fsub_rn(x, m)) >= p.min_p) ++c, ms += fixed_mass(x, m);
        });
        c = block_int(c, false);
        block_exclusive_scan_u64(ms, &total);
        if (max(c, 1) < keep) keep = max(c, 1), z = c > 0 ? total : (u64)MASS_ONE;
    }
    // the draw: the first position whose cumulative mass reaches u of the kept mass
    const Located at = locate(r, true, true, mass_target(p.u, z), hist, hist_mass, sx, si);
    if (at.pos == NONE || at.pos >= keep || at.token == NONE) return NO_TOKEN;
    return (unsigned)at.token;
}
