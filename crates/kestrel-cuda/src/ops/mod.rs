//! Launch wrappers, one file per kernel family. Each checks lengths, divisibility and alignment on the
//! host before launching, so the kernels themselves check nothing. Buffers are any cudarc device
//! memory (`CudaSlice`, `CudaView`, `CudaViewMut`); shapes are implied by lengths where they can be.

pub mod argmax;
pub mod attention;
pub mod dequant;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod gemm_lt;
pub mod gemv;
pub mod gemv_dp4a;
pub mod gemv_mma;
pub mod gemv_quant;
pub mod norm;
pub mod qk_norm_rope_kv;
pub mod quant_layout;
pub mod quant_repack;
pub mod sampling;
pub mod silu_mul;

use cudarc::driver::{sys::CUdeviceptr, LaunchConfig, PushKernelArg};

use crate::compile::Kernel;
use crate::{CudaDevice, CudaError, Result};

/// Lets kernel `name` launch with up to `cap` bytes of dynamic shared memory, past the 48 KB a block gets
/// without opting in. Call it with the same cap for a kernel every time: threads sharing the function
/// then never lower it under each other's launch.
pub(crate) fn allow_dynamic_smem(
    dev: &CudaDevice,
    kernel: &Kernel,
    name: &'static str,
    cap: usize,
) -> Result<()> {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    dev.function(kernel, name)?
        .set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cap as i32)
        .map_err(|source| CudaError::Launch {
            kernel: name,
            source,
        })
}

/// A kernel argument, by value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    Ptr(CUdeviceptr),
    I32(i32),
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
    if dev.pdl() {
        // SAFETY: as below.
        unsafe { launch_pdl(dev, &f, cfg, args) }.map_err(|source| CudaError::Launch {
            kernel: name,
            source,
        })?;
        dev.count_launch();
        return Ok(());
    }
    let mut b = dev.stream().launch_builder(&f);
    for a in args {
        match a {
            Arg::Ptr(p) => b.arg(p),
            Arg::I32(v) => b.arg(v),
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

/// Launches with programmatic stream serialization (PDL, sm_90+): the kernel may start while the one
/// before it on the stream still runs, and waits for it with `pdl_wait()` (kernels/common.cuh) before
/// touching its outputs. Every kernel of this crate does; CUDA graphs captured from the stream keep
/// these programmatic edges.
///
/// # Safety
/// `args` must match the kernel's signature, and its buffers its contract.
unsafe fn launch_pdl(
    dev: &CudaDevice,
    f: &cudarc::driver::CudaFunction,
    cfg: LaunchConfig,
    args: &[Arg],
) -> std::result::Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    // the argument values, each in an 8-byte cell whose address the driver reads
    let mut cells: Vec<u64> = args
        .iter()
        .map(|a| match *a {
            Arg::Ptr(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::U32(v) => v as u64,
            Arg::F32(v) => v.to_bits() as u64,
        })
        .collect();
    let mut params: Vec<*mut std::ffi::c_void> = cells
        .iter_mut()
        .map(|c| c as *mut u64 as *mut std::ffi::c_void)
        .collect();
    let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: dev.stream().cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // Little-endian: a 4-byte argument is read from the low half of its cell.
    sys::cuLaunchKernelEx(
        &config,
        f.cu_function(),
        params.as_mut_ptr(),
        std::ptr::null_mut(),
    )
    .result()
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

/// Rows of a logits buffer of `len` elements with rows of `cols`, refusing lengths that don't divide.
pub(crate) fn logits_rows(op: &'static str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(shape_error(
            op,
            format!("row length {cols} must be non-zero and divide the logits' {len} elements"),
        ));
    }
    Ok(len / cols)
}

/// Converts a size to the kernel's `int`, refusing sizes that don't fit.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape_error(op, format!("{what} = {v} exceeds i32")))
}

/// Threads for a block that walks a row of `chunks` 16-byte chunks: a multiple of 32, at most 1024.
pub(crate) fn row_threads(chunks: usize) -> u32 {
    (chunks.div_ceil(32) * 32).clamp(32, 1024) as u32
}
