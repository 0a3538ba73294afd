//! The integer-dot-product decode GEMV (kernels/gemv_dp4a.cu), kept to measure against the
//! dequantizing one ([`super::gemv_quant`]): issue #4 asks for both designs to be timed. Not on the
//! model's path: Q8_0 and Q4_0 only, 1, 2 or 4 tokens, no fused norm, no bias.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::gemv::{auto_k_split, Accumulate, TILED_ROWS, TILED_WARPS};
use super::quant_layout::{QuantFormat, QuantWeights};
use super::{expect_aligned16, launch, shape_error, to_i32, Arg};
use crate::compile::GEMV_DP4A;
use crate::dtype::Bf16;
use crate::{CudaDevice, Result};

/// `y = x · wᵀ` finished as `mode` says, activations quantized to 8 bits inside the kernel.
pub fn gemv_dp4a(
    dev: &CudaDevice,
    w: &QuantWeights,
    x: &impl DevicePtr<Bf16>,
    y: &mut impl DevicePtrMut<Bf16>,
    mode: Accumulate,
) -> Result<()> {
    const OP: &str = "gemv_dp4a";
    let k = w.in_features;
    let tokens = x.len() / k.max(1);
    let name = match (w.format, tokens) {
        (QuantFormat::Q8_0, 1) => "gemv_q8_0_dp4a_t1",
        (QuantFormat::Q8_0, 2) => "gemv_q8_0_dp4a_t2",
        (QuantFormat::Q8_0, 4) => "gemv_q8_0_dp4a_t4",
        (QuantFormat::Q4_0, 1) => "gemv_q4_0_dp4a_t1",
        (QuantFormat::Q4_0, 2) => "gemv_q4_0_dp4a_t2",
        (QuantFormat::Q4_0, 4) => "gemv_q4_0_dp4a_t4",
        _ => {
            return Err(shape_error(
                OP,
                format!("{:?} at {tokens} tokens has no dp4a kernel", w.format),
            ))
        }
    };
    let out_rows = if mode == Accumulate::SwiGlu {
        w.rows / 2
    } else {
        w.rows
    };
    let smem = tokens * k + tokens * k / 32 * 8;
    if x.len() != tokens * k || y.len() != tokens * out_rows || smem > 48 * 1024 {
        return Err(shape_error(
            OP,
            format!(
                "x {} / y {} elements for {tokens} x {k} -> {out_rows}",
                x.len(),
                y.len()
            ),
        ));
    }
    let s = dev.stream();
    let (xp, _gx) = x.device_ptr(s);
    let (planes, _gw) = w.pointers(s);
    let (yp, _gy) = y.device_ptr_mut(s);
    expect_aligned16(OP, "x", xp)?;
    let k_split = auto_k_split(w.rows, k / w.format.weights_per_chunk() * 8);
    let per_group = if mode == Accumulate::SwiGlu {
        1
    } else {
        TILED_ROWS
    };
    let cfg = LaunchConfig {
        grid_dim: (
            out_rows.div_ceil(per_group * TILED_WARPS / k_split) as u32,
            1,
            1,
        ),
        block_dim: ((32 * TILED_WARPS) as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let args = [
        Arg::Ptr(yp),
        Arg::Ptr(xp),
        Arg::Ptr(planes[0]),
        Arg::Ptr(planes[1]),
        Arg::Ptr(0),
        Arg::I32(to_i32(OP, "in_features", k)?),
        Arg::I32(to_i32(OP, "rows", out_rows)?),
        Arg::I32(mode.kernel_mode()),
        Arg::I32(k_split as i32),
    ];
    launch(dev, &GEMV_DP4A, name, cfg, &args)
}
