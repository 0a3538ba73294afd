//! Prefill matmuls through cuBLAS: bf16 weights and activations, f32 compute (`CUBLAS_COMPUTE_32F`),
//! output bf16 (rounded once, as HF's bf16 nn.Linear) or f32 (for an epilogue that adds a bias first).
//!
//! Row-major `y[t, n] = sum_k x[t, k] w[n, k]` is, in cuBLAS's column-major terms, `yᵀ = w · xᵀ` with
//! `w` read transposed: m = out_features, n = tokens, k = in_features, lda = ldb = k, ldc = m.

use std::ffi::c_void;

use cudarc::cublas::{result, sys, CudaBlas};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};

use super::{expect_len, shape_error, to_i32};
use crate::dtype::Bf16;
use crate::{CudaDevice, CudaError, Result};

/// An output element type of [`gemm_bf16`].
pub trait GemmOutput: DeviceRepr {
    const DATA_TYPE: sys::cudaDataType;
}
impl GemmOutput for Bf16 {
    const DATA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
}
impl GemmOutput for f32 {
    const DATA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
}

/// A cuBLAS handle on the device's stream. Errors (never panics) when libcublas is missing.
pub fn cublas_handle(dev: &CudaDevice) -> Result<CudaBlas> {
    // SAFETY: only opens the library to see that it is there.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::Cublas {
            context: "loading libcublas".into(),
            message: "libcublas.so (CUDA 13) not found on the library path".into(),
        });
    }
    CudaBlas::new(dev.stream().clone()).map_err(|e| CudaError::Cublas {
        context: "creating a handle".into(),
        message: e.to_string(),
    })
}

/// `y = x · wᵀ` with `w` `[out_features, in_features]` (HF's layout), `x` `[tokens, in_features]`,
/// `y` `[tokens, out_features]`. `blas` must be a handle on `dev`'s stream ([`cublas_handle`]).
pub fn gemm_bf16<T: GemmOutput>(
    dev: &CudaDevice,
    blas: &CudaBlas,
    x: &impl DevicePtr<Bf16>,
    w: &impl DevicePtr<Bf16>,
    in_features: usize,
    y: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    gemm_impl(dev, blas, x, w, in_features, y, None, 0.0)
}

/// `y = bf16(y + x · wᵀ)`, the sum taken in f32 and rounded once (cuBLAS's beta = 1): a prefill
/// projection added into the residual stream without a kernel of its own. HF rounds the projection
/// to bf16 before the add; one rounding is closer to its float32 run, which parity measures.
pub fn gemm_bf16_accumulate(
    dev: &CudaDevice,
    blas: &CudaBlas,
    x: &impl DevicePtr<Bf16>,
    w: &impl DevicePtr<Bf16>,
    in_features: usize,
    y: &mut impl DevicePtrMut<Bf16>,
) -> Result<()> {
    gemm_impl(dev, blas, x, w, in_features, y, None, 1.0)
}

/// [`gemm_bf16`] (`accumulate`: [`gemm_bf16_accumulate`]) into columns `first .. first + w's rows` of
/// `y` `[tokens, width]`: a weight multiplied in row tiles (dequantized ones), each into its columns.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_columns<T: GemmOutput>(
    dev: &CudaDevice,
    blas: &CudaBlas,
    x: &impl DevicePtr<Bf16>,
    w: &impl DevicePtr<Bf16>,
    in_features: usize,
    y: &mut impl DevicePtrMut<T>,
    (first, width): (usize, usize),
    accumulate: bool,
) -> Result<()> {
    let beta = if accumulate { 1.0 } else { 0.0 };
    gemm_impl(dev, blas, x, w, in_features, y, Some((first, width)), beta)
}

#[allow(clippy::too_many_arguments)]
fn gemm_impl<T: GemmOutput>(
    dev: &CudaDevice,
    blas: &CudaBlas,
    x: &impl DevicePtr<Bf16>,
    w: &impl DevicePtr<Bf16>,
    in_features: usize,
    y: &mut impl DevicePtrMut<T>,
    columns: Option<(usize, usize)>,
    beta: f32,
) -> Result<()> {
    const OP: &str = "gemm_bf16";
    if in_features == 0 || !w.len().is_multiple_of(in_features) {
        return Err(shape_error(
            OP,
            format!(
                "in_features {in_features} must be non-zero and divide the weight's {} elements",
                w.len()
            ),
        ));
    }
    let out_features = w.len() / in_features;
    if !x.len().is_multiple_of(in_features) {
        return Err(shape_error(
            OP,
            format!(
                "x has {} elements, not a multiple of {in_features}",
                x.len()
            ),
        ));
    }
    let tokens = x.len() / in_features;
    let (first, width) = columns.unwrap_or((0, out_features));
    if first + out_features > width {
        return Err(shape_error(
            OP,
            format!(
                "columns {first}..{} of rows of {width}",
                first + out_features
            ),
        ));
    }
    expect_len(OP, "y", y.len(), tokens * width)?;
    if tokens == 0 || out_features == 0 {
        return Ok(());
    }
    let (m, n, k, ldc) = (
        to_i32(OP, "out_features", out_features)?,
        to_i32(OP, "tokens", tokens)?,
        to_i32(OP, "in_features", in_features)?,
        to_i32(OP, "y width", width)?,
    );
    dev.context()
        .bind_to_thread()
        .map_err(CudaError::driver("binding the context for cuBLAS"))?;
    let s = dev.stream();
    let (wp, _gw) = w.device_ptr(s);
    let (xp, _gx) = x.device_ptr(s);
    let (yp, _gy) = y.device_ptr_mut(s);
    let yp = yp + (first * std::mem::size_of::<T>()) as u64;
    let alpha = 1.0f32;
    // SAFETY: the lengths checked above bound every access cuBLAS makes (m*k, k*n elements, and n
    // columns of ldc from `first`, first + m <= ldc);
    // alpha and beta are f32 as CUBLAS_COMPUTE_32F requires; the handle runs on the buffers' stream.
    unsafe {
        result::gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            (&alpha as *const f32).cast::<c_void>(),
            wp as *const c_void,
            sys::cudaDataType::CUDA_R_16BF,
            k,
            xp as *const c_void,
            sys::cudaDataType::CUDA_R_16BF,
            k,
            (&beta as *const f32).cast::<c_void>(),
            yp as *mut c_void,
            T::DATA_TYPE,
            ldc,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| CudaError::Cublas {
        context: format!("{OP} ({tokens} x {in_features} by {out_features} x {in_features})"),
        message: e.to_string(),
    })?;
    dev.count_launch(); // one or more cuBLAS kernels, counted as one
    Ok(())
}
