// Tensor-core building blocks shared by the attention kernels: bf16 mma.m16n8k16 with f32
// accumulators, ldmatrix of four 8x8 tiles, and the split of f32 values into two bf16 terms.
#pragma once
#include "common.cuh"

// c += A B for one m16n8k16 tile: A (16 x 16, row-major fragment a0..a3: a0 = rows 0-7 / k 0-7,
// a1 = rows 8-15 / k 0-7, a2 = rows 0-7 / k 8-15, a3 = rows 8-15 / k 8-15), B (16 x 8, b0 = k 0-7,
// b1 = k 8-15); lane l holds c[0..1] at (row l / 4, columns 2 (l % 4) ..) and c[2..3] 8 rows down.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], unsigned a0, unsigned a1, unsigned a2,
                                               unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// c += A B for the top half of an m16n8k16 tile whose A rows 8..15 are zero (a1 = a3 = 0): lane l
// holds c[0..1] at (row l / 4, columns 2 (l % 4) ..). Rows 8..15 of the result (zero) go to scratch
// outputs that die at once, so they hold no registers across a loop (as c[2..3] of a full
// accumulator would).
__device__ __forceinline__ void mma_bf16_16816_top(float (&c)[2], unsigned a0, unsigned a2, unsigned b0,
                                                   unsigned b1) {
    float d2, d3;
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %10, %10};"
        : "+f"(c[0]), "+f"(c[1]), "=f"(d2), "=f"(d3)
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.0f));
}

// Four 8x8 bf16 tiles from shared memory: lane l gives the address of row l % 8 of tile l / 8.
template <bool TRANS>
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const bf16 *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
}

// (a, b) as bf16x2 (a in the low half), and their rounding residuals as a second bf16x2: hi + lo
// carries 16 significant bits, within ~2^-17 of the f32 values (probabilities times V in two mma).
__device__ __forceinline__ uint2 bf16x2_split(float a, float b) {
    const __nv_bfloat162 hi = __floats2bfloat162_rn(a, b);
    const __nv_bfloat162 lo =
        __floats2bfloat162_rn(a - __bfloat162float(hi.x), b - __bfloat162float(hi.y));
    return make_uint2(*reinterpret_cast<const unsigned *>(&hi), *reinterpret_cast<const unsigned *>(&lo));
}
