// attention_decode_kv.cuh: how a decode-attention thread (attention_decode.cuh) gets its 16-byte K/V
// chunks for each key-loop iteration: U keys' worth, zeros past the partition or the head.
//   S = 0: loads straight into registers as the iteration starts.
//   S >= 2: a cp.async ring of S stages in shared memory, S - 1 iterations ahead of the math. Each
//   thread reads back only the slots it filled itself, so the ring needs no barrier; a stage is
//   refilled one iteration after it was read (its values are used up by then).
// Measured on H100 (ncu, 64 sequences x 512 keys): the ring cuts long-scoreboard stalls 1.65 -> 0.27
// per issue and the kernel's time 3%, but with 4x the shared memory per CTA the graph-replayed step
// loses 5% at G = 2 (Qwen3-0.6B, batch 64) while it gains 5% at G = 4 (Qwen3-4B): so S per G
// (attention_decode.cu).
// cp.async.cg goes through L2, so the fused variant also sees the key its CTA wrote this launch; the
// direct loads use ld.cg there for the same reason.
#pragma once
#include "common.cuh"

template <bool FUSED>
__device__ __forceinline__ uint4 load_kv(const bf16 *p) {
    if constexpr (FUSED)
        return __ldcg(reinterpret_cast<const uint4 *>(p));
    else
        return *reinterpret_cast<const uint4 *>(p);
}

template <int U, int S, bool FUSED>
struct KvFetch {
    uint4 *ring;  // S * U * 2 * blockDim.x slots (S >= 2)
    const bf16 *k_cache, *v_cache;
    const unsigned *s_bt;  // the partition's block-table entries, from block b0 on
    int k_begin, k_end, iters, per_iter, key_slots, slot_in_cta, b0, block_size;
    size_t kv_stride, head_off;  // head_off: this thread's chunk within a slot
    bool active;

    // offset of key u of iteration it, false if there is none for this thread
    __device__ __forceinline__ bool offset(int it, int u, size_t &off) const {
        const int pos = k_begin + it * per_iter + slot_in_cta + u * key_slots;
        if (it >= iters || pos >= k_end || !active) return false;
        off = ((size_t)s_bt[pos / block_size - b0] * block_size + pos % block_size) * kv_stride + head_off;
        return true;
    }
    // ring slot of (stage, u, k or v): consecutive threads, consecutive 16 bytes (no bank conflicts)
    __device__ __forceinline__ uint4 *slot(int stage, int u, int kv) const {
        return ring + ((stage * U + u) * 2 + kv) * blockDim.x + threadIdx.x;
    }
    // one commit group per iteration, empty past the last one so the wait count stays fixed
    __device__ __forceinline__ void issue(int it) const {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            size_t off = 0;
            const bool load = offset(it, u, off);
            cp_async16(slot(it % S, u, 0), k_cache + off, load);
            cp_async16(slot(it % S, u, 1), v_cache + off, load);
        }
        cp_async_commit();
    }
    __device__ __forceinline__ void start() const {
        if constexpr (S >= 2) {
#pragma unroll
            for (int it = 0; it < S - 1; ++it) issue(it);
        }
    }
    __device__ __forceinline__ void fetch(int it, uint4 (&kraw)[U], uint4 (&vraw)[U]) const {
        if constexpr (S >= 2) {
            cp_async_wait<S - 2>();  // iteration it has landed
#pragma unroll
            for (int u = 0; u < U; ++u) {
                kraw[u] = *slot(it % S, u, 0);
                vraw[u] = *slot(it % S, u, 1);
            }
            issue(it + S - 1);
        } else {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                size_t off = 0;
                kraw[u] = vraw[u] = make_uint4(0, 0, 0, 0);
                if (offset(it, u, off)) {
                    kraw[u] = load_kv<FUSED>(k_cache + off);
                    vraw[u] = load_kv<FUSED>(v_cache + off);
                }
            }
        }
    }
};
