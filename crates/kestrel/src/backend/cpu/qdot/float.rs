//! F32, F16 and BF16 weights against f32 activations (no activation quantization: the f32 path stays
//! exact f32 up to summation order). Half-precision weights are widened in registers.

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// f32 dot with 8 independent accumulators, `w(i)` giving weight i as f32.
fn dot_with(n: usize, w: impl Fn(usize) -> f32, a: &[u8]) -> f32 {
    assert_eq!(
        a.len(),
        4 * n,
        "activation and weight rows differ in length"
    );
    let mut acc = [0f32; 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc += w(i + k) * f32_at(a, i + k);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in full..n {
        s += w(i) * f32_at(a, i);
    }
    s
}

fn scalar(
    w: &[u8],
    width: usize,
    conv: impl Fn(&[u8], usize) -> f32,
    acts: &[&[u8]],
    out: &mut [f32],
) {
    let n = w.len() / width;
    for (o, a) in out.iter_mut().zip(acts) {
        *o = dot_with(n, |i| conv(w, i), a);
    }
}

pub fn scalar_f32(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
    scalar(w, 4, f32_at, acts, out);
}

pub fn scalar_f16(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
    scalar(
        w,
        2,
        |b, i| half::f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        acts,
        out,
    );
}

pub fn scalar_bf16(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
    scalar(
        w,
        2,
        |b, i| half::bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        acts,
        out,
    );
}

#[cfg(target_arch = "x86_64")]
pub use avx2::*;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{has_avx2, hsum_ps, load16, load_f32x8};
    use super::super::MAX_TOKENS;
    use super::f32_at;

    #[derive(Clone, Copy)]
    enum Kind {
        F32,
        F16,
        Bf16,
    }

    /// 8 weights from element `i` on, widened to f32.
    #[inline(always)]
    fn load_w(kind: Kind, w: &[u8], i: usize) -> __m256 {
        // SAFETY (of the intrinsics): only called from `target_feature(avx2, fma, f16c)` functions.
        unsafe {
            match kind {
                Kind::F32 => load_f32x8(w, 4 * i),
                Kind::F16 => _mm256_cvtph_ps(load16(w, 2 * i)),
                Kind::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(load16(w, 2 * i)),
                    16,
                )),
            }
        }
    }

    fn scalar_w(kind: Kind, w: &[u8], i: usize) -> f32 {
        match kind {
            Kind::F32 => f32_at(w, i),
            Kind::F16 => half::f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
            Kind::Bf16 => half::bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot<const N: usize>(kind: Kind, w: &[u8], n: usize, a: &[&[u8]], out: &mut [f32]) {
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let full = n / 16 * 16;
        for i in (0..full).step_by(16) {
            let (w0, w1) = (load_w(kind, w, i), load_w(kind, w, i + 8));
            for t in 0..N {
                acc[t][0] = _mm256_fmadd_ps(w0, load_f32x8(a[t], 4 * i), acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(w1, load_f32x8(a[t], 4 * i + 32), acc[t][1]);
            }
        }
        for t in 0..N {
            let mut s = hsum_ps(_mm256_add_ps(acc[t][0], acc[t][1]));
            for i in full..n {
                s += scalar_w(kind, w, i) * f32_at(a[t], i);
            }
            out[t] = s;
        }
    }

    fn entry(kind: Kind, width: usize, w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        assert!(has_avx2(), "AVX2 kernel called without AVX2");
        let n = w.len() / width;
        for a in acts {
            assert_eq!(
                a.len(),
                4 * n,
                "activation and weight rows differ in length"
            );
        }
        assert!(out.len() >= acts.len());
        // SAFETY: the CPU features the kernel is compiled for were detected just above.
        unsafe {
            match acts.len() {
                1 => dot::<1>(kind, w, n, acts, out),
                2 => dot::<2>(kind, w, n, acts, out),
                3 => dot::<3>(kind, w, n, acts, out),
                4 => dot::<4>(kind, w, n, acts, out),
                n => panic!("{n} activation rows; a kernel takes 1..={MAX_TOKENS}"),
            }
        }
    }

    pub fn avx2_f32(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        entry(Kind::F32, 4, w, acts, out);
    }
    pub fn avx2_f16(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        entry(Kind::F16, 2, w, acts, out);
    }
    pub fn avx2_bf16(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
        entry(Kind::Bf16, 2, w, acts, out);
    }
}
