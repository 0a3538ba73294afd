//! SwiGLU over the merged gate/up projection.

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_aligned16, expect_len, launch, shape_error, to_i32, Arg};
use crate::compile::SILU_MUL;
use crate::{CudaDevice, Result};

/// `out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]`; `gate_up` is `[tokens, 2 * inter]`,
/// `out` `[tokens, inter]`.
pub fn silu_mul(
    dev: &CudaDevice,
    gate_up: &impl DevicePtr<Bf16>,
    inter: usize,
    out: &mut impl DevicePtrMut<Bf16>,
) -> Result<()> {
    const OP: &str = "silu_mul";
    if inter == 0 || !inter.is_multiple_of(8) || !gate_up.len().is_multiple_of(2 * inter) {
        return Err(shape_error(
            OP,
            format!(
                "intermediate size {inter} must be a non-zero multiple of 8, and gate_up's {} elements a multiple of {}",
                gate_up.len(),
                2 * inter
            ),
        ));
    }
    let tokens = gate_up.len() / (2 * inter);
    expect_len(OP, "out", out.len(), tokens * inter)?;
    if tokens == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (g, _gg) = gate_up.device_ptr(s);
    let (o, _go) = out.device_ptr_mut(s);
    expect_aligned16(OP, "gate_up", g)?;
    expect_aligned16(OP, "out", o)?;
    let chunks = tokens * inter / 8;
    let threads = 256;
    let cfg = LaunchConfig {
        grid_dim: (chunks.div_ceil(threads).min(65_535) as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        &SILU_MUL,
        "silu_mul_bf16",
        cfg,
        &[
            Arg::Ptr(o),
            Arg::Ptr(g),
            Arg::I32(to_i32(OP, "tokens", tokens)?),
            Arg::I32(to_i32(OP, "inter", inter)?),
        ],
    )
}
