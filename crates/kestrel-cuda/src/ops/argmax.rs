//! Greedy sampling on the GPU: the argmax of each row of bf16 logits, so only token ids cross to the host.

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_len, launch, logits_rows, to_i32, Arg};
use crate::compile::ARGMAX;
use crate::{CudaDevice, Result};

/// `out[r] = argmax(logits[r, :])` (ties to the lowest index, NaN never wins) with `logits`
/// `[out.len(), cols]`.
pub fn argmax(
    dev: &CudaDevice,
    logits: &impl DevicePtr<Bf16>,
    cols: usize,
    out: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    const OP: &str = "argmax";
    let rows = logits_rows(OP, logits.len(), cols)?;
    expect_len(OP, "out", out.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (l, _gl) = logits.device_ptr(s);
    let (o, _go) = out.device_ptr_mut(s);
    if cols.is_multiple_of(8) {
        // the kernel's 16-byte loads
        super::expect_aligned16(OP, "logits", l)?;
    }
    let cfg = LaunchConfig {
        grid_dim: (to_i32(OP, "rows", rows)? as u32, 1, 1),
        block_dim: (cols.next_power_of_two().clamp(32, 1024) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        &ARGMAX,
        "argmax_bf16",
        cfg,
        &[
            Arg::Ptr(o),
            Arg::Ptr(l),
            Arg::I32(to_i32(OP, "cols", cols)?),
        ],
    )
}

/// Marks an input id of [`feed_decode_inputs`] as row `row` of the previous step's output.
pub const FED_FROM_PREVIOUS: u32 = 0x8000_0000;

/// `ids[i] = prev[ids[i] & !FED_FROM_PREVIOUS]` where `ids[i]` has [`FED_FROM_PREVIOUS`] set, for
/// `i < n` (asynchronous scheduling: a decode step's inputs are the previous step's tokens, which
/// the host has not read yet). Rows named must be below `prev.len()`.
pub fn feed_decode_inputs(
    dev: &CudaDevice,
    ids: &mut impl DevicePtrMut<u32>,
    prev: &impl DevicePtr<u32>,
    n: usize,
) -> Result<()> {
    const OP: &str = "feed_decode_inputs";
    if n > ids.len() {
        return Err(super::shape_error(
            OP,
            format!("{n} inputs in a buffer of {}", ids.len()),
        ));
    }
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (i, _gi) = ids.device_ptr_mut(s);
    let (p, _gp) = prev.device_ptr(s);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        &ARGMAX,
        "feed_decode_inputs",
        cfg,
        &[Arg::Ptr(i), Arg::Ptr(p), Arg::I32(to_i32(OP, "n", n)?)],
    )
}
