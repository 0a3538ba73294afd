//! AVX2 building blocks shared by the kernels: unaligned loads from block fields, horizontal sums and
//! f16 scales through F16C. Every function here needs AVX2 + FMA + F16C, which the callers' dispatch
//! has checked at run time.

use std::arch::x86_64::*;

/// The features every AVX2 kernel is compiled for.
pub fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// AVX-512 F/BW/VL/VNNI (the 512-bit kernels; `vpdpbusd` on 256 and 512 bits), detected once.
pub fn has_avx512_vnni() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// AVX-VNNI (`vpdpbusd ymm`, VEX).
pub fn has_avx_vnni() -> bool {
    has_avx2() && is_x86_feature_detected!("avxvnni")
}

/// Either form of 256-bit `vpdpbusd`.
pub fn has_vnni() -> bool {
    has_avx512_vnni() || has_avx_vnni()
}

/// 32 bytes from `s[off..off + 32]` (panics when out of range, so the load can never overrun).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn load32<T: bytemuck::Pod>(s: &[T], off: usize) -> __m256i {
    let b: &[u8] = bytemuck::cast_slice(s);
    let b = &b[off * std::mem::size_of::<T>()..][..32];
    // SAFETY: `b` is exactly 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// 16 bytes from `s[off..off + 16]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn load16<T: bytemuck::Pod>(s: &[T], off: usize) -> __m128i {
    let b: &[u8] = bytemuck::cast_slice(s);
    let b = &b[off * std::mem::size_of::<T>()..][..16];
    // SAFETY: `b` is exactly 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// 8 f32 from 32 little-endian bytes at `b[off..off + 32]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn load_f32x8(b: &[u8], off: usize) -> __m256 {
    let b = &b[off..][..32];
    // SAFETY: `b` is exactly 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn f16(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum_epi32_128(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// The i8 × i8 dot of 32 lanes as 8 i32 partial sums (ggml's `mul_sum_i8_pairs`): |x| times y with x's
/// sign moved onto y, since `maddubs` takes one unsigned operand.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// 0xFF in byte j where bit j of `bits` is set (ggml's `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn bytes_from_bits(bits: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// The 32 nibbles of 16 bytes as bytes: low nibbles in lanes 0..16, high nibbles in 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn nibbles16(q: __m128i) -> __m256i {
    let m = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(q, m);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
    _mm256_set_m128i(hi, lo)
}
