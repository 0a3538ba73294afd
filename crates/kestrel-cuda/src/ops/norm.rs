//! RMSNorm and the fused residual add + RMSNorm, rounding where HF's bf16 Qwen3RMSNorm does.

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_aligned16, expect_len, launch, row_threads, shape_error, to_i32, Arg};
use crate::compile::RMS_NORM;
use crate::{CudaDevice, Result};

fn check_rows(op: &'static str, x_len: usize, hidden: usize) -> Result<usize> {
    if hidden == 0 || !hidden.is_multiple_of(8) || !x_len.is_multiple_of(hidden) {
        return Err(shape_error(
            op,
            format!("hidden size {hidden} (the weight's length) must be a non-zero multiple of 8 dividing the input's {x_len} elements"),
        ));
    }
    Ok(x_len / hidden)
}

fn config(op: &'static str, rows: usize, hidden: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (to_i32(op, "rows", rows)? as u32, 1, 1),
        block_dim: (row_threads(hidden / 8), 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `out = rms_norm(x) * weight` row by row; `x` and `out` are `[rows, hidden]`, `weight` `[hidden]`.
pub fn rms_norm(
    dev: &CudaDevice,
    x: &impl DevicePtr<Bf16>,
    weight: &impl DevicePtr<f32>,
    eps: f32,
    out: &mut impl DevicePtrMut<Bf16>,
) -> Result<()> {
    const OP: &str = "rms_norm";
    let hidden = weight.len();
    let rows = check_rows(OP, x.len(), hidden)?;
    expect_len(OP, "out", out.len(), x.len())?;
    if rows == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (xp, _gx) = x.device_ptr(s);
    let (wp, _gw) = weight.device_ptr(s);
    let (o, _go) = out.device_ptr_mut(s);
    for (what, p) in [("x", xp), ("weight", wp), ("out", o)] {
        expect_aligned16(OP, what, p)?;
    }
    launch(
        dev,
        &RMS_NORM,
        "rms_norm_bf16",
        config(OP, rows, hidden)?,
        &[
            Arg::Ptr(o),
            Arg::Ptr(xp),
            Arg::Ptr(wp),
            Arg::F32(eps),
            Arg::I32(to_i32(OP, "hidden", hidden)?),
        ],
    )
}

/// `residual = bf16(residual + x); out = rms_norm(residual) * weight`, the decoder layer's fused
/// add + norm with the residual carried in place. All activations are `[rows, hidden]`.
pub fn add_rms_norm(
    dev: &CudaDevice,
    residual: &mut impl DevicePtrMut<Bf16>,
    x: &impl DevicePtr<Bf16>,
    weight: &impl DevicePtr<f32>,
    eps: f32,
    out: &mut impl DevicePtrMut<Bf16>,
) -> Result<()> {
    const OP: &str = "add_rms_norm";
    let hidden = weight.len();
    let rows = check_rows(OP, x.len(), hidden)?;
    expect_len(OP, "residual", residual.len(), x.len())?;
    expect_len(OP, "out", out.len(), x.len())?;
    if rows == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (xp, _gx) = x.device_ptr(s);
    let (wp, _gw) = weight.device_ptr(s);
    let (rp, _gr) = residual.device_ptr_mut(s);
    let (o, _go) = out.device_ptr_mut(s);
    for (what, p) in [("x", xp), ("weight", wp), ("residual", rp), ("out", o)] {
        expect_aligned16(OP, what, p)?;
    }
    launch(
        dev,
        &RMS_NORM,
        "add_rms_norm_bf16",
        config(OP, rows, hidden)?,
        &[
            Arg::Ptr(o),
            Arg::Ptr(rp),
            Arg::Ptr(xp),
            Arg::Ptr(wp),
            Arg::F32(eps),
            Arg::I32(to_i32(OP, "hidden", hidden)?),
        ],
    )
}
