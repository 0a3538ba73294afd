//! Kestrel's own 8-bit activation format for the 32-element weight types (Q8_0, Q4_0, Q5_0).
//!
//! It is not ggml's Q8_0: the scale is an f32 (no f16 conversion per block and token in the kernels)
//! and the values are stored offset by 128 as unsigned bytes, `u = q + 128` with `q` in -127..=127, so
//! `vpdpbusd` (u8 × i8) multiplies them directly with signed weights; the kernels subtract
//! `128 · Σw` per weight block, which they compute once per block for all tokens.
//! Quantization rounds to nearest-even like ggml's `quantize_row_q8_0` (`rintf`), and the SIMD
//! quantizer gives exactly the scalar one's bytes.

/// One row of activations as the kernels read it: `qs[i] = q[i] + 128` for all `cols` values (so two
/// blocks are 64 contiguous bytes), then each 32-element block's f32 scale `d` eight times over (one
/// 256-bit vector per block, two blocks per 512-bit vector): `x[i] ≈ d[i / 32] · (qs[i] - 128)`.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [u8],
    /// `8 · cols / 32` f32, little-endian bytes (a `Vec<u8>` need not be 4-aligned).
    pub d: &'a [u8],
}

impl<'a> ActRow<'a> {
    /// The row `row_bytes(cols)` bytes at `row` describe.
    pub fn new(row: &'a [u8]) -> ActRow<'a> {
        let (qs, d) = row.split_at(row.len() / 2);
        ActRow { qs, d }
    }

    /// Block `b`'s scale.
    pub fn scale(&self, b: usize) -> f32 {
        f32::from_le_bytes(self.d[b * 32..][..4].try_into().expect("4 bytes"))
    }

    /// Block `b`'s stored values.
    pub fn block(&self, b: usize) -> &'a [u8; QK] {
        self.qs[b * QK..][..QK].try_into().expect("32 bytes")
    }
}

pub const QK: usize = 32;

/// Bytes one row of `cols` activations takes (`cols` a multiple of 32): per block 32 value bytes and
/// 32 scale bytes.
pub fn row_bytes(cols: usize) -> usize {
    cols / QK * 64
}

fn scale_of(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

fn quantize_scalar(src: &[f32], qs: &mut [u8], ds: &mut [u8]) {
    for ((x, q), dd) in src
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(ds.chunks_exact_mut(32))
    {
        let (d, id) = scale_of(x);
        for c in dd.chunks_exact_mut(4) {
            c.copy_from_slice(&d.to_le_bytes());
        }
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id).round_ties_even() as i32 + 128) as u8;
        }
    }
}

/// Quantizes `src` (a multiple of 32 long) into `dst` (`row_bytes(src.len())` bytes).
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    assert!(
        src.len().is_multiple_of(QK),
        "row length not a multiple of 32"
    );
    assert_eq!(dst.len(), row_bytes(src.len()), "destination size");
    let (qs, ds) = dst.split_at_mut(src.len());
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        // SAFETY: AVX2/FMA/F16C were detected just above.
        unsafe { avx2::quantize(src, qs, ds) };
        return;
    }
    quantize_scalar(src, qs, ds);
}

/// The scalar quantizer, whatever the CPU (tests compare it with the SIMD one).
#[cfg(test)]
pub fn quantize_row_scalar(src: &[f32], dst: &mut [u8]) {
    let (qs, ds) = dst.split_at_mut(src.len());
    quantize_scalar(src, qs, ds);
}

/// Back to f32 (tests).
#[cfg(test)]
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let a = ActRow::new(src);
    for (b, y) in dst.chunks_exact_mut(QK).enumerate() {
        for (y, &q) in y.iter_mut().zip(a.block(b)) {
            *y = a.scale(b) * (q as i32 - 128) as f32;
        }
    }
}

/// ggml's Q8_K of one row (`src.len()` a multiple of 256), byte for byte what
/// `quant::quantize_row(GgmlType::Q8_K, ..)` gives, with SIMD where the CPU has AVX2.
pub fn quantize_row_q8k(src: &[f32], dst: &mut [u8]) -> crate::Result<()> {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() && src.len().is_multiple_of(QK_K) {
        let blocks: &mut [BlockQ8K] = bytemuck::cast_slice_mut(dst);
        assert_eq!(blocks.len(), src.len() / QK_K, "destination size");
        for (x, b) in src.chunks_exact(QK_K).zip(blocks) {
            // SAFETY: AVX2/FMA/F16C were detected just above.
            unsafe { avx2::q8k_block(x.try_into().expect("256 values"), b) };
        }
        return Ok(());
    }
    crate::quant::quantize_row(crate::quant::GgmlType::Q8_K, src, dst)
}

use crate::quant::q8_k::BlockQ8K;
const QK_K: usize = 256;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ8K, QK, QK_K};

    /// One Q8_K block: the value of largest magnitude (the first, on ties) maps to -127, round half
    /// to even, values capped at 127, then the 16 group sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn q8k_block(x: &[f32; QK_K], out: &mut BlockQ8K) {
        let sign = _mm256_set1_ps(-0.0);
        // SAFETY: every load is within `x` (32 vectors of 8); `loadu` has no alignment requirement.
        let ld = |i: usize| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) };
        let mut m = _mm256_setzero_ps();
        for i in 0..QK_K / 8 {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, ld(i)));
        }
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        if amax == 0.0 {
            *out = bytemuck::Zeroable::zeroed();
            return;
        }
        let av = _mm256_set1_ps(amax);
        let mut max = amax;
        for i in 0..QK_K / 8 {
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                _mm256_andnot_ps(sign, ld(i)),
                av,
            ));
            if hit != 0 {
                max = x[8 * i + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        for (j, q) in out.qs.chunks_exact_mut(QK).enumerate() {
            let c = |k: usize| {
                _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(ld(4 * j + k), is)), cap)
            };
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(c(0), c(1)),
                _mm256_packs_epi32(c(2), c(3)),
            );
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: `q` is 32 writable bytes; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), p) };
        }
        for (s, g) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum::<i16>().to_le_bytes();
        }
        out.d = (1.0 / iscale).to_le_bytes();
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn quantize(src: &[f32], qs: &mut [u8], ds: &mut [u8]) {
        let sign = _mm256_set1_ps(-0.0);
        for ((x, q), dd) in src
            .chunks_exact(QK)
            .zip(qs.chunks_exact_mut(QK))
            .zip(ds.chunks_exact_mut(32))
        {
            let x: &[f32; QK] = x.try_into().expect("32 values");
            // SAFETY: `x` is 32 readable f32; `loadu` has no alignment requirement.
            let v = unsafe {
                [
                    _mm256_loadu_ps(x.as_ptr()),
                    _mm256_loadu_ps(x.as_ptr().add(8)),
                    _mm256_loadu_ps(x.as_ptr().add(16)),
                    _mm256_loadu_ps(x.as_ptr().add(24)),
                ]
            };
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            let amax = _mm_cvtss_f32(m);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            // SAFETY: `dd` is 32 writable bytes; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_ps(dd.as_mut_ptr().cast(), _mm256_set1_ps(d)) };
            let idv = _mm256_set1_ps(id);
            // cvtps rounds to nearest-even (the default MXCSR mode), as `rintf` does.
            let i = [
                _mm256_cvtps_epi32(_mm256_mul_ps(v[0], idv)),
                _mm256_cvtps_epi32(_mm256_mul_ps(v[1], idv)),
                _mm256_cvtps_epi32(_mm256_mul_ps(v[2], idv)),
                _mm256_cvtps_epi32(_mm256_mul_ps(v[3], idv)),
            ];
            // packs interleaves 128-bit lanes; the permute puts the 32 bytes back in order.
            let lo = _mm256_packs_epi32(i[0], i[1]);
            let hi = _mm256_packs_epi32(i[2], i[3]);
            let p = _mm256_packs_epi16(lo, hi);
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            let p = _mm256_xor_si256(p, _mm256_set1_epi8(0x80u8 as i8));
            // SAFETY: `q` is 32 writable bytes; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), p) };
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::quant::{quantize_row, GgmlType};

    #[test]
    fn q8k_matches_reference_bytes() {
        let mut rng = super::super::tests::Rng::new(5);
        for cols in [256, 896 / 128 * 256, 4864] {
            let mut x = rng.values(cols);
            x[..256].fill(0.0);
            if cols > 512 {
                x[300] = -3.0;
                x[301] = 3.0;
                x[400] = 3.0;
            }
            let n = GgmlType::Q8_K.row_bytes(cols).unwrap();
            let (mut got, mut want) = (vec![0u8; n], vec![0u8; n]);
            super::quantize_row_q8k(&x, &mut got).unwrap();
            quantize_row(GgmlType::Q8_K, &x, &mut want).unwrap();
            assert_eq!(got, want, "cols {cols}");
        }
    }
}
