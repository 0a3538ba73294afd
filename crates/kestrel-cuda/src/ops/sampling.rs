//! Sampling on the GPU (kernels/sampling.cu): one token per row of bf16 logits under each row's own
//! temperature / top-k / top-p / min-p and uniform draw, so only token ids cross to the host.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_len, launch, logits_rows, shape_error, to_i32, Arg};
use crate::compile::SAMPLING;
use crate::dtype::Bf16;
use crate::{CudaDevice, Result};

/// What the kernel writes for a row it leaves to the host (no finite logit, a greedy row with +inf,
/// `l / T` overflowing, more penalised tokens than it stages, or more distinct values within 1/2048 of
/// a unit than its flat path stages).
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

/// Penalised entries a row may have on the GPU (`MAX_PEN` in kernels/sampling.cuh); a row with more
/// gets [`NO_TOKEN`].
pub const MAX_PENALTY_ENTRIES: usize = 1024;

/// Rows' penalties as the kernel reads them: entries of row `r` at `offsets[r] .. offsets[r + 1]` of
/// `words` (token | repeated << 31 | subtracts << 30, sorted by token) and `subtract`; `repetition[r]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedPenalties {
    pub offsets: Vec<u32>,
    pub words: Vec<u32>,
    pub subtract: Vec<f32>,
    pub repetition: Vec<f32>,
}

/// Packs one row's penalties after another: `(repetition, [(token, repeated, subtract)])`, tokens
/// ascending and below 2^30.
pub fn pack_penalties<'a>(
    rows: impl IntoIterator<Item = (f32, &'a [(u32, bool, Option<f32>)])>,
) -> Result<PackedPenalties> {
    let mut p = PackedPenalties {
        offsets: vec![0],
        ..Default::default()
    };
    for (rep, entries) in rows {
        for &(token, repeated, sub) in entries {
            if token >= 1 << 30 {
                return Err(shape_error(
                    "pack_penalties",
                    format!("token {token} >= 2^30"),
                ));
            }
            p.words
                .push(token | (repeated as u32) << 31 | (sub.is_some() as u32) << 30);
            p.subtract.push(sub.unwrap_or(0.0));
        }
        p.offsets.push(p.words.len() as u32);
        p.repetition.push(rep);
    }
    Ok(p)
}

/// The penalties a [`sample`] launch reads, on the device.
pub struct PenaltyArgs<'a, U, F> {
    pub offsets: &'a U,
    pub words: &'a U,
    pub subtract: &'a F,
    pub repetition: &'a F,
}

/// `out[r]` = the token row `r` of `logits` (`[out.len(), cols]`) gives under `params[r]`
/// ([`pack_params`]), or [`NO_TOKEN`]; with `penalties`, after row `r`'s.
pub fn sample<U: DevicePtr<u32>, F: DevicePtr<f32>>(
    dev: &CudaDevice,
    logits: &impl DevicePtr<Bf16>,
    cols: usize,
    params: &impl DevicePtr<u32>,
    penalties: Option<&PenaltyArgs<'_, U, F>>,
    out: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    const OP: &str = "sample";
    let rows = logits_rows(OP, logits.len(), cols)?;
    expect_len(OP, "out", out.len(), rows)?;
    expect_len(OP, "params", params.len(), rows * PARAM_WORDS)?;
    if let Some(pen) = penalties {
        expect_len(OP, "penalty offsets", pen.offsets.len(), rows + 1)?;
        expect_len(OP, "penalty repetition", pen.repetition.len(), rows)?;
        expect_len(OP, "penalty subtract", pen.subtract.len(), pen.words.len())?;
    }
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
    let mut args = vec![
        Arg::Ptr(o),
        Arg::Ptr(l),
        Arg::Ptr(p),
        Arg::I32(to_i32(OP, "cols", cols)?),
    ];
    let Some(pen) = penalties else {
        return launch(dev, &SAMPLING, "sample_bf16", cfg, &args);
    };
    // (the caller keeps the buffers alive; the guards only order the stream)
    let (po, _g1) = pen.offsets.device_ptr(s);
    let (pw, _g2) = pen.words.device_ptr(s);
    let (ps, _g3) = pen.subtract.device_ptr(s);
    let (pr, _g4) = pen.repetition.device_ptr(s);
    args.extend([Arg::Ptr(po), Arg::Ptr(pw), Arg::Ptr(ps), Arg::Ptr(pr)]);
    launch(dev, &SAMPLING, "sample_bf16_pen", cfg, &args)
}
