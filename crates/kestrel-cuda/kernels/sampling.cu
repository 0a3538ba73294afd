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
// to matter (< 1e-9 of the mass), the answer is exact. Otherwise (flat rows: high temperatures,
// random weights, top-k or top-p reaching past the prefix) the exact flat path of sampling_flat.cuh
// decides. Rows with no finite logit, greedy rows with +inf, overflowing l / T, and the rare row the
// flat path cannot place either (> CAP distinct values within 1/2048) get NO_TOKEN and the host
// samples them (the launch wrapper's caller does).
// Launch: grid (rows), block (THREADS); rows 16-byte aligned when cols % 8 == 0.
// Penalties (sample_bf16_pen): each value is first penalised as engine/penalties.rs does (Pen in
// sampling.cuh), so penalised rows never leave the GPU either.
#include "sampling_flat.cuh"

template <bool PEN>
__device__ void sample_row(unsigned *__restrict__ out, const bf16 *__restrict__ logits,
                           const RowParams *__restrict__ params, int cols,
                           const unsigned *__restrict__ pen_offsets,
                           const unsigned *__restrict__ pen_words,
                           const float *__restrict__ pen_sub, const float *__restrict__ pen_rep) {
    pdl_enter();
    __shared__ __align__(8) float sx[CAP];  // scaled logits, then cumulative masses
    __shared__ int si[CAP];    // token ids
    __shared__ int hist[BINS];
    __shared__ u64 hist_mass[BINS];  // the flat path's
    __shared__ int s_count, s_cut, s_first;
    const RowParams p = params[blockIdx.x];
    const bf16 *row = logits + (size_t)blockIdx.x * cols;
    const int tid = threadIdx.x;
    __shared__ unsigned s_ptok[PEN ? MAX_PEN : 1], s_bloom[PEN ? BLOOM_WORDS : 1];
    __shared__ float s_psub[PEN ? MAX_PEN : 1];
    Pen pen{s_ptok, s_psub, s_bloom, 0, 1.0f};
    if constexpr (PEN) {
        const unsigned b0 = pen_offsets[blockIdx.x], n_pen = pen_offsets[blockIdx.x + 1] - b0;
        if (n_pen > MAX_PEN) {  // the host applies them (and samples the row)
            if (tid == 0) out[blockIdx.x] = NO_TOKEN;
            return;
        }
        for (int i = tid; i < BLOOM_WORDS; i += THREADS) s_bloom[i] = 0u;
        __syncthreads();
        for (int i = tid; i < (int)n_pen; i += THREADS) {
            const unsigned w = pen_words[b0 + i], h = w & 4095u;
            s_ptok[i] = w;
            s_psub[i] = pen_sub[b0 + i];
            atomicOr(&s_bloom[h >> 5], 1u << (h & 31));
        }
        __syncthreads();
        pen.n = (int)n_pen;
        pen.rep = pen_rep[blockIdx.x];
    }

    float lmax = NEG_INF;
    int n_finite = 0, n_pos_inf = 0;
    for_each_pen<PEN>(row, cols, pen, [&](int, float l) {
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
        for_each_pen<PEN>(row, cols, pen, [&](int i, float l) {
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
    for_each_pen<PEN>(row, cols, pen, [&](int, float l) {
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
    // Rows the sorted prefix cannot decide take the exact flat path (sampling_flat.cuh).
    auto flat = [&]() {
        const unsigned token =
            sample_flat<PEN>(row, cols, pen, p, inv_t, m, n_finite, hist, hist_mass, sx, si);
        if (tid == 0) out[blockIdx.x] = token;
    };
    const int cut = s_cut;
    if (cut < 0) return flat();
    for_each_pen<PEN>(row, cols, pen, [&](int i, float l) {
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
    sort_by_order(sx, si, n);

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
        if (lo != hi && !light) return flat();  // the unseen tail could move the boundary
        if (lo != NONE) len = min(len, lo + 1);
    }
    if (p.min_p > 0.0f) {
        const int below = first_where(true, p.min_p, n);
        // e is non-increasing: everything from `below` on is cut
        if (below != NONE) len = min(len, max(below, 1));
        else if (rest == 0 || e_rest < p.min_p) len = min(len, n);
    }
    if (len == NONE) {
        if (!light) return flat();
        len = n;
    }
    const float target = p.u * sx[len - 1];
    int pick = first_reaching(target, len);
    if (pick == NONE) pick = len - 1;
    if (tid == 0) out[blockIdx.x] = (unsigned)si[pick];
}

extern "C" __global__ void __launch_bounds__(THREADS)
    sample_bf16(unsigned *out, const bf16 *logits, const RowParams *params, int cols) {
    sample_row<false>(out, logits, params, cols, nullptr, nullptr, nullptr, nullptr);
}

// With penalties: pen_offsets [rows + 1] into pen_words / pen_sub (each row's entries sorted by
// token), pen_rep [rows] the repetition penalty of each row. A row of more than MAX_PEN entries
// returns NO_TOKEN.
extern "C" __global__ void __launch_bounds__(THREADS)
    sample_bf16_pen(unsigned *out, const bf16 *logits, const RowParams *params, int cols,
                    const unsigned *pen_offsets, const unsigned *pen_words, const float *pen_sub,
                    const float *pen_rep) {
    sample_row<true>(out, logits, params, cols, pen_offsets, pen_words, pen_sub, pen_rep);
}
