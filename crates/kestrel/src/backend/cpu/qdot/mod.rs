//! Integer dot products straight from ggml weight blocks, the way llama.cpp's `vec_dot` kernels work.
//!
//! A matmul quantizes its activations once (Q8_K for K-quant weights, Q8_0 for the 32-element formats)
//! and every weight row is then dotted with them in integers, block by block, with the block scales
//! applied per block in f32: no weight row is ever decoded to f32. Each kernel takes one weight row and
//! up to [`MAX_TOKENS`] activation rows, so prefill unpacks each weight block once per several tokens.
//! Float weights (F32/F16/BF16) take f32 activations and convert in registers; F32 stays exact f32.
//!
//! Every kernel has a scalar version (the reference, and the path on machines without AVX2) and an AVX2
//! one, chosen at run time; the tests in `tests.rs` check both against dequantize-then-f64-dot.

mod float;
mod k_quants;
mod legacy;
mod q6_k;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::quant::GgmlType;

/// Activation rows one kernel call handles at most.
pub const MAX_TOKENS: usize = 4;

/// `out[t] = w · acts[t]` for `t < acts.len() <= MAX_TOKENS`: `w` is one weight row in its file format,
/// each `acts[t]` the same number of elements in the format [`act_type`] names.
pub type RowDot = fn(w: &[u8], acts: &[&[u8]], out: &mut [f32]);

/// The instruction sets a kernel can be written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    Scalar,
    Avx2,
}

impl SimdLevel {
    /// Every level this machine runs, slowest first.
    pub fn available() -> Vec<SimdLevel> {
        let mut v = vec![SimdLevel::Scalar];
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx2() {
            v.push(SimdLevel::Avx2);
        }
        v
    }

    pub fn best() -> SimdLevel {
        *SimdLevel::available().last().unwrap_or(&SimdLevel::Scalar)
    }
}

/// The activation format the kernels for weights of type `w` read; `None` where there is no kernel.
pub fn act_type(w: GgmlType) -> Option<GgmlType> {
    match w {
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Some(GgmlType::Q8_K),
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => Some(GgmlType::Q8_0),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Some(GgmlType::F32),
        _ => None,
    }
}

/// The dot kernel for weights of type `w` at `level`, if there is one.
pub fn kernel(w: GgmlType, level: SimdLevel) -> Option<RowDot> {
    let scalar: RowDot = match w {
        GgmlType::Q8_0 => legacy::scalar_q8_0,
        GgmlType::Q4_0 => legacy::scalar_q4_0,
        GgmlType::Q5_0 => legacy::scalar_q5_0,
        GgmlType::Q4_K => k_quants::scalar_q4_k,
        GgmlType::Q5_K => k_quants::scalar_q5_k,
        GgmlType::Q6_K => q6_k::scalar_q6_k,
        GgmlType::F32 => float::scalar_f32,
        GgmlType::F16 => float::scalar_f16,
        GgmlType::BF16 => float::scalar_bf16,
        _ => return None,
    };
    match level {
        SimdLevel::Scalar => Some(scalar),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 if x86::has_avx2() => Some(match w {
            GgmlType::Q8_0 => legacy::avx2_q8_0,
            GgmlType::Q4_0 => legacy::avx2_q4_0,
            GgmlType::Q5_0 => legacy::avx2_q5_0,
            GgmlType::Q4_K => k_quants::avx2_q4_k,
            GgmlType::Q5_K => k_quants::avx2_q5_k,
            GgmlType::Q6_K => q6_k::avx2_q6_k,
            GgmlType::F32 => float::avx2_f32,
            GgmlType::F16 => float::avx2_f16,
            GgmlType::BF16 => float::avx2_bf16,
            _ => return None,
        }),
        _ => None,
    }
}

/// Builds the safe entry point of a const-generic AVX2 kernel
/// `fn k<const N: usize>(w: &[W], a: &[&[A]; MAX_TOKENS], out: &mut [f32])` over block types with the
/// same number of elements per block: checks lengths and the CPU, then picks `N = acts.len()`.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_entry {
    ($name:ident, $kernel:ident, $w:ty, $a:ty) => {
        pub fn $name(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
            assert!(
                crate::backend::cpu::qdot::x86::has_avx2(),
                "AVX2 kernel called without AVX2"
            );
            let w: &[$w] = bytemuck::cast_slice(w);
            let mut a: [&[$a]; crate::backend::cpu::qdot::MAX_TOKENS] =
                [&[]; crate::backend::cpu::qdot::MAX_TOKENS];
            for (d, s) in a.iter_mut().zip(acts) {
                *d = bytemuck::cast_slice(s);
                assert_eq!(
                    d.len(),
                    w.len(),
                    "activation and weight rows differ in length"
                );
            }
            assert!(out.len() >= acts.len());
            // SAFETY: the CPU features the kernel is compiled for were detected just above.
            unsafe {
                match acts.len() {
                    1 => $kernel::<1>(w, &a, out),
                    2 => $kernel::<2>(w, &a, out),
                    3 => $kernel::<3>(w, &a, out),
                    4 => $kernel::<4>(w, &a, out),
                    n => panic!(
                        "{n} activation rows; a kernel takes 1..={}",
                        crate::backend::cpu::qdot::MAX_TOKENS
                    ),
                }
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2_entry;

/// Builds the scalar entry point from a one-token `fn k(w: &[W], a: &[A]) -> f32`.
macro_rules! scalar_entry {
    ($name:ident, $kernel:ident, $w:ty, $a:ty) => {
        pub fn $name(w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
            let w: &[$w] = bytemuck::cast_slice(w);
            for (o, a) in out.iter_mut().zip(acts) {
                let a: &[$a] = bytemuck::cast_slice(a);
                assert_eq!(
                    a.len(),
                    w.len(),
                    "activation and weight rows differ in length"
                );
                *o = $kernel(w, a);
            }
        }
    };
}
pub(crate) use scalar_entry;
