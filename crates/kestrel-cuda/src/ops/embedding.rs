//! Token embedding lookup into bf16 activations.

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};

use super::{expect_aligned16, expect_len, launch, row_threads, shape_error, to_i32, Arg};
use crate::compile::EMBEDDING;
use crate::{CudaDevice, Result};

/// An element type an embedding table may have on the device.
pub trait EmbeddingTable: DeviceRepr {
    const KERNEL: &'static str;
}
impl EmbeddingTable for Bf16 {
    const KERNEL: &'static str = "embedding_bf16";
}
impl EmbeddingTable for f32 {
    const KERNEL: &'static str = "embedding_f32";
}

/// `out[t, :] = bf16(table[ids[t], :])` with `table` `[vocab, hidden]` and `out` `[ids.len(), hidden]`.
/// An id `>= vocab` yields a NaN row (ids live on the device, so they can't be checked here).
pub fn embedding<T: EmbeddingTable>(
    dev: &CudaDevice,
    table: &impl DevicePtr<T>,
    hidden: usize,
    ids: &impl DevicePtr<u32>,
    out: &mut impl DevicePtrMut<Bf16>,
) -> Result<()> {
    const OP: &str = "embedding";
    if hidden == 0 || !hidden.is_multiple_of(8) || !table.len().is_multiple_of(hidden) {
        return Err(shape_error(
            OP,
            format!(
                "hidden size {hidden} must be a non-zero multiple of 8 dividing the table's {} elements",
                table.len()
            ),
        ));
    }
    let vocab = table.len() / hidden;
    let tokens = ids.len();
    expect_len(OP, "out", out.len(), tokens * hidden)?;
    if tokens == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (t, _gt) = table.device_ptr(s);
    let (i, _gi) = ids.device_ptr(s);
    let (o, _go) = out.device_ptr_mut(s);
    expect_aligned16(OP, "table", t)?;
    expect_aligned16(OP, "out", o)?;
    let cfg = LaunchConfig {
        grid_dim: (to_i32(OP, "tokens", tokens)? as u32, 1, 1),
        block_dim: (row_threads(hidden / 8).min(256), 1, 1),
        shared_mem_bytes: 0,
    };
    let vocab = u32::try_from(vocab).map_err(|_| shape_error(OP, "vocabulary exceeds u32"))?;
    launch(
        dev,
        &EMBEDDING,
        T::KERNEL,
        cfg,
        &[
            Arg::Ptr(o),
            Arg::Ptr(t),
            Arg::Ptr(i),
            Arg::I32(to_i32(OP, "hidden", hidden)?),
            Arg::U32(vocab),
        ],
    )
}
