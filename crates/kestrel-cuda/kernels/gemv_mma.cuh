// gemv_mma.cuh: the tensor-core decode GEMV's pieces (gemv_mma.cu): the mma instruction, the quants
// of each format as bf16 A fragments with their scales, and the per-warp staging of weight tiles.
//
// Fragments (m16n8k16, row.col): lane (g = lane / 4, t = lane % 4) holds A rows g and g + 8 at the
// k-slots 2t, 2t+1, 2t+8, 2t+9, B (x^T, columns = tokens) column g at the same slots, C rows g, g + 8
// x columns (tokens) 2t, 2t + 1. The k-slots may stand for any weights of one block, as long as A and
// B agree: lane t takes bytes 4t..4t+3 of each row's 16-byte chunk (one u32; the 4 lanes read the
// chunk whole), i.e. weights 4t..4t+3 (low nibbles: the first mma of the block) and 16 + 4t.. (high
// nibbles: the second), with slots 2t, 2t+1 = weights 4t, 4t+1 and 2t+8, 2t+9 = 4t+2, 4t+3; so B's
// pairs are x's own consecutive pairs: one 8-byte shared-memory load per mma.
//
// Work: a block of 8 warps, in groups of k_split warps (1, 2, 4, 8) that split K; a group owns one
// 16-row tile (modes 0, 1) or a gate tile and its up tile (mode 2, SwiGLU: rows n and inter + n). x
// (normalised with _norm: the layer's input norm, HF's rounding) is staged per block in shared
// memory, rows padded by 16 values so the 8 tokens' loads fall in different banks; tokens >= T read
// token T - 1 (their columns are dropped). Each warp streams its rows' chunks through shared memory
// by cp.async, 8 chunks (a round) at a time, double-buffered: every copy instruction moves whole
// 128-byte runs of 4 rows, where loading each lane's u32 straight from 8 rows (the first version)
// spent the load pipe on 16-byte pieces of 8 lines and reached ~1 TB/s.
// Launch: grid ceil(out_rows / (16 * 8 / k_split)), block 256, dynamic shared memory as
// src/ops/gemv_mma.rs's mma_smem; in_features % 64 == 0.
#pragma once
#include "quant_formats.cuh"
#include "quant_kformats.cuh"

#define MMA_WARPS 8
// chunks (32 weights of each of a tile's rows) loaded ahead per warp
#define MMA_U 8
#define MMA_XPAD 16

__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], unsigned a0, unsigned a1,
                                               unsigned a2, unsigned a3, uint2 b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b.x), "r"(b.y));
}

// Quant bytes b0..b3 (each < 128) of rows g (v) and g + 8 (w) as the A fragment of one mma, minus
// OFF: bf16(128 + b) pairs (b0, b1) and (b2, b3) by a byte permute, then bf16x2 a * 1 - (128 + OFF),
// exact (every value an integer below 256 in magnitude).
template <int OFF>
__device__ __forceinline__ void mma_a(float (&c)[4], unsigned v, unsigned w, uint2 b) {
    constexpr unsigned ONE = 0x3F803F80u;  // bf16x2 (1, 1)
    // bf16x2 -(128 + OFF): 128 + OFF < 256 is exact in bf16's 8 significant bits
    constexpr unsigned NEG = OFF == 0    ? 0xC300C300u
                             : OFF == 8  ? 0xC308C308u
                             : OFF == 16 ? 0xC310C310u
                                         : 0xC320C320u;  // OFF == 32
    static_assert(OFF == 0 || OFF == 8 || OFF == 16 || OFF == 32, "offset without a constant");
    unsigned a[4] = {__byte_perm(v, 0x43434343u, 0x4140), __byte_perm(w, 0x43434343u, 0x4140),
                     __byte_perm(v, 0x43434343u, 0x4342), __byte_perm(w, 0x43434343u, 0x4342)};
#pragma unroll
    for (int i = 0; i < 4; ++i)
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(a[i]) : "r"(a[i]), "r"(ONE), "r"(NEG));
    mma_bf16_16816(c, a[0], a[1], a[2], a[3], b);
}

// Per format: Raw (one lane's share of one row's chunk: its u32 of the quants and the scale bits),
// made from the staged planes (stage(qs word, aux0 bytes, aux1 bytes, super-block scale)); bytes(raw,
// t, lo, hi): the quants of weights 4t..4t+3 and 16 + 4t.. as bytes; scales(raw) -> s0 (first 16
// weights), s1 (last 16), m (times sum x); OFF. Planes staged per chunk: qs (16 bytes), aux0 (A0
// bytes), aux1 (A1 bytes); the super-block scale (SB bytes per 8 chunks, plane SB_PLANE) is loaded.
struct MmaQ4_0 {
    static constexpr int OFF = 8, A0 = 2, A1 = 0, SB = 0, SB_PLANE = 0;
    static constexpr bool SPLIT = false, MIN = false;
    struct Raw {
        unsigned q;
        unsigned short d;
    };
    static __device__ __forceinline__ Raw stage(unsigned q, const unsigned char *a0,
                                                const unsigned char *, unsigned) {
        return {q, *reinterpret_cast<const unsigned short *>(a0)};
    }
    static __device__ __forceinline__ void bytes(const Raw &r, int, unsigned &lo, unsigned &hi) {
        lo = r.q & 0x0F0F0F0Fu;
        hi = (r.q >> 4) & 0x0F0F0F0Fu;
    }
    static __device__ __forceinline__ float3 scales(const Raw &r) {
        const float d = __half2float(__ushort_as_half(r.d));
        return make_float3(d, d, 0.0f);
    }
};

struct MmaQ5_0 {
    static constexpr int OFF = 16, A0 = 4, A1 = 2, SB = 0, SB_PLANE = 0;
    static constexpr bool SPLIT = false, MIN = false;
    struct Raw {
        unsigned q, h;
        unsigned short d;
    };
    static __device__ __forceinline__ Raw stage(unsigned q, const unsigned char *a0,
                                                const unsigned char *a1, unsigned) {
        return {q, *reinterpret_cast<const unsigned *>(a0),
                *reinterpret_cast<const unsigned short *>(a1)};
    }
    // fifth bits: byte b bit t = weight 4t + b, bit 4 + t = weight 16 + 4t + b (see FormatQ5_0)
    static __device__ __forceinline__ void bytes(const Raw &r, int t, unsigned &lo, unsigned &hi) {
        lo = (r.q & 0x0F0F0F0Fu) | ((r.h << (4 - t)) & 0x10101010u);
        hi = ((r.q >> 4) & 0x0F0F0F0Fu) | ((r.h >> t) & 0x10101010u);
    }
    static __device__ __forceinline__ float3 scales(const Raw &r) {
        const float d = __half2float(__ushort_as_half(r.d));
        return make_float3(d, d, 0.0f);
    }
};

struct MmaQ4_K {
    static constexpr int OFF = 0, A0 = 2, A1 = 0, SB = 4, SB_PLANE = 1;
    static constexpr bool SPLIT = false, MIN = true;  // w = d1 * q - m1
    struct Raw {
        unsigned q, dm;
        unsigned short sm;
    };
    static __device__ __forceinline__ Raw stage(unsigned q, const unsigned char *a0,
                                                const unsigned char *, unsigned sup) {
        return {q, sup, *reinterpret_cast<const unsigned short *>(a0)};
    }
    static __device__ __forceinline__ void bytes(const Raw &r, int, unsigned &lo, unsigned &hi) {
        lo = r.q & 0x0F0F0F0Fu;
        hi = (r.q >> 4) & 0x0F0F0F0Fu;
    }
    // as FormatQ4_K::load: d1 = d * sc, m1 = dmin * m (ggml's products, exact as in the file)
    static __device__ __forceinline__ float3 scales(const Raw &r) {
        const float d = __half2float(__ushort_as_half((unsigned short)(r.dm & 0xFFFFu)));
        const float dmin = __half2float(__ushort_as_half((unsigned short)(r.dm >> 16)));
        const float d1 = __fmul_rn(d, byte_as_float(r.sm, 0) - 8388608.0f);
        return make_float3(d1, d1, __fmul_rn(dmin, byte_as_float(r.sm, 1) - 8388608.0f));
    }
};

struct MmaQ6_K {
    static constexpr int OFF = 32, A0 = 8, A1 = 2, SB = 2, SB_PLANE = 2;
    static constexpr bool SPLIT = true, MIN = false;  // SPLIT: a scale per 16 weights
    struct Raw {
        unsigned q;
        uint2 h;
        unsigned short sc, d;
    };
    static __device__ __forceinline__ Raw stage(unsigned q, const unsigned char *a0,
                                                const unsigned char *a1, unsigned sup) {
        return {q, *reinterpret_cast<const uint2 *>(a0), *reinterpret_cast<const unsigned short *>(a1),
                (unsigned short)sup};
    }
    // top two bits: byte b bits 2t, 2t + 1 of h.x (weight 4t + b) and h.y (16 + 4t + b), to bits 4, 5
    static __device__ __forceinline__ void bytes(const Raw &r, int t, unsigned &lo, unsigned &hi) {
        const unsigned hx = t < 3 ? r.h.x << (4 - 2 * t) : r.h.x >> 2;
        const unsigned hy = t < 3 ? r.h.y << (4 - 2 * t) : r.h.y >> 2;
        lo = (r.q & 0x0F0F0F0Fu) | (hx & 0x30303030u);
        hi = ((r.q >> 4) & 0x0F0F0F0Fu) | (hy & 0x30303030u);
    }
    static __device__ __forceinline__ float3 scales(const Raw &r) {
        const unsigned sc = r.sc ^ 0x8080u;  // two i8 + 128, as u8
        const float d = __half2float(__ushort_as_half(r.d));
        return make_float3(__fmul_rn(d, byte_as_float(sc, 0) - 8388736.0f),
                           __fmul_rn(d, byte_as_float(sc, 1) - 8388736.0f), 0.0f);
    }
};

// cp.async of 4 bytes (through L1: the side planes' runs per row are 16-64 bytes); cp_async16 and the
// group commit / wait are common.cuh's
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem) : "memory");
}

// A warp's staged tile: 16 rows x MMA_U chunks of each plane. qs rows are padded by 16 bytes so
// that the lanes' reads of rows g = 0..7 (word t of a chunk) fall in 32 different banks.
#define MMA_QS_ROW (MMA_U * 16 + 16)
template <class M>
struct MmaStage {
    static constexpr int QS = 16 * MMA_QS_ROW, A0 = 16 * MMA_U * M::A0, A1 = 16 * MMA_U * M::A1;
    static constexpr int BYTES = QS + A0 + A1;
};

// The warp's copies of chunks c .. c + MMA_U (those below c_end) of its 16 rows (tile row r is
// weight row min(row0 + r, rows - 1) + add) into a stage; each instruction moves 128-byte runs of
// rows. The caller commits the group.
template <class M>
__device__ __forceinline__ void mma_issue(unsigned char *st, const QuantPlanes &p, int row0,
                                          int rows, int add, int c, int c_end, int lane) {
    const int chunks = p.in_features / 32;
    auto row = [&](int r) { return (size_t)(min(row0 + r, rows - 1) + add); };
    const unsigned char *aux0 = static_cast<const unsigned char *>(p.aux0);
    const unsigned char *aux1 = static_cast<const unsigned char *>(p.aux1);
#pragma unroll
    for (int j = 0; j < 16 * MMA_U / 32; ++j) {
        const int i = lane + 32 * j, r = i / MMA_U, u = i % MMA_U;
        if (c + u < c_end)
            cp_async16(st + r * MMA_QS_ROW + 16 * u, p.qs + (row(r) * chunks + c + u) * 16, true);
    }
    if constexpr (M::A0 > 0) {
        constexpr int W = MMA_U * M::A0 / 4;  // 4-byte words per row
#pragma unroll
        for (int j = 0; j < (16 * W + 31) / 32; ++j) {
            const int i = lane + 32 * j, r = i / W, w = i % W;
            if (r < 16 && c + w * 4 / M::A0 < c_end)
                cp_async4(st + MmaStage<M>::QS + r * (MMA_U * M::A0) + 4 * w,
                          aux0 + (row(r) * chunks + c) * M::A0 + 4 * w);
        }
    }
    if constexpr (M::A1 > 0) {
        constexpr int W = MMA_U * M::A1 / 4;
#pragma unroll
        for (int j = 0; j < (16 * W + 31) / 32; ++j) {
            const int i = lane + 32 * j, r = i / W, w = i % W;
            if (r < 16 && c + w * 4 / M::A1 < c_end)
                cp_async4(st + MmaStage<M>::QS + MmaStage<M>::A0 + r * (MMA_U * M::A1) + 4 * w,
                          aux1 + (row(r) * chunks + c) * M::A1 + 4 * w);
        }
    }
}

// The super-block scale of rows g, g + 8 for chunks c.. (one super-block: rounds start at multiples
// of 8 chunks), as raw bits; 0 for formats without one.
template <class M>
__device__ __forceinline__ void mma_super(unsigned (&sup)[2], const QuantPlanes &p, int row_g,
                                          int row_h, int c) {
    if constexpr (M::SB == 4) {
        const unsigned *b = static_cast<const unsigned *>(M::SB_PLANE == 1 ? p.aux1 : p.aux2);
        const int per_row = p.in_features / 256;
        sup[0] = __ldg(b + (size_t)row_g * per_row + c / 8);
        sup[1] = __ldg(b + (size_t)row_h * per_row + c / 8);
    } else if constexpr (M::SB == 2) {
        const unsigned short *b =
            static_cast<const unsigned short *>(M::SB_PLANE == 1 ? p.aux1 : p.aux2);
        const int per_row = p.in_features / 256;
        sup[0] = __ldg(b + (size_t)row_g * per_row + c / 8);
        sup[1] = __ldg(b + (size_t)row_h * per_row + c / 8);
    } else {
        sup[0] = sup[1] = 0u;
    }
}
