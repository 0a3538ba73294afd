// quant_formats.cuh: GGUF block-quantized weight formats in the layout the GPU streams them, for the
// decode GEMV (gemv_tiled.cuh's weight-format contract) and the dequantizing kernels (dequant.cu).
// GGUF keeps each block's scale in front of its quants (Q8_0: 34 bytes per 32 weights), which no
// 16-byte vector load can stream; at upload (src/ops/quant_layout.rs) a tensor is split into planes:
// `qs`, the quant bytes of each 16-byte chunk, rows 16-byte aligned, and up to three side planes
// (`aux[0..3]`: scales, high bits...) that a format reads with small loads. The values are the file's.
// A format gives, beyond gemv_tiled.cuh's contract (PER_CHUNK, Row, Chunk, row, load, zero, unpack,
// accumulate): `dequant(chunk, w)`, the chunk's weights as ggml's dequantize_row_* computes them
// (f32, bit for bit: no contracted multiply-adds), and a constructor from QuantPlanes.
#pragma once
#include <cuda_fp16.h>
#include "gemv_tiled.cuh"

struct QuantPlanes {
    const unsigned char *qs;
    const void *aux0, *aux1, *aux2;
    int in_features;
};

// 2^23 + byte b of v, as a float: an unsigned byte to f32 without the (slow) conversion instruction,
// one byte permute and a subtraction, exact.
__device__ __forceinline__ float byte_as_float(unsigned v, int b) {
    return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7540u | b));
}
__device__ __forceinline__ float load_half(const unsigned short *d) {
    return __half2float(__ushort_as_half(__ldg(d)));
}

// acc += d * (w . x): the chunk's dot product, then its block scale (as llama.cpp's dequantizing
// kernels group it)
template <int E>
__device__ __forceinline__ void scaled_dot(float &acc, float d, const float (&wf)[E],
                                           const float (&xf)[E]) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < E; ++i) s = fmaf(xf[i], wf[i], s);
    acc = fmaf(d, s, acc);
}

// Formats with one f16 scale per 32-weight block and symmetric quants (Q8_0, Q4_0): F gives
// PER_CHUNK and unpack (the quants as floats, offset removed). aux0: d [rows, in_features / 32].
template <class F>
struct BlockWeights {
    static constexpr int PER_CHUNK = F::PER_CHUNK;
    struct Row {
        const uint4 *q;
        const unsigned short *d;
    };
    struct Chunk {
        uint4 q;
        float d;
    };
    const unsigned char *qs;
    const unsigned short *scales;
    int in_features;
    static __device__ __forceinline__ BlockWeights make(const QuantPlanes &p) {
        return {p.qs, static_cast<const unsigned short *>(p.aux0), p.in_features};
    }
    __device__ __forceinline__ Row row(int n) const {
        return {reinterpret_cast<const uint4 *>(qs + (size_t)n * (in_features / PER_CHUNK * 16)),
                scales + (size_t)n * (in_features / 32)};
    }
    __device__ __forceinline__ Chunk load(const Row &r, int c) const {
        return {ld_stream(r.q + c), load_half(r.d + c * PER_CHUNK / 32)};
    }
    static __device__ __forceinline__ Chunk zero() { return {make_uint4(0, 0, 0, 0), 0.0f}; }
    static __device__ __forceinline__ void unpack(const Chunk &ch, float (&wf)[PER_CHUNK]) {
        F::unpack(ch.q, wf);
    }
    static __device__ __forceinline__ void accumulate(float &acc, const Chunk &ch,
                                                      const float (&wf)[PER_CHUNK],
                                                      const float (&xf)[PER_CHUNK]) {
        scaled_dot(acc, ch.d, wf, xf);
    }
    // ggml: y = q * d
    static __device__ __forceinline__ void dequant(const Chunk &ch, float (&wf)[PER_CHUNK]) {
        F::unpack(ch.q, wf);
#pragma unroll
        for (int i = 0; i < PER_CHUNK; ++i) wf[i] = __fmul_rn(wf[i], ch.d);
    }
};

// Q8_0: a chunk is 16 i8 weights, half a block.
struct Q8_0 {
    static constexpr int PER_CHUNK = 16;
    static __device__ __forceinline__ void unpack(uint4 q, float (&wf)[16]) {
        const unsigned v[4] = {q.x ^ 0x80808080u, q.y ^ 0x80808080u, q.z ^ 0x80808080u,
                               q.w ^ 0x80808080u};
#pragma unroll
        for (int k = 0; k < 4; ++k)
#pragma unroll
            for (int b = 0; b < 4; ++b) wf[4 * k + b] = byte_as_float(v[k], b) - 8388736.0f;
    }
};

// Q4_0: a chunk is one block, 32 nibbles (low halves weights 0..15, high halves 16..31), minus 8.
struct Q4_0 {
    static constexpr int PER_CHUNK = 32;
    static __device__ __forceinline__ void unpack(uint4 q, float (&wf)[32]) {
        const unsigned v[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const unsigned lo = v[k] & 0x0F0F0F0Fu, hi = (v[k] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                wf[4 * k + b] = byte_as_float(lo, b) - 8388616.0f;
                wf[16 + 4 * k + b] = byte_as_float(hi, b) - 8388616.0f;
            }
        }
    }
};

using FormatQ8_0 = BlockWeights<Q8_0>;
using FormatQ4_0 = BlockWeights<Q4_0>;
