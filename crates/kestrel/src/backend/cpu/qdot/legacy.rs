//! Q8_0, Q4_0 and Q5_0 weights (32-element blocks, one f16 scale) against Q8_0 activations: per block
//! an i32 dot of the signed 8-bit values, times both scales.

use super::scalar_entry;
use crate::quant::{f16_to_f32, BlockQ4_0, BlockQ5_0, BlockQ8_0};

fn q8_0_block(w: &BlockQ8_0) -> [i8; 32] {
    w.qs
}

fn q4_0_block(w: &BlockQ4_0) -> [i8; 32] {
    let mut q = [0i8; 32];
    for (j, &b) in w.qs.iter().enumerate() {
        q[j] = (b & 0x0f) as i8 - 8;
        q[j + 16] = (b >> 4) as i8 - 8;
    }
    q
}

fn q5_0_block(w: &BlockQ5_0) -> [i8; 32] {
    let qh = u32::from_le_bytes(w.qh);
    let mut q = [0i8; 32];
    for (j, &b) in w.qs.iter().enumerate() {
        q[j] = ((b & 0x0f) | (((qh >> j) & 1) << 4) as u8) as i8 - 16;
        q[j + 16] = ((b >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8) as i8 - 16;
    }
    q
}

/// The scalar reference: unpack each block to i8, i32 dot, scale in f32.
fn dot_blocks<W>(
    w: &[W],
    a: &[BlockQ8_0],
    unpack: fn(&W) -> [i8; 32],
    d: fn(&W) -> [u8; 2],
) -> f32 {
    let mut sum = 0f32;
    for (w, a) in w.iter().zip(a) {
        let q = unpack(w);
        let sumi: i32 = q
            .iter()
            .zip(&a.qs)
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
        sum += f16_to_f32(d(w)) * f16_to_f32(a.d) * sumi as f32;
    }
    sum
}

fn q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    dot_blocks(w, a, q8_0_block, |w| w.d)
}
fn q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    dot_blocks(w, a, q4_0_block, |w| w.d)
}
fn q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    dot_blocks(w, a, q5_0_block, |w| w.d)
}

scalar_entry!(scalar_q8_0, q8_0, BlockQ8_0, BlockQ8_0);
scalar_entry!(scalar_q4_0, q4_0, BlockQ4_0, BlockQ8_0);
scalar_entry!(scalar_q5_0, q5_0, BlockQ5_0, BlockQ8_0);

#[cfg(target_arch = "x86_64")]
pub use avx2::*;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{bytes_from_bits, dot_i8, f16, load16, load32, nibbles16};
    use super::super::{avx2_entry, MAX_TOKENS};
    use crate::quant::{BlockQ4_0, BlockQ5_0, BlockQ8_0};

    /// The shared loop: `unpack` gives a weight block's 32 signed values; per token one i8 dot and one
    /// FMA of the two scales into an f32 accumulator. Two blocks per step keep two FMA chains going.
    #[inline(always)]
    fn dot_rows<W, const N: usize>(
        w: &[W],
        a: &[&[BlockQ8_0]; MAX_TOKENS],
        out: &mut [f32],
        unpack: impl Fn(&W) -> __m256i,
        d: impl Fn(&W) -> [u8; 2],
    ) {
        // SAFETY (of the intrinsics below): callers are `target_feature(avx2, fma, f16c)` functions.
        unsafe {
            // Two accumulator sets (even and odd blocks), indexed statically so they stay in registers.
            let mut acc = [[_mm256_setzero_ps(); N]; 2];
            // A macro, not a closure: a closure here would not inherit the caller's target features.
            macro_rules! step {
                ($b:expr, $acc:expr) => {{
                    let (b, acc) = ($b, $acc);
                    let wb = &w[b];
                    let q = unpack(wb);
                    let dw = f16(d(wb));
                    for t in 0..N {
                        let ab = &a[t][b];
                        let p = _mm256_cvtepi32_ps(dot_i8(q, load32(&ab.qs, 0)));
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * f16(ab.d)), p, acc[t]);
                    }
                }};
            }
            let [even, odd] = &mut acc;
            for b in (0..w.len() / 2 * 2).step_by(2) {
                step!(b, &mut *even);
                step!(b + 1, &mut *odd);
            }
            if w.len() % 2 == 1 {
                step!(w.len() - 1, &mut *even);
            }
            for t in 0..N {
                out[t] = super::super::x86::hsum_ps(_mm256_add_ps(acc[0][t], acc[1][t]));
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0<const N: usize>(w: &[BlockQ8_0], a: &[&[BlockQ8_0]; MAX_TOKENS], out: &mut [f32]) {
        dot_rows::<_, N>(w, a, out, |b| load32(&b.qs, 0), |b| b.d);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_0<const N: usize>(w: &[BlockQ4_0], a: &[&[BlockQ8_0]; MAX_TOKENS], out: &mut [f32]) {
        let unpack =
            |b: &BlockQ4_0| _mm256_sub_epi8(nibbles16(load16(&b.qs, 0)), _mm256_set1_epi8(8));
        dot_rows::<_, N>(w, a, out, unpack, |b| b.d);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q5_0<const N: usize>(w: &[BlockQ5_0], a: &[&[BlockQ8_0]; MAX_TOKENS], out: &mut [f32]) {
        let unpack = |b: &BlockQ5_0| {
            // A clear fifth bit makes the byte `nibble | 0xF0`, i.e. nibble - 16 as i8; a set one
            // leaves the nibble: (q | h << 4) - 16 either way.
            let hi = _mm256_andnot_si256(
                bytes_from_bits(u32::from_le_bytes(b.qh)),
                _mm256_set1_epi8(0xF0u8 as i8),
            );
            _mm256_or_si256(nibbles16(load16(&b.qs, 0)), hi)
        };
        dot_rows::<_, N>(w, a, out, unpack, |b| b.d);
    }

    avx2_entry!(avx2_q8_0, q8_0, BlockQ8_0, BlockQ8_0);
    avx2_entry!(avx2_q4_0, q4_0, BlockQ4_0, BlockQ8_0);
    avx2_entry!(avx2_q5_0, q5_0, BlockQ5_0, BlockQ8_0);
}
