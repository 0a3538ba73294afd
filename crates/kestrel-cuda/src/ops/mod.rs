//! Launch wrappers, one file per kernel family. Each checks lengths, divisibility and alignment on the
//! host before launching, so the kernels themselves check nothing. Buffers are any cudarc device
//! memory (`CudaSlice`, `CudaView`, `CudaViewMut`); shapes are implied by lengths where they can be.

pub mod argmax;
pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod gemv;
pub mod norm;
pub mod qk_norm_rope_kv;
pub mod silu_mul;

use cudarc::driver::{sys::CUdeviceptr, LaunchConfig, PushKernelArg};

use crate::compile::Kernel;
use crate::{CudaDevice, CudaError, Result};

/// A kernel argument, by value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    Ptr(CUdeviceptr),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
}

pub(crate) fn launch(
    dev: &CudaDevice,
    kernel: &Kernel,
    name: &'static str,
    cfg: LaunchConfig,
    args: &[Arg],
) -> Result<()> {
    let f = dev.function(kernel, name)?;
    let mut b = dev.stream().launch_builder(&f);
    for a in args {
        match a {
            Arg::Ptr(p) => b.arg(p),
            Arg::I32(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::U32(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
        };
    }
    // SAFETY: the wrapper calling this checked every buffer's length and alignment against the
    // kernel's documented contract, and the argument list matches the kernel's signature.
    unsafe { b.launch(cfg) }.map_err(|source| CudaError::Launch {
        kernel: name,
        source,
    })?;
    dev.count_launch();
    Ok(())
}

pub(crate) fn shape_error(op: &'static str, message: impl Into<String>) -> CudaError {
    CudaError::Shape {
        op,
        message: message.into(),
    }
}

pub(crate) fn expect_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(shape_error(
            op,
            format!("{what} has {got} elements, expected {want}"),
        ))
    }
}

/// 16-byte vector loads need 16-byte aligned addresses (views at odd offsets are refused).
pub(crate) fn expect_aligned16(op: &'static str, what: &str, ptr: CUdeviceptr) -> Result<()> {
    if ptr.is_multiple_of(16) {
        Ok(())
    } else {
        Err(shape_error(
            op,
            format!("{what} at device address {ptr:#x} is not 16-byte aligned"),
        ))
    }
}

/// Converts a size to the kernel's `int`, refusing sizes that don't fit.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape_error(op, format!("{what} = {v} exceeds i32")))
}

/// Threads for a block that walks a row of `chunks` 16-byte chunks: a multiple of 32, at most 1024.
pub(crate) fn row_threads(chunks: usize) -> u32 {
    (chunks.div_ceil(32) * 32).clamp(32, 1024) as u32
}
