//! Element-wise epilogue of the prefill matmuls: the bias add (from the GEMM's f32 output). The
//! residual add is cuBLAS's beta = 1 (ops::gemm::gemm_bf16_accumulate).

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_len, launch, shape_error, to_i32, Arg};
use crate::compile::ELEMENTWISE;
use crate::{CudaDevice, Result};

fn grid_stride(n: usize) -> LaunchConfig {
    const THREADS: usize = 256;
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `out[t, n] = bf16(acc[t, n] + bias[n])` with `acc` and `out` `[tokens, bias.len()]`.
pub fn bias_add(
    dev: &CudaDevice,
    acc: &impl DevicePtr<f32>,
    bias: &impl DevicePtr<f32>,
    out: &mut impl DevicePtrMut<Bf16>,
) -> Result<()> {
    const OP: &str = "bias_add";
    let cols = bias.len();
    if cols == 0 || !acc.len().is_multiple_of(cols) {
        return Err(shape_error(
            OP,
            format!(
                "bias length {cols} must be non-zero and divide the input's {} elements",
                acc.len()
            ),
        ));
    }
    expect_len(OP, "out", out.len(), acc.len())?;
    let rows = acc.len() / cols;
    if rows == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (a, _ga) = acc.device_ptr(s);
    let (b, _gb) = bias.device_ptr(s);
    let (o, _go) = out.device_ptr_mut(s);
    launch(
        dev,
        &ELEMENTWISE,
        "bias_add_bf16",
        grid_stride(acc.len()),
        &[
            Arg::Ptr(o),
            Arg::Ptr(a),
            Arg::Ptr(b),
            Arg::I32(to_i32(OP, "rows", rows)?),
            Arg::I32(to_i32(OP, "cols", cols)?),
        ],
    )
}
