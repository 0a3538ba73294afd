//! `Backend::sample` on the GPU: one launch for the whole batch, penalties included; rows the kernel
//! leaves to the host (`NO_TOKEN`: no finite logit, +inf in a greedy row, `l / T` overflowing, more
//! penalised tokens than it stages, more distinct values within 1/2048 than its flat path stages) are
//! sampled from a host copy with the same reference,
//! penalties and draw, so the result never depends on which side picked it.

use kestrel::engine::penalties::RowPenalties;
use kestrel::engine::row_sampling::{sample_with_u, RowSampling};
use kestrel::{KestrelError, Result};

use cudarc::driver::{CudaSlice, DevicePtr};

use super::{be, CudaBackend, CudaTensor};
use crate::dtype::{to_f32, Bf16};
use crate::ops::sampling::{
    pack_params, pack_penalties, sample as launch_sample, PenaltyArgs, NO_TOKEN,
};

pub(super) fn sample(
    b: &CudaBackend,
    logits: &CudaTensor,
    rows: &[RowSampling],
    penalties: &[RowPenalties],
) -> Result<Vec<u32>> {
    if rows.len() != logits.rows {
        return Err(KestrelError::Backend(format!(
            "sample: {} sampling rows for {} logits rows",
            rows.len(),
            logits.rows
        )));
    }
    sample_rows(b, &logits.data, logits.cols, rows, penalties)
}

/// `rows.len()` rows of `cols` bf16 logits in `logits` (any device buffer or view), one per entry of
/// `rows`, after `penalties` (empty, or one per row).
pub(super) fn sample_rows(
    b: &CudaBackend,
    logits: &impl DevicePtr<Bf16>,
    cols: usize,
    rows: &[RowSampling],
    penalties: &[RowPenalties],
) -> Result<Vec<u32>> {
    if logits.len() != rows.len() * cols {
        return Err(KestrelError::Backend(format!(
            "sample: {} logits for {} rows of {cols}",
            logits.len(),
            rows.len()
        )));
    }
    if !(penalties.is_empty() || penalties.len() == rows.len()) {
        return Err(KestrelError::Backend(format!(
            "sample: {} penalty rows for {} rows",
            penalties.len(),
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
    if penalties.iter().all(|p| p.is_none()) {
        launch_sample::<CudaSlice<u32>, CudaSlice<f32>>(
            b.device(),
            logits,
            cols,
            &params,
            None,
            &mut out,
        )
        .map_err(be)?;
    } else {
        let entries: Vec<Vec<(u32, bool, Option<f32>)>> = penalties
            .iter()
            .map(|p| {
                p.entries
                    .iter()
                    .map(|e| (e.token, e.repeated, e.subtract))
                    .collect()
            })
            .collect();
        let packed = pack_penalties(
            penalties
                .iter()
                .zip(&entries)
                .map(|(p, e)| (p.repetition, e.as_slice())),
        )
        .map_err(be)?;
        // a zero-length upload is not a buffer: keep one word in each
        let nonempty = |v: &[u32]| if v.is_empty() { vec![0] } else { v.to_vec() };
        let offsets = b.upload("penalty offsets", &packed.offsets)?;
        let words = b.upload("penalty tokens", &nonempty(&packed.words))?;
        let sub: Vec<f32> = if packed.subtract.is_empty() {
            vec![0.0]
        } else {
            packed.subtract.clone()
        };
        let subtract = b.upload("penalty amounts", &sub)?;
        let repetition = b.upload("repetition penalties", &packed.repetition)?;
        let args = PenaltyArgs {
            offsets: &offsets,
            words: &words,
            subtract: &subtract,
            repetition: &repetition,
        };
        launch_sample(b.device(), logits, cols, &params, Some(&args), &mut out).map_err(be)?;
    }
    let mut ids = b.device().download(&out, "token ids").map_err(be)?;
    if ids.contains(&NO_TOKEN) {
        let data = to_f32(&b.device().download(logits, "logits").map_err(be)?);
        for (r, id) in ids.iter_mut().enumerate() {
            if *id == NO_TOKEN {
                let mut row = data[r * cols..(r + 1) * cols].to_vec();
                if let Some(p) = penalties.get(r) {
                    p.apply(&mut row);
                }
                *id = sample_with_u(&row, &rows[r]);
            }
        }
    }
    Ok(ids)
}
