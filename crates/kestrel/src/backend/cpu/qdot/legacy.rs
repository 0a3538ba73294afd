//! Q8_0, Q4_0 and Q5_0 weights (32-element blocks, one f16 scale) against [`ActRow`] activations
//! (f32 scales, values stored as `q + 128`): per block an i32 dot of the signed 8-bit weight values with
//! the activation values, times both scales.
//!
//! With VNNI, `vpdpbusd` multiplies the unsigned stored activation bytes by the signed weights and the
//! offset is taken off per weight block as `128 · Σw`, computed once per block for every token: the
//! accumulator starts at `-128 · Σw`, so the offset costs nothing per token. With AVX-512 VNNI two
//! blocks go through one 512-bit vector.

use super::act_quant::ActRow;

/// Activation rows these kernels take per call (the 512-bit ones in one pass, the others four at a
/// time).
pub const MAX_TOKENS: usize = 8;
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

/// Checks a weight row of `nb` blocks against the activation rows and splits them.
fn act_rows<'a>(nb: usize, acts: &[&'a [u8]], out: &[f32]) -> [ActRow<'a>; MAX_TOKENS] {
    assert!(acts.len() <= MAX_TOKENS && out.len() >= acts.len());
    let mut rows = [ActRow { qs: &[], d: &[] }; MAX_TOKENS];
    for (r, a) in rows.iter_mut().zip(acts) {
        assert_eq!(
            a.len(),
            nb * 64,
            "activation and weight rows differ in length"
        );
        *r = ActRow::new(a);
    }
    rows
}

/// The scalar reference: unpack each block to i8, i32 dot, scale in f32.
fn dot_blocks<W>(w: &[W], a: ActRow, unpack: fn(&W) -> [i8; 32], d: fn(&W) -> [u8; 2]) -> f32 {
    let mut sum = 0f32;
    for (b, w) in w.iter().enumerate() {
        let q = unpack(w);
        let sumi: i32 = q
            .iter()
            .zip(a.block(b))
            .map(|(&x, &y)| x as i32 * (y as i32 - 128))
            .sum();
        sum += f16_to_f32(d(w)) * (sumi as f32 * a.scale(b));
    }
    sum
}

macro_rules! scalar_kernel {
    ($name:ident, $w:ty, $unpack:ident) => {
        pub fn $name(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
            let w: &[$w] = bytemuck::cast_slice(w);
            let rows = act_rows(w.len(), acts, out);
            for (o, a) in out.iter_mut().zip(&rows[..acts.len()]) {
                *o = dot_blocks(w, *a, $unpack, |b| b.d);
            }
        }
    };
}

scalar_kernel!(scalar_q8_0, BlockQ8_0, q8_0_block);
scalar_kernel!(scalar_q4_0, BlockQ4_0, q4_0_block);
scalar_kernel!(scalar_q5_0, BlockQ5_0, q5_0_block);

#[cfg(target_arch = "x86_64")]
pub use avx2::*;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::act_quant::ActRow;
    use super::super::x86::{bytes_from_bits, dot_i8, f16, hsum_ps, load16, load32, nibbles16};
    use super::{act_rows, MAX_TOKENS};
    use crate::quant::{BlockQ4_0, BlockQ5_0, BlockQ8_0};

    /// Block `b`'s 8 copies of its scale.
    #[inline(always)]
    fn scale8(a: &ActRow, b: usize) -> __m256 {
        let d = &a.d[b * 32..][..32];
        // SAFETY: `d` is 32 readable bytes; `loadu` has no alignment requirement (callers have AVX).
        unsafe { _mm256_loadu_ps(d.as_ptr().cast()) }
    }

    /// The 256-bit loop: `unpack` gives a weight block's 32 signed values and `prep` what the
    /// per-token `dot` needs of them (for VNNI the block's `-128 · Σw`); `dot` gives 8 i32 partial
    /// sums of the block's true dot with one token's stored bytes. Per token one multiply and one FMA
    /// of the scales into an f32 accumulator; two blocks per step keep two FMA chains going.
    #[inline(always)]
    fn dot_rows<W, const N: usize>(
        w: &[W],
        a: &[ActRow; MAX_TOKENS],
        out: &mut [f32],
        unpack: impl Fn(&W) -> __m256i,
        d: impl Fn(&W) -> [u8; 2],
        prep: impl Fn(__m256i) -> __m256i,
        dot: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
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
                    let c = prep(q);
                    let dw = _mm256_set1_ps(f16(d(wb)));
                    for t in 0..N {
                        let p = _mm256_cvtepi32_ps(dot(q, c, load32(a[t].qs, b * 32)));
                        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(p, dw), scale8(&a[t], b), acc[t]);
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
                out[t] = hsum_ps(_mm256_add_ps(acc[0][t], acc[1][t]));
            }
        }
    }

    /// The 512-bit loop (AVX-512 VNNI): two blocks per vector, `vpdpbusd` of the stored bytes with the
    /// signed weights starting from `-128 · Σw`; the odd last block, if any, takes 256-bit steps.
    #[inline(always)]
    fn dot_rows_512<W, const N: usize>(
        w: &[W],
        a: &[ActRow; MAX_TOKENS],
        out: &mut [f32],
        unpack: impl Fn(&W) -> __m256i,
        unpack2: impl Fn(&W, &W) -> __m512i,
        d: impl Fn(&W) -> [u8; 2],
    ) {
        // SAFETY (of the intrinsics below): callers are `target_feature(avx512f, avx512vl,
        // avx512vnni, avx2, fma, f16c)` functions; every load is from a slice checked to hold it.
        unsafe {
            let m = _mm512_set1_epi8(0x80u8 as i8);
            let z = _mm512_setzero_si512();
            let mut acc = [_mm512_setzero_ps(); N];
            // Each token's row as one pointer: values at `base`, scales `half` bytes on (no bounds
            // checks and few registers in the loop).
            let half = w.len() * 32;
            let mut base = [std::ptr::null::<u8>(); N];
            for t in 0..N {
                assert!(a[t].qs.len() == half && a[t].d.len() == half);
                assert!(std::ptr::eq(
                    a[t].d.as_ptr(),
                    a[t].qs.as_ptr().wrapping_add(half)
                ));
                base[t] = a[t].qs.as_ptr();
            }
            for p in 0..w.len() / 2 {
                let (w0, w1) = (&w[2 * p], &w[2 * p + 1]);
                let q = unpack2(w0, w1);
                let c = _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, m, q));
                // Both f16 scales, eight copies each, in one conversion.
                let h = _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_set1_epi16(i16::from_le_bytes(d(w0)))),
                    _mm_set1_epi16(i16::from_le_bytes(d(w1))),
                    1,
                );
                let dw = _mm512_cvtph_ps(h);
                for t in 0..N {
                    // In bounds: p * 64 + 64 <= nb * 32 for both halves of the row (checked above).
                    let y = base[t].add(p * 64);
                    let s = _mm512_loadu_ps(y.add(half).cast());
                    let v = _mm512_dpbusd_epi32(c, _mm512_loadu_si512(y.cast()), q);
                    acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), dw), s, acc[t]);
                }
            }
            let mut tail = [_mm256_setzero_ps(); N];
            if w.len() % 2 == 1 {
                let b = w.len() - 1;
                let q = unpack(&w[b]);
                let (m, z) = (_mm256_set1_epi8(0x80u8 as i8), _mm256_setzero_si256());
                let c = _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, m, q));
                let dw = _mm256_set1_ps(f16(d(&w[b])));
                for t in 0..N {
                    let v = _mm256_dpbusd_epi32(c, load32(a[t].qs, b * 32), q);
                    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(v), dw);
                    tail[t] = _mm256_mul_ps(v, scale8(&a[t], b));
                }
            }
            for t in 0..N {
                out[t] = _mm512_reduce_add_ps(acc[t]) + hsum_ps(tail[t]);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn unpack_q8_0(b: &BlockQ8_0) -> __m256i {
        load32(&b.qs, 0)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn unpack_q4_0(b: &BlockQ4_0) -> __m256i {
        _mm256_sub_epi8(nibbles16(load16(&b.qs, 0)), _mm256_set1_epi8(8))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn unpack_q5_0(b: &BlockQ5_0) -> __m256i {
        // A clear fifth bit makes the byte `nibble | 0xF0`, i.e. nibble - 16 as i8; a set one leaves
        // the nibble: (q | h << 4) - 16 either way.
        let hi = _mm256_andnot_si256(
            bytes_from_bits(u32::from_le_bytes(b.qh)),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        _mm256_or_si256(nibbles16(load16(&b.qs, 0)), hi)
    }

    /// Two blocks' 32-byte halves, `lo` from the first block, `hi` from the second.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    fn join(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }

    /// The 64 nibbles of two blocks' 16 bytes each, in element order (low nibbles, then high, per
    /// block).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    fn nibbles2(q0: &[u8; 16], q1: &[u8; 16]) -> __m512i {
        let v = _mm256_set_m128i(load16(q1, 0), load16(q0, 0));
        let m = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(v, m);
        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        // [lo0, lo1, hi0, hi1] -> [lo0, hi0, lo1, hi1]
        _mm512_shuffle_i64x2(join(lo, hi), join(lo, hi), 0b11_01_10_00)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    fn unpack2_q8_0(b0: &BlockQ8_0, b1: &BlockQ8_0) -> __m512i {
        join(load32(&b0.qs, 0), load32(&b1.qs, 0))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    fn unpack2_q4_0(b0: &BlockQ4_0, b1: &BlockQ4_0) -> __m512i {
        _mm512_sub_epi8(nibbles2(&b0.qs, &b1.qs), _mm512_set1_epi8(8))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    fn unpack2_q5_0(b0: &BlockQ5_0, b1: &BlockQ5_0) -> __m512i {
        // As `unpack_q5_0`: 0xF0 over the nibble where the fifth bit is clear.
        let bits = u32::from_le_bytes(b0.qh) as u64 | (u32::from_le_bytes(b1.qh) as u64) << 32;
        let hi = _mm512_maskz_mov_epi8(!bits, _mm512_set1_epi8(0xF0u8 as i8));
        _mm512_or_si512(nibbles2(&b0.qs, &b1.qs), hi)
    }

    /// The safe entry point of one type's kernels: checks lengths and the CPU, then picks the widest
    /// kernel the CPU runs at `level` and `N = acts.len()`.
    macro_rules! entry {
        ($name:ident, $w:ty, $unpack:ident, $unpack2:ident, $avx2:ident, $v512:ident, $vavx:ident) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn $avx2<const N: usize>(w: &[$w], a: &[ActRow; MAX_TOKENS], out: &mut [f32]) {
                // Plain AVX2: the stored bytes back to signed (`^ 0x80`), then `dot_i8`'s sign trick.
                let m = _mm256_set1_epi8(0x80u8 as i8);
                let dot = |q, _, y| dot_i8(q, _mm256_xor_si256(y, m));
                dot_rows::<_, N>(w, a, out, |b| $unpack(b), |b| b.d, |q| q, dot);
            }

            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            fn $v512<const N: usize>(w: &[$w], a: &[ActRow; MAX_TOKENS], out: &mut [f32]) {
                let u2 = |b0: &$w, b1: &$w| $unpack2(b0, b1);
                dot_rows_512::<_, N>(w, a, out, |b| $unpack(b), u2, |b| b.d);
            }

            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            fn $vavx<const N: usize>(w: &[$w], a: &[ActRow; MAX_TOKENS], out: &mut [f32]) {
                // `vpdpbusd` from `-128 · Σw` (itself a `vpdpbusd` of 0x80 bytes, once per block).
                let m = _mm256_set1_epi8(0x80u8 as i8);
                let z = _mm256_setzero_si256();
                let prep = |q| _mm256_sub_epi32(z, _mm256_dpbusd_avx_epi32(z, m, q));
                let dot = |q, c, y| _mm256_dpbusd_avx_epi32(c, y, q);
                dot_rows::<_, N>(w, a, out, |b| $unpack(b), |b| b.d, prep, dot);
            }

            pub fn $name(level: Level, w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
                let w: &[$w] = bytemuck::cast_slice(w);
                let a = act_rows(w.len(), acts, out);
                macro_rules! go {
                    ($k:ident) => {
                        match acts.len() {
                            1 => $k::<1>(w, &a, out),
                            2 => $k::<2>(w, &a, out),
                            3 => $k::<3>(w, &a, out),
                            4 => $k::<4>(w, &a, out),
                            n => panic!("{n} activation rows; a 256-bit kernel takes 1..=4"),
                        }
                    };
                }
                macro_rules! go8 {
                    ($k:ident) => {
                        match acts.len() {
                            1 => $k::<1>(w, &a, out),
                            2 => $k::<2>(w, &a, out),
                            3 => $k::<3>(w, &a, out),
                            4 => $k::<4>(w, &a, out),
                            5 => $k::<5>(w, &a, out),
                            6 => $k::<6>(w, &a, out),
                            7 => $k::<7>(w, &a, out),
                            8 => $k::<8>(w, &a, out),
                            n => panic!("{n} activation rows; a kernel takes 1..={MAX_TOKENS}"),
                        }
                    };
                }
                use super::super::x86;
                let wide = matches!(level, Level::Vnni) && x86::has_avx512_vnni();
                if acts.len() > 4 && !wide {
                    // The 256-bit kernels keep 2 x 4 accumulators in 16 registers: four at a time.
                    let (o0, o1) = out.split_at_mut(4);
                    $name(level, bytemuck::cast_slice(w), &acts[..4], o0);
                    $name(level, bytemuck::cast_slice(w), &acts[4..], o1);
                    return;
                }
                // SAFETY (each arm): the CPU features its kernel is compiled for were detected.
                match level {
                    Level::Vnni if wide => unsafe { go8!($v512) },
                    Level::Vnni if x86::has_avx_vnni() => unsafe { go!($vavx) },
                    Level::Avx2 if x86::has_avx2() => unsafe { go!($avx2) },
                    Level::AvxVnni if x86::has_avx_vnni() => unsafe { go!($vavx) },
                    _ => panic!("{level:?} kernel called on a CPU without it"),
                }
            }
        };
    }

    /// Which kernels an entry point runs (`Vnni` is the widest the CPU has; `AvxVnni` lets tests run
    /// the 256-bit VNNI form on CPUs that also have AVX-512).
    #[derive(Clone, Copy, Debug)]
    pub enum Level {
        Avx2,
        Vnni,
        #[cfg_attr(not(test), allow(dead_code))]
        AvxVnni,
    }

    entry!(
        q8_0,
        BlockQ8_0,
        unpack_q8_0,
        unpack2_q8_0,
        a2_q8_0,
        z_q8_0,
        v_q8_0
    );
    entry!(
        q4_0,
        BlockQ4_0,
        unpack_q4_0,
        unpack2_q4_0,
        a2_q4_0,
        z_q4_0,
        v_q4_0
    );
    entry!(
        q5_0,
        BlockQ5_0,
        unpack_q5_0,
        unpack2_q5_0,
        a2_q5_0,
        z_q5_0,
        v_q5_0
    );

    pub fn avx2_q8_0(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        q8_0(Level::Avx2, w, acts, out)
    }
    pub fn avx2_q4_0(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        q4_0(Level::Avx2, w, acts, out)
    }
    pub fn avx2_q5_0(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        q5_0(Level::Avx2, w, acts, out)
    }
    pub fn vnni_q8_0(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        q8_0(Level::Vnni, w, acts, out)
    }
    pub fn vnni_q4_0(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        q4_0(Level::Vnni, w, acts, out)
    }
    pub fn vnni_q5_0(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        q5_0(Level::Vnni, w, acts, out)
    }
    /// The 256-bit AVX-VNNI kernels whatever else the CPU has (tests).
    #[cfg(test)]
    pub fn avx_vnni_kernels() -> [(crate::quant::GgmlType, super::super::RowDot); 3] {
        use crate::quant::GgmlType;
        fn k8(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
            q8_0(Level::AvxVnni, w, acts, out)
        }
        fn k4(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
            q4_0(Level::AvxVnni, w, acts, out)
        }
        fn k5(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
            q5_0(Level::AvxVnni, w, acts, out)
        }
        [
            (GgmlType::Q8_0, k8),
            (GgmlType::Q4_0, k4),
            (GgmlType::Q5_0, k5),
        ]
    }
}
