//! Block-quantized weight rows to bf16 (kernels/dequant.cu): the tiles prefill multiplies on tensor
//! cores, and the embedding lookup from a quantized table.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::quant_layout::QuantWeights;
use super::{expect_aligned16, expect_len, launch, shape_error, to_i32, Arg};
use crate::compile::DEQUANT;
use crate::dtype::Bf16;
use crate::{CudaDevice, Result};

/// Which rows [`dequant_rows`] decodes.
pub enum RowSelect<'a> {
    /// Rows `first .. first + count`.
    Range { first: usize, count: usize },
    /// The rows with these ids (token ids: an embedding lookup), each `< rows` (unchecked: they may
    /// live on the device; the caller checks them).
    Ids(&'a dyn DevicePtr<u32>),
}

/// `out[r, :] = bf16(w[row r of select, :])`, `out` `[rows selected, w.in_features]`, each weight as
/// ggml's `dequantize_row_*` computes it in f32, rounded to nearest bf16.
pub fn dequant_rows(
    dev: &CudaDevice,
    w: &QuantWeights,
    select: RowSelect<'_>,
    out: &mut impl DevicePtrMut<Bf16>,
) -> Result<()> {
    const OP: &str = "dequant_rows";
    let (first, count) = match &select {
        RowSelect::Range { first, count } => {
            if first + count > w.rows {
                return Err(shape_error(
                    OP,
                    format!("rows {first}..{} of a {}-row weight", first + count, w.rows),
                ));
            }
            (*first, *count)
        }
        RowSelect::Ids(ids) => (0, ids.len()),
    };
    expect_len(OP, "out", out.len(), count * w.in_features)?;
    if count == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (planes, _gw) = w.pointers(s);
    let (ids, _gi) = match &select {
        RowSelect::Ids(ids) => {
            let (p, g) = ids.device_ptr(s);
            (p, Some(g))
        }
        RowSelect::Range { .. } => (0, None),
    };
    let (op, _go) = out.device_ptr_mut(s);
    expect_aligned16(OP, "out", op)?;
    let chunks = count * (w.in_features / w.format.weights_per_chunk());
    // grid-stride: enough blocks to fill any GPU several times over (132 SMs on an H100), no more
    let blocks = chunks.div_ceil(256).clamp(1, 4096);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut args = vec![Arg::Ptr(op)];
    args.extend(planes.map(Arg::Ptr));
    args.extend([
        Arg::Ptr(ids),
        Arg::I32(to_i32(OP, "first row", first)?),
        Arg::I32(to_i32(OP, "rows", count)?),
        Arg::I32(to_i32(OP, "in_features", w.in_features)?),
    ]);
    launch(dev, &DEQUANT, w.format.dequant_kernel(), cfg, &args)
}
