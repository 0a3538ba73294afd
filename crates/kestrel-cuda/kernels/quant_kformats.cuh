// quant_kformats.cuh: Q5_0, Q4_K and Q6_K (the types of llama.cpp's Q4_K_M files; Q5_0 is its
// fallback for rows that are not whole 256-weight super-blocks) under quant_formats.cuh's contract.
// All three have 32 weights per 16-byte `qs` chunk with the nibbles in Q4_0's order (byte j: low
// nibble = weight j of the chunk, high nibble = weight 16 + j), so the hot loop unpacks them as Q4_0
// does; the extra high bits come from a side plane, pre-shuffled at upload so that one shift and one
// mask put them next to the nibbles of `qs` word k (bytes b = 0..3: weights 4k + b and 16 + 4k + b).
// Planes (row-major; repacked by src/ops/quant_layout.rs), per 32-weight chunk unless stated:
// - Q5_0 (5.5 bits a weight, as in the file): qs: the block's 16 nibble bytes as they are. aux0: u32,
//   the 32 fifth bits transposed: byte b bit k = weight 4k + b, bit 4 + k = weight 16 + 4k + b.
//   aux1: d (f16). w = (q - 16) * d.
// - Q4_K (4.625 bits; the file's 4.5 packs the 6-bit scales): a chunk is one 32-weight sub-block,
//   re-nibbled from ggml's order (byte l of a 64-weight group holds weights l and 32 + l).
//   aux0: (sc, m) as two u8 (ggml's get_scale_min_k4 done at upload). aux1: per 256-weight
//   super-block, (d, dmin) as two f16 (one u32). w = (d * sc) * q - dmin * m.
// - Q6_K (6.5625 bits, as in the file): a chunk is two 16-weight sub-blocks. qs: the low 4 bits.
//   aux0: the top 2 bits, two u32 (weights 0..15, then 16..31): byte b bits 2k, 2k + 1 = weight
//   4k + b (+ 16). aux1: the two i8 sub-block scales. aux2: per super-block, d (f16).
//   w = (d * sc) * (q - 32).
// The GEMV sums a chunk's quants times x, then scales (Q4_K: d*sc * sum(q x) - dmin*m * sum(x));
// dequant computes ggml's expressions in ggml's order, uncontracted.
#pragma once
#include "quant_formats.cuh"

__device__ __forceinline__ unsigned ld_stream_u32(const unsigned *p) {
    unsigned v;
    asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ uint2 ld_stream_u64(const uint2 *p) {
    uint2 v;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}
// v << s for s >= 0, v >> -s otherwise (s is a constant once unrolled)
__device__ __forceinline__ unsigned shift_left(unsigned v, int s) {
    return s >= 0 ? v << s : v >> -s;
}

// The 32 quants of a chunk as floats minus OFF: nibbles as Q4_0, plus BITS high bits per weight taken
// from h_lo (weights 0..15: byte b bits BITS*k.. for weight 4k + b) and h_hi (weights 16..31: byte b
// bits HI + BITS*k..), moved to bit 4 of byte b. Exact: a byte b is 2^23 + b as a float.
// The 32 quants of a chunk as bytes (lo[k]: weights 4k + b, hi[k]: 16 + 4k + b, b = byte): nibbles as
// Q4_0, plus BITS high bits per weight taken from h_lo (weights 0..15: byte b bits BITS*k.. for weight
// 4k + b) and h_hi (weights 16..31: byte b bits HI + BITS*k..), moved to bit 4 of byte b.
template <int BITS, int HI>
__device__ __forceinline__ void q32_bytes(uint4 q, unsigned h_lo, unsigned h_hi, unsigned (&lo)[4],
                                          unsigned (&hi)[4]) {
    constexpr unsigned M = ((1u << BITS) - 1u) * 0x10101010u;
    const unsigned v[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        lo[k] = v[k] & 0x0F0F0F0Fu;
        hi[k] = (v[k] >> 4) & 0x0F0F0F0Fu;
        if constexpr (BITS > 0) {
            lo[k] |= shift_left(h_lo, 4 - BITS * k) & M;
            hi[k] |= shift_left(h_hi, 4 - HI - BITS * k) & M;
        }
    }
}

// q32_bytes as floats minus OFF. Exact: a byte b is 2^23 + b as a float.
template <int BITS, int HI, int OFF>
__device__ __forceinline__ void unpack_q32(uint4 q, unsigned h_lo, unsigned h_hi, float (&wf)[32]) {
    constexpr float off = 8388608.0f + OFF;
    unsigned lo[4], hi[4];
    q32_bytes<BITS, HI>(q, h_lo, h_hi, lo, hi);
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            wf[4 * k + b] = byte_as_float(lo[k], b) - off;
            wf[16 + 4 * k + b] = byte_as_float(hi[k], b) - off;
        }
}

struct FormatQ5_0 {
    static constexpr int PER_CHUNK = 32;
    struct Row {
        const uint4 *q;
        const unsigned *h;
        const unsigned short *d;
    };
    struct Chunk {
        uint4 q;
        unsigned h;
        float d;
    };
    const unsigned char *qs;
    const unsigned *qh;
    const unsigned short *scales;
    int in_features;
    static __device__ __forceinline__ FormatQ5_0 make(const QuantPlanes &p) {
        return {p.qs, static_cast<const unsigned *>(p.aux0),
                static_cast<const unsigned short *>(p.aux1), p.in_features};
    }
    __device__ __forceinline__ Row row(int n) const {
        const size_t c = (size_t)n * (in_features / 32);
        return {reinterpret_cast<const uint4 *>(qs) + c, qh + c, scales + c};
    }
    __device__ __forceinline__ Chunk load(const Row &r, int c) const {
        return {ld_stream(r.q + c), ld_stream_u32(r.h + c), load_half(r.d + c)};
    }
    static __device__ __forceinline__ Chunk zero() { return {make_uint4(0, 0, 0, 0), 0u, 0.0f}; }
    static __device__ __forceinline__ void unpack(const Chunk &ch, float (&wf)[32]) {
        unpack_q32<1, 4, 16>(ch.q, ch.h, ch.h, wf);
    }
    static __device__ __forceinline__ void accumulate(float &acc, const Chunk &ch,
                                                      const float (&wf)[32], const float (&xf)[32]) {
        scaled_dot(acc, ch.d, wf, xf);
    }
    // ggml: y = x0 * d, x0 = q - 16
    static __device__ __forceinline__ void dequant(const Chunk &ch, float (&wf)[32]) {
        unpack(ch, wf);
#pragma unroll
        for (int i = 0; i < 32; ++i) wf[i] = __fmul_rn(wf[i], ch.d);
    }
};

struct FormatQ4_K {
    static constexpr int PER_CHUNK = 32;
    struct Row {
        const uint4 *q;
        const unsigned short *sm;
        const unsigned *dm;
    };
    struct Chunk {
        uint4 q;
        float d, m;  // d * sc, dmin * m
    };
    const unsigned char *qs;
    const unsigned short *scale_min;
    const unsigned *super_scales;
    int in_features;
    static __device__ __forceinline__ FormatQ4_K make(const QuantPlanes &p) {
        return {p.qs, static_cast<const unsigned short *>(p.aux0),
                static_cast<const unsigned *>(p.aux1), p.in_features};
    }
    __device__ __forceinline__ Row row(int n) const {
        const size_t c = (size_t)n * (in_features / 32);
        return {reinterpret_cast<const uint4 *>(qs) + c, scale_min + c,
                super_scales + (size_t)n * (in_features / 256)};
    }
    __device__ __forceinline__ Chunk load(const Row &r, int c) const {
        const uint4 q = ld_stream(r.q + c);
        const unsigned sm = __ldg(r.sm + c), dm = __ldg(r.dm + c / 8);
        const float d = __half2float(__ushort_as_half((unsigned short)(dm & 0xFFFFu)));
        const float dmin = __half2float(__ushort_as_half((unsigned short)(dm >> 16)));
        return {q, __fmul_rn(d, byte_as_float(sm, 0) - 8388608.0f),
                __fmul_rn(dmin, byte_as_float(sm, 1) - 8388608.0f)};
    }
    static __device__ __forceinline__ Chunk zero() { return {make_uint4(0, 0, 0, 0), 0.0f, 0.0f}; }
    static __device__ __forceinline__ void unpack(const Chunk &ch, float (&wf)[32]) {
        unpack_q32<0, 0, 0>(ch.q, 0u, 0u, wf);
    }
    // sum(x) is the same expression for every row of a tile: the compiler computes it once
    static __device__ __forceinline__ void accumulate(float &acc, const Chunk &ch,
                                                      const float (&wf)[32], const float (&xf)[32]) {
        float s = 0.0f, sx = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            s = fmaf(xf[i], wf[i], s);
            sx = __fadd_rn(sx, xf[i]);
        }
        acc = fmaf(ch.d, s, acc);
        acc = fmaf(-ch.m, sx, acc);
    }
    // ggml: d1 = d * sc, m1 = min * m, y = d1 * q - m1
    static __device__ __forceinline__ void dequant(const Chunk &ch, float (&wf)[32]) {
        unpack(ch, wf);
#pragma unroll
        for (int i = 0; i < 32; ++i) wf[i] = __fsub_rn(__fmul_rn(ch.d, wf[i]), ch.m);
    }
};

struct FormatQ6_K {
    static constexpr int PER_CHUNK = 32;
    struct Row {
        const uint4 *q;
        const uint2 *h;
        const unsigned short *sc;
        const unsigned short *d;
    };
    struct Chunk {
        uint4 q;
        uint2 h;
        float d0, d1;  // d * sc of weights 0..15 and 16..31
    };
    const unsigned char *qs;
    const uint2 *qh;
    const unsigned short *scales;
    const unsigned short *super_scales;
    int in_features;
    static __device__ __forceinline__ FormatQ6_K make(const QuantPlanes &p) {
        return {p.qs, static_cast<const uint2 *>(p.aux0),
                static_cast<const unsigned short *>(p.aux1),
                static_cast<const unsigned short *>(p.aux2), p.in_features};
    }
    __device__ __forceinline__ Row row(int n) const {
        const size_t c = (size_t)n * (in_features / 32);
        return {reinterpret_cast<const uint4 *>(qs) + c, qh + c, scales + c,
                super_scales + (size_t)n * (in_features / 256)};
    }
    __device__ __forceinline__ Chunk load(const Row &r, int c) const {
        const uint4 q = ld_stream(r.q + c);
        const uint2 h = ld_stream_u64(r.h + c);
        const unsigned sc = __ldg(r.sc + c) ^ 0x8080u;  // two i8 + 128, as u8
        const float d = load_half(r.d + c / 8);
        return {q, h, __fmul_rn(d, byte_as_float(sc, 0) - 8388736.0f),
                __fmul_rn(d, byte_as_float(sc, 1) - 8388736.0f)};
    }
    static __device__ __forceinline__ Chunk zero() {
        return {make_uint4(0, 0, 0, 0), make_uint2(0, 0), 0.0f, 0.0f};
    }
    static __device__ __forceinline__ void unpack(const Chunk &ch, float (&wf)[32]) {
        unpack_q32<2, 0, 32>(ch.q, ch.h.x, ch.h.y, wf);
    }
    static __device__ __forceinline__ void accumulate(float &acc, const Chunk &ch,
                                                      const float (&wf)[32], const float (&xf)[32]) {
        float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            s0 = fmaf(xf[i], wf[i], s0);
            s1 = fmaf(xf[16 + i], wf[16 + i], s1);
        }
        acc = fmaf(ch.d0, s0, acc);
        acc = fmaf(ch.d1, s1, acc);
    }
    // ggml: y = d * sc * q, as (d * sc) * q
    static __device__ __forceinline__ void dequant(const Chunk &ch, float (&wf)[32]) {
        unpack(ch, wf);
#pragma unroll
        for (int i = 0; i < 32; ++i) wf[i] = __fmul_rn(i < 16 ? ch.d0 : ch.d1, wf[i]);
    }
};
