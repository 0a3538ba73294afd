//! Integer dot products straight from ggml weight blocks, the way llama.cpp's `vec_dot` kernels work.
//!
//! A matmul quantizes its activations once (Q8_K for K-quant weights; for the 32-element formats
//! Kestrel's own [`act_quant`] format: f32 scales, values offset to unsigned bytes) and every weight row
//! is then dotted with them in integers, block by block, with the block scales applied per block in
//! f32: no weight row is ever decoded to f32. Each kernel takes one weight row and up to [`max_tokens`]
//! activation rows (4, or 8 for the 32-element formats), so prefill unpacks each weight block once per
//! several tokens. Float weights (F32/F16/BF16) take f32 activations and convert in registers; F32
//! stays exact f32.
//!
//! Every kernel has a scalar version (the reference, and the path on machines without AVX2) and an AVX2
//! one; the 32-element formats also have VNNI ones (512-bit with AVX-512 VNNI, 256-bit with AVX-VNNI),
//! chosen at run time. The tests in `tests.rs` check every level against dequantize-then-f64-dot.

pub mod act_quant;
mod float;
mod k_quants;
mod legacy;
mod q6_k;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::quant::GgmlType;
use crate::Result;

/// Activation rows a kernel call takes at most for most weight types ([`max_tokens`] says per type).
pub const MAX_TOKENS: usize = 4;

/// Activation rows one call of `w`'s kernels takes at most (at least [`MAX_TOKENS`]).
pub fn max_tokens(w: GgmlType) -> usize {
    match w {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => legacy::MAX_TOKENS,
        _ => MAX_TOKENS,
    }
}

/// The most any kernel takes.
pub const MAX_TOKENS_ANY: usize = legacy::MAX_TOKENS;

/// `out[t] = w · acts[t]` for `t < acts.len() <= max_tokens(type)`: `w` is one weight row in its file format,
/// each `acts[t]` the same number of elements in the format [`act_type`] names.
pub type RowDot = fn(w: &[u8], acts: &[&[u8]], out: &mut [f32]);

/// The instruction sets a kernel can be written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    Scalar,
    Avx2,
    /// AVX2 plus 256-bit `vpdpbusd` (AVX-512 VNNI + VL, or AVX-VNNI).
    Vnni,
}

impl SimdLevel {
    /// Every level this machine runs, slowest first.
    pub fn available() -> Vec<SimdLevel> {
        let mut v = vec![SimdLevel::Scalar];
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx2() {
            v.push(SimdLevel::Avx2);
            if x86::has_vnni() {
                v.push(SimdLevel::Vnni);
            }
        }
        v
    }

    pub fn best() -> SimdLevel {
        *SimdLevel::available().last().unwrap_or(&SimdLevel::Scalar)
    }
}

/// The formats kernels read activations in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    /// The f32 values themselves (float weights).
    F32,
    /// ggml's Q8_K (K-quant weights).
    Q8K,
    /// [`act_quant::BlockQ8x`] (Q8_0, Q4_0, Q5_0 weights).
    Q8x,
}

impl ActFormat {
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        match self {
            ActFormat::F32 => Ok(cols * 4),
            ActFormat::Q8K => GgmlType::Q8_K.row_bytes(cols),
            ActFormat::Q8x => GgmlType::Q8_0
                .row_bytes(cols)
                .map(|_| act_quant::row_bytes(cols)),
        }
    }

    /// Quantizes one row of activations into this format (`row_bytes(src.len())` bytes).
    pub fn quantize_row(self, src: &[f32], dst: &mut [u8]) -> Result<()> {
        match self {
            ActFormat::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
            ActFormat::Q8K => act_quant::quantize_row_q8k(src, dst)?,
            ActFormat::Q8x => act_quant::quantize_row(src, dst),
        }
        Ok(())
    }

    /// Back to f32 (tests).
    #[cfg(test)]
    pub fn dequantize_row(self, src: &[u8], dst: &mut [f32]) -> Result<()> {
        match self {
            ActFormat::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
            ActFormat::Q8K => crate::quant::dequantize_row(GgmlType::Q8_K, src, dst)?,
            ActFormat::Q8x => act_quant::dequantize_row(src, dst),
        }
        Ok(())
    }
}

/// The activation format the kernels for weights of type `w` read; `None` where there is no kernel.
pub fn act_type(w: GgmlType) -> Option<ActFormat> {
    match w {
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Some(ActFormat::Q8K),
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => Some(ActFormat::Q8x),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Some(ActFormat::F32),
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
        SimdLevel::Vnni if x86::has_vnni() => match w {
            GgmlType::Q8_0 => Some(legacy::vnni_q8_0),
            GgmlType::Q4_0 => Some(legacy::vnni_q4_0),
            GgmlType::Q5_0 => Some(legacy::vnni_q5_0),
            _ => kernel(w, SimdLevel::Avx2),
        },
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
