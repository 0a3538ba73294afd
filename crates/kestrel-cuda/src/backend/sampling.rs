//! `Backend::sample` on the GPU: one launch for the whole batch; rows the kernel leaves to the host
//! (`NO_TOKEN`: no finite logit, +inf in a greedy row, rows too flat for its sorted prefix) are
//! sampled from a host copy with the same reference and the same draw, so the result never depends on
//! which side picked it.

use kestrel::engine::row_sampling::{sample_with_u, RowSampling};
use kestrel::{KestrelError, Result};

use cudarc::driver::DevicePtr;

use super::{be, CudaBackend, CudaTensor};
use crate::dtype::{to_f32, Bf16};
use crate::ops::sampling::{pack_params, sample as launch_sample, NO_TOKEN};

pub(super) fn sample(
    b: &CudaBackend,
    logits: &CudaTensor,
    rows: &[RowSampling],
) -> Result<Vec<u32>> {
    if rows.len() != logits.rows {
        return Err(KestrelError::Backend(format!(
            "sample: {} sampling rows for {} logits rows",
            rows.len(),
            logits.rows
        )));
    }
    sample_rows(b, &logits.data, logits.cols, rows)
}

/// `rows.len()` rows of `cols` bf16 logits in `logits` (any device buffer or view), one per entry of
/// `rows`.
pub(super) fn sample_rows(
    b: &CudaBackend,
    logits: &impl DevicePtr<Bf16>,
    cols: usize,
    rows: &[RowSampling],
) -> Result<Vec<u32>> {
    if logits.len() != rows.len() * cols {
        return Err(KestrelError::Backend(format!(
            "sample: {} logits for {} rows of {cols}",
            logits.len(),
            rows.len()
        )));
    }
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let host: Vec<u32> = rows
        .iter()
        .flat_map(|r| pack_params(r.temperature, r.top_k, r.top_p, r.min_p, r.u))
        .collect();
    let params = b.upload("sampling parameters", &host)?;
    let mut out = b.alloc::<u32>(rows.len())?;
    launch_sample(b.device(), logits, cols, &params, &mut out).map_err(be)?;
    let stream = b.device().stream();
    let mut ids = stream
        .clone_dtoh(&out)
        .map_err(|e| KestrelError::Backend(format!("copying token ids to the host: {e}")))?;
    if ids.contains(&NO_TOKEN) {
        let data = to_f32(
            &stream
                .clone_dtoh(logits)
                .map_err(|e| KestrelError::Backend(format!("copying logits to the host: {e}")))?,
        );
        for (r, id) in ids.iter_mut().enumerate() {
            if *id == NO_TOKEN {
                *id = sample_with_u(&data[r * cols..(r + 1) * cols], &rows[r]);
            }
        }
    }
    Ok(ids)
}
