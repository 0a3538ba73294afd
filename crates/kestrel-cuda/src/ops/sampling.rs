//! Sampling on the GPU (kernels/sampling.cu): one token per row of bf16 logits under each row's own
//! temperature / top-k / top-p / min-p and uniform draw, so only token ids cross to the host.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_len, launch, logits_rows, shape_error, to_i32, Arg};
use crate::compile::SAMPLING;
use crate::dtype::Bf16;
use crate::{CudaDevice, Result};

/// What the kernel writes for a row it leaves to the host (no finite logit, a greedy row with +inf,
/// `l / T` overflowing, or a row too flat for its sorted prefix to decide the token).
pub const NO_TOKEN: u32 = u32::MAX;

/// Words per row of the kernel's `RowParams`: temperature, top_k (i32), top_p, min_p, u.
pub const PARAM_WORDS: usize = 5;

/// One row's `RowParams` as the kernel reads them (f32 bits and an i32 top_k).
pub fn pack_params(temperature: f32, top_k: usize, top_p: f32, min_p: f32, u: f32) -> [u32; 5] {
    [
        temperature.to_bits(),
        top_k.min(i32::MAX as usize) as u32,
        top_p.to_bits(),
        min_p.to_bits(),
        u.to_bits(),
    ]
}

/// `out[r]` = the token row `r` of `logits` (`[out.len(), cols]`) gives under `params[r]`
/// ([`pack_params`]), or [`NO_TOKEN`].
pub fn sample(
    dev: &CudaDevice,
    logits: &impl DevicePtr<Bf16>,
    cols: usize,
    params: &impl DevicePtr<u32>,
    out: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    const OP: &str = "sample";
    let rows = logits_rows(OP, logits.len(), cols)?;
    expect_len(OP, "out", out.len(), rows)?;
    expect_len(OP, "params", params.len(), rows * PARAM_WORDS)?;
    if rows == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (l, _gl) = logits.device_ptr(s);
    let (p, _gp) = params.device_ptr(s);
    let (o, _go) = out.device_ptr_mut(s);
    if cols.is_multiple_of(8) {
        super::expect_aligned16(OP, "logits", l)?;
    }
    if p % 4 != 0 {
        return Err(shape_error(OP, "params are not 4-byte aligned"));
    }
    let cfg = LaunchConfig {
        grid_dim: (to_i32(OP, "rows", rows)? as u32, 1, 1),
        block_dim: (1024, 1, 1), // the kernel's THREADS
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        &SAMPLING,
        "sample_bf16",
        cfg,
        &[
            Arg::Ptr(o),
            Arg::Ptr(l),
            Arg::Ptr(p),
            Arg::I32(to_i32(OP, "cols", cols)?),
        ],
    )
}
