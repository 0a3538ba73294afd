// attention_decode_merge.cuh: the end of a decode-attention CTA (attention_decode.cuh) that wrote
// one partition's partials: the last CTA of its (sequence, head group) to finish, elected by a counter
// bumped after a fence (then reset, for the next launch or graph replay), merges every partition in a
// fixed order and writes the output rows of its gcount heads h0 ...
// finish_partition: a CTA's last step, from its warps' merged partials: the output itself when the
// context is one partition, else the partition's partials into the workspace, then the merge.
#pragma once
#include "common.cuh"

#define NEG_INF __int_as_float(0xff800000u)
// warps of a decode CTA (both kernels; src/ops/attention.rs must match)
#define DECODE_WARPS 4

__device__ void merge_partitions(bf16 *__restrict__ out, const float *ws_ml, const float *ws_acc,
                                 unsigned *__restrict__ done, int s, int nparts, int q_token, int h0,
                                 int gcount, int num_heads, int head_dim, int max_partitions) {
    const size_t q_stride = (size_t)num_heads * head_dim;
    __shared__ bool merge_here;
    __threadfence();  // this CTA's partials are visible before its count is
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned *counter = done + (size_t)s * gridDim.x + blockIdx.x;
        merge_here = atomicAdd(counter, 1u) == (unsigned)nparts - 1;
        if (merge_here) *counter = 0u;  // ready for the next launch (graph replays reuse it)
    }
    __syncthreads();
    if (!merge_here) return;
    __threadfence();
    for (int i = threadIdx.x; i < gcount * head_dim; i += blockDim.x) {
        const int g = i / head_dim, d = i % head_dim;
        const size_t row0 = ((size_t)s * num_heads + h0 + g) * max_partitions;
        float mx = NEG_INF;
        for (int pp = 0; pp < nparts; ++pp) mx = fmaxf(mx, __ldcg(ws_ml + (row0 + pp) * 2));
        float sum = 0.0f, a = 0.0f;
        for (int pp = 0; pp < nparts; ++pp) {
            const float w = expf(__ldcg(ws_ml + (row0 + pp) * 2) - mx);
            sum = fmaf(__ldcg(ws_ml + (row0 + pp) * 2 + 1), w, sum);
            a = fmaf(__ldcg(ws_acc + (row0 + pp) * head_dim + d), w, a);
        }
        out[(size_t)q_token * q_stride + (size_t)(h0 + g) * head_dim + d] =
            __float2bfloat16(sum > 0.0f ? a / sum : 0.0f);
    }
}

// s_max, s_sum: [DECODE_WARPS][G] each warp's running max and (rescaled to the CTA's max) sum per
// head; s_acc: [DECODE_WARPS][G][head_dim] its rescaled P.V; all written before a __syncthreads().
template <int G>
__device__ void finish_partition(bf16 *__restrict__ out, float *__restrict__ ws_ml,
                                 float *__restrict__ ws_acc, unsigned *__restrict__ done,
                                 const float *s_max, const float *s_sum, const float *s_acc, int s, int p,
                                 int nparts, int q_token, int h0, int gcount, int num_heads, int head_dim,
                                 int max_partitions) {
    const size_t q_stride = (size_t)num_heads * head_dim;
    for (int i = threadIdx.x; i < gcount * head_dim; i += blockDim.x) {
        const int g = i / head_dim, d = i % head_dim;
        float a = 0.0f, sum = 0.0f;
        for (int w = 0; w < DECODE_WARPS; ++w) {
            a += s_acc[(w * G + g) * head_dim + d];
            sum += s_sum[w * G + g];
        }
        if (nparts == 1) {
            out[(size_t)q_token * q_stride + (size_t)(h0 + g) * head_dim + d] =
                __float2bfloat16(sum > 0.0f ? a / sum : 0.0f);
        } else {
            const size_t row = ((size_t)s * num_heads + h0 + g) * max_partitions + p;
            ws_acc[row * head_dim + d] = a;
            if (d == 0) {
                float mx = s_max[g];
                for (int w = 1; w < DECODE_WARPS; ++w) mx = fmaxf(mx, s_max[w * G + g]);
                ws_ml[row * 2] = mx;
                ws_ml[row * 2 + 1] = sum;
            }
        }
    }
    if (nparts == 1) return;
    merge_partitions(out, ws_ml, ws_acc, done, s, nparts, q_token, h0, gcount, num_heads, head_dim,
                     max_partitions);
}
