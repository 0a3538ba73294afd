//! Decode GEMV over bf16 weights: `y = x W^T (+ bias)`, optionally added into `y` (fused residual).

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_aligned16, expect_len, launch, shape_error, to_i32, Arg};
use crate::compile::GEMV_BF16;
use crate::{CudaDevice, Result};

/// Rows per warp and warps per block; must match `ROWS` in kernels/gemv_bf16.cu.
const ROWS_PER_WARP: usize = 2;
const WARPS_PER_BLOCK: usize = 4;
/// Tokens per launch: the grid's y dimension.
const MAX_TOKENS: usize = 65_535;

/// What to do with the existing contents of `y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    /// `y = bf16(x W^T + bias)`
    Overwrite,
    /// `y = bf16(y + bf16(x W^T + bias))`: o_proj / down_proj with the residual add fused in.
    AddToOutput,
}

/// `y[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n])` with `w` `[out_features, in_features]` (HF's
/// nn.Linear layout), `x` `[tokens, in_features]` and `y` `[tokens, out_features]`.
pub fn gemv_bf16(
    dev: &CudaDevice,
    x: &impl DevicePtr<Bf16>,
    w: &impl DevicePtr<Bf16>,
    bias: Option<&dyn DevicePtr<f32>>,
    in_features: usize,
    y: &mut impl DevicePtrMut<Bf16>,
    mode: Accumulate,
) -> Result<()> {
    const OP: &str = "gemv_bf16";
    if in_features == 0 || !in_features.is_multiple_of(8) {
        return Err(shape_error(
            OP,
            format!("in_features {in_features} must be a non-zero multiple of 8"),
        ));
    }
    if !w.len().is_multiple_of(in_features) || !x.len().is_multiple_of(in_features) {
        return Err(shape_error(
            OP,
            format!(
                "weight ({} elements) and x ({} elements) must be multiples of in_features {in_features}",
                w.len(),
                x.len()
            ),
        ));
    }
    let out_features = w.len() / in_features;
    let tokens = x.len() / in_features;
    expect_len(OP, "y", y.len(), tokens * out_features)?;
    if let Some(b) = bias {
        expect_len(OP, "bias", b.len(), out_features)?;
    }
    if tokens > MAX_TOKENS {
        return Err(shape_error(
            OP,
            format!("{tokens} tokens; a GEMV launch takes at most {MAX_TOKENS}"),
        ));
    }
    if tokens == 0 || out_features == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (xp, _gx) = x.device_ptr(s);
    let (wp, _gw) = w.device_ptr(s);
    let (bp, _gb) = match bias {
        Some(b) => {
            let (p, g) = b.device_ptr(s);
            (p, Some(g))
        }
        None => (0, None),
    };
    let (yp, _gy) = y.device_ptr_mut(s);
    expect_aligned16(OP, "x", xp)?;
    expect_aligned16(OP, "w", wp)?;
    let rows_per_block = ROWS_PER_WARP * WARPS_PER_BLOCK;
    let cfg = LaunchConfig {
        grid_dim: (
            out_features.div_ceil(rows_per_block) as u32,
            tokens as u32,
            1,
        ),
        block_dim: ((32 * WARPS_PER_BLOCK) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        &GEMV_BF16,
        "gemv_bf16",
        cfg,
        &[
            Arg::Ptr(yp),
            Arg::Ptr(xp),
            Arg::Ptr(wp),
            Arg::Ptr(bp),
            Arg::I32(to_i32(OP, "in_features", in_features)?),
            Arg::I32(to_i32(OP, "out_features", out_features)?),
            Arg::I32((mode == Accumulate::AddToOutput) as i32),
        ],
    )
}
