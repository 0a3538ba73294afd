//! Q6_K weights against Q8_K activations. The 6-bit values are dotted unsigned (0..64) and the offset
//! of 32 comes back through the activation block's sums of 16, which line up with Q6_K's sub-blocks:
//! `Σ x·a = d·da·(Σ_g sc_g (q·a)_g − 32 Σ_g sc_g Σa_g)`.

use super::scalar_entry;
use crate::quant::{f16_to_f32, BlockQ6K, BlockQ8K};

/// The 256 unsigned 6-bit values of a block, in element order.
fn unpack(w: &BlockQ6K) -> [u8; 256] {
    let mut q = [0u8; 256];
    for n in 0..2 {
        let (ql, qh, y) = (&w.ql[64 * n..], &w.qh[32 * n..], &mut q[128 * n..]);
        for l in 0..32 {
            y[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
            y[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
            y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    q
}

fn q6_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (w, a) in w.iter().zip(a) {
        let q = unpack(w);
        let mut sumi = 0i32;
        for g in 0..16 {
            let s: i32 = (16 * g..16 * g + 16)
                .map(|e| q[e] as i32 * a.qs[e] as i32)
                .sum();
            sumi += w.scales[g] as i32 * (s - 32 * a.bsum(g) as i32);
        }
        sum += f16_to_f32(w.d) * a.scale() * sumi as f32;
    }
    sum
}

scalar_entry!(scalar_q6_k, q6_k, BlockQ6K, BlockQ8K);

#[cfg(target_arch = "x86_64")]
pub use avx2::*;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{f16, hsum_ps, load16, load32};
    use super::super::{avx2_entry, MAX_TOKENS};
    use crate::quant::{BlockQ6K, BlockQ8K};

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q6_k<const N: usize>(w: &[BlockQ6K], a: &[&[BlockQ8K]; MAX_TOKENS], out: &mut [f32]) {
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(0x30);
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            let d = f16(wb.d);
            let sc16 = _mm256_cvtepi8_epi16(load16(&wb.scales[..], 0));
            let mut sumi = [_mm256_setzero_si256(); N];
            for n in 0..2 {
                let ql0 = load32(&wb.ql[..], 64 * n);
                let ql1 = load32(&wb.ql[..], 64 * n + 32);
                let qh = load32(&wb.qh[..], 32 * n);
                // Groups of 32 elements k = 0..4 of this half, each two sub-blocks of 16.
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_and_si256(qh, m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2),
                    ),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let g = 8 * n + 2 * k;
                    let s = _mm256_set_m128i(
                        _mm_set1_epi16(wb.scales[g + 1] as i16),
                        _mm_set1_epi16(wb.scales[g] as i16),
                    );
                    for t in 0..N {
                        let p = _mm256_maddubs_epi16(qk, load32(&a[t][b].qs[..], 128 * n + 32 * k));
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, s));
                    }
                }
            }
            for t in 0..N {
                let ab = &a[t][b];
                let offset =
                    _mm256_slli_epi32(_mm256_madd_epi16(sc16, load32(&ab.bsums[..], 0)), 5);
                let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[t], offset));
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.scale()), s, acc[t]);
            }
        }
        for t in 0..N {
            out[t] = hsum_ps(acc[t]);
        }
    }

    avx2_entry!(avx2_q6_k, q6_k, BlockQ6K, BlockQ8K);
}
