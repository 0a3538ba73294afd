//! Q4_K and Q5_K weights against Q8_K activations. Per super-block,
//! `Σ x·a = d·da·Σ_j sc_j (q·a)_j − dmin·da·Σ_j m_j Σa_j`: the integer dots take the unsigned 4/5-bit
//! values as they are, and the minimums fold in through the activation block's sums of 16.

use super::scalar_entry;
use crate::quant::{f16_to_f32, BlockQ4K, BlockQ5K, BlockQ8K};

/// The 8 six-bit scales and 8 mins of a Q4_K/Q5_K super-block (ggml's kmask unpacking).
pub(super) fn scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc0 = u0 & KMASK1;
    let sc1 = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let m0 = u1 & KMASK1;
    let m1 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let cat = |a: u32, b: u32| {
        let mut o = [0u8; 8];
        o[..4].copy_from_slice(&a.to_le_bytes());
        o[4..].copy_from_slice(&b.to_le_bytes());
        o
    };
    (cat(sc0, sc1), cat(m0, m1))
}

/// The scalar reference for one super-block given its 256 unsigned values.
fn superblock(q: &[u8; 256], scales: &[u8; 12], d: [u8; 2], dmin: [u8; 2], a: &BlockQ8K) -> f32 {
    let (sc, m) = scales_mins(scales);
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for j in 0..8 {
        let s: i32 = (0..32)
            .map(|l| q[32 * j + l] as i32 * a.qs[32 * j + l] as i32)
            .sum();
        sumi += sc[j] as i32 * s;
        summ += m[j] as i32 * (a.bsum(2 * j) as i32 + a.bsum(2 * j + 1) as i32);
    }
    a.scale() * (f16_to_f32(d) * sumi as f32 - f16_to_f32(dmin) * summ as f32)
}

fn q4_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (w, a) in w.iter().zip(a) {
        let mut q = [0u8; 256];
        for (j, qs) in w.qs.chunks_exact(32).enumerate() {
            for (l, &b) in qs.iter().enumerate() {
                q[64 * j + l] = b & 0x0f;
                q[64 * j + 32 + l] = b >> 4;
            }
        }
        sum += superblock(&q, &w.scales, w.d, w.dmin, a);
    }
    sum
}

fn q5_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (w, a) in w.iter().zip(a) {
        let mut q = [0u8; 256];
        for (j, qs) in w.qs.chunks_exact(32).enumerate() {
            for (l, (&b, &h)) in qs.iter().zip(&w.qh).enumerate() {
                q[64 * j + l] = (b & 0x0f) | (((h >> (2 * j)) & 1) << 4);
                q[64 * j + 32 + l] = (b >> 4) | (((h >> (2 * j + 1)) & 1) << 4);
            }
        }
        sum += superblock(&q, &w.scales, w.d, w.dmin, a);
    }
    sum
}

scalar_entry!(scalar_q4_k, q4_k, BlockQ4K, BlockQ8K);
scalar_entry!(scalar_q5_k, q5_k, BlockQ5K, BlockQ8K);

#[cfg(target_arch = "x86_64")]
pub use avx2::*;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{f16, hsum_epi32_128, hsum_ps, load16, load32};
    use super::super::{avx2_entry, MAX_TOKENS};
    use super::scales_mins;
    use crate::quant::{BlockQ4K, BlockQ5K, BlockQ8K};

    /// The shared loop. `unpack(block, j)` gives the unsigned values of sub-blocks 2j and 2j+1 (32
    /// each); `head(block)` its packed scales, d and dmin.
    #[inline(always)]
    fn dot_rows<W, const N: usize>(
        w: &[W],
        a: &[&[BlockQ8K]; MAX_TOKENS],
        out: &mut [f32],
        unpack: impl Fn(&W, usize) -> (__m256i, __m256i),
        head: impl Fn(&W) -> (&[u8; 12], [u8; 2], [u8; 2]),
    ) {
        // SAFETY (of the intrinsics below): callers are `target_feature(avx2, fma, f16c)` functions.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            let mut acc_min = [0f32; N];
            for (b, wb) in w.iter().enumerate() {
                let (scales, d, dmin) = head(wb);
                let (sc, m) = scales_mins(scales);
                let (d, dmin) = (f16(d), f16(dmin));
                let mut sumi = [_mm256_setzero_si256(); N];
                for j in 0..4 {
                    let (ql, qh) = unpack(wb, j);
                    let sl = _mm256_set1_epi16(sc[2 * j] as i16);
                    let sh = _mm256_set1_epi16(sc[2 * j + 1] as i16);
                    for t in 0..N {
                        let qs = &a[t][b].qs[..];
                        let pl =
                            _mm256_madd_epi16(_mm256_maddubs_epi16(ql, load32(qs, 64 * j)), sl);
                        let ph = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(qh, load32(qs, 64 * j + 32)),
                            sh,
                        );
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
                    }
                }
                let mins = _mm_cvtepu8_epi16(_mm_set_epi64x(0, i64::from_le_bytes(m)));
                for t in 0..N {
                    let ab = &a[t][b];
                    let da = ab.scale();
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d * da),
                        _mm256_cvtepi32_ps(sumi[t]),
                        acc[t],
                    );
                    let bs = &ab.bsums[..];
                    let pairs = _mm_hadd_epi16(load16(bs, 0), load16(bs, 8));
                    acc_min[t] += dmin * da * hsum_epi32_128(_mm_madd_epi16(mins, pairs)) as f32;
                }
            }
            for t in 0..N {
                out[t] = hsum_ps(acc[t]) - acc_min[t];
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_k<const N: usize>(w: &[BlockQ4K], a: &[&[BlockQ8K]; MAX_TOKENS], out: &mut [f32]) {
        let m4 = _mm256_set1_epi8(0x0f);
        let unpack = |b: &BlockQ4K, j: usize| {
            let q = load32(&b.qs[..], 32 * j);
            (
                _mm256_and_si256(q, m4),
                _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
            )
        };
        dot_rows::<_, N>(w, a, out, unpack, |b| (&b.scales, b.d, b.dmin));
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q5_k<const N: usize>(w: &[BlockQ5K], a: &[&[BlockQ8K]; MAX_TOKENS], out: &mut [f32]) {
        let m4 = _mm256_set1_epi8(0x0f);
        let b16 = _mm256_set1_epi8(16);
        let unpack = |b: &BlockQ5K, j: usize| {
            let q = load32(&b.qs[..], 32 * j);
            let h = load32(&b.qh[..], 0);
            // 16 where bit `k` of the qh byte is set.
            let fifth = |k: usize| {
                let m = _mm256_set1_epi8((1u8 << k) as i8);
                _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, m), m), b16)
            };
            (
                _mm256_or_si256(_mm256_and_si256(q, m4), fifth(2 * j)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                    fifth(2 * j + 1),
                ),
            )
        };
        dot_rows::<_, N>(w, a, out, unpack, |b| (&b.scales, b.d, b.dmin));
    }

    avx2_entry!(avx2_q4_k, q4_k, BlockQ4K, BlockQ8K);
    avx2_entry!(avx2_q5_k, q5_k, BlockQ5K, BlockQ8K);
}
