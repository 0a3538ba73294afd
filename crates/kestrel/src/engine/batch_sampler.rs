//! The batched sampling step: one row of logits per sequence that takes a token, each chosen by its
//! own request's [`Sampler`] (its parameters, penalties and seeded RNG).
//!
//! Every request owns its RNG and draws exactly once per token it generates, so a seeded request
//! gives the same tokens whatever else shares its batches, and preemption (recompute) does not
//! disturb it. When every row is plain greedy the argmax runs on the backend; otherwise the backend
//! samples (`Backend::sample`, penalties included): either way the logits never cross to the host,
//! unless the backend has no sampling op.

use rayon::prelude::*;

use super::penalties::RowPenalties;
use super::row_sampling::{sample_with_u, RowSampling};
use super::runner::StepLogits;
use super::sampling::Sampler;
use crate::backend::Backend;
use crate::{KestrelError, Result};

/// This step's draw of each sampler (`drawn`, if the caller took them already) and its penalties
/// (empty when no row has any).
pub fn step_rows(
    samplers: &mut [&mut Sampler],
    drawn: Option<&[RowSampling]>,
) -> Result<(Vec<RowSampling>, Vec<RowPenalties>)> {
    let rows: Vec<RowSampling> = match drawn {
        Some(rows) if rows.len() == samplers.len() => rows.to_vec(),
        Some(rows) => {
            return Err(KestrelError::Engine(format!(
                "{} draws for {} sampling sequences",
                rows.len(),
                samplers.len()
            )))
        }
        None => samplers.iter_mut().map(|s| s.draw()).collect(),
    };
    let penalties = if samplers.iter().any(|s| s.has_penalties()) {
        samplers.iter().map(|s| s.penalties()).collect()
    } else {
        Vec::new()
    };
    Ok((rows, penalties))
}

/// Every row sampled by the backend (`Backend::sample`: only ids come back) with each request's one
/// draw for the step and its penalties; if the backend has no sampling op, on the host from the same
/// draws and penalties, so a request's tokens do not depend on which path its batch took.
fn device_or_host<B: Backend>(
    backend: &B,
    logits: &B::Tensor,
    samplers: &mut [&mut Sampler],
    drawn: Option<&[RowSampling]>,
) -> Result<Vec<u32>> {
    let (rows, penalties) = step_rows(samplers, drawn)?;
    if let Some(ids) = backend.sample(logits, &rows, &penalties)? {
        return Ok(ids);
    }
    let (_, vocab, mut data) = host_rows(backend, logits, samplers.len())?;
    // rows are independent and each may select over the whole vocabulary: one per core
    Ok(data
        .par_chunks_mut(vocab.max(1))
        .zip(rows.par_iter())
        .enumerate()
        .map(|(k, (row, r))| {
            if let Some(p) = penalties.get(k) {
                p.apply(row);
            }
            sample_with_u(row, r)
        })
        .collect())
}

fn host_rows<B: Backend>(
    backend: &B,
    logits: &B::Tensor,
    want: usize,
) -> Result<(usize, usize, Vec<f32>)> {
    let (rows, vocab, data) = backend.to_host(logits)?;
    if rows != want {
        return Err(KestrelError::Engine(format!(
            "{rows} logits rows for {want} sampling sequences"
        )));
    }
    Ok((rows, vocab, data))
}

/// Picks the next token of each sampling sequence: `samplers[k]` belongs to row `k` of `step`. Each
/// chosen token is recorded in its sampler (for the penalties). `drawn`: this step's draws, if the
/// caller took them already (one per sampler, none of which needs the host), so none is drawn twice.
pub fn sample_step<B: Backend>(
    backend: &B,
    step: StepLogits<B::Tensor>,
    samplers: &mut [&mut Sampler],
    drawn: Option<&[RowSampling]>,
) -> Result<Vec<u32>> {
    let ids = match step {
        StepLogits::Tokens(ids) => ids,
        StepLogits::Logits(logits) => {
            if samplers.iter().all(|s| s.params().is_plain_greedy()) {
                backend.argmax(&logits)?
            } else {
                device_or_host(backend, &logits, samplers, drawn)?
            }
        }
    };
    if ids.len() != samplers.len() {
        return Err(KestrelError::Engine(format!(
            "{} tokens for {} sampling sequences",
            ids.len(),
            samplers.len()
        )));
    }
    for (s, &t) in samplers.iter_mut().zip(&ids) {
        s.accept(t);
    }
    Ok(ids)
}
