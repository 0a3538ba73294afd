//! The batched sampling step: one row of logits per sequence that takes a token, each chosen by its
//! own request's [`Sampler`] (its parameters, penalties and seeded RNG).
//!
//! Every request owns its RNG and draws exactly once per token it generates, so a seeded request
//! gives the same tokens whatever else shares its batches, and preemption (recompute) does not
//! disturb it. When every row is plain greedy the argmax runs on the backend; when no row has
//! penalties the backend samples (`Backend::sample`); either way the logits never cross to the host.

use rayon::prelude::*;

use super::row_sampling::{sample_with_u, RowSampling};
use super::runner::StepLogits;
use super::sampling::Sampler;
use crate::backend::Backend;
use crate::{KestrelError, Result};

/// Rows without penalties are sampled by the backend (`Backend::sample`: only ids come back) with
/// each request's one draw for the step; if any row needs penalties (host-only: they read the token
/// history), or the backend has no sampling op, every row of the step is sampled on the host from the
/// same draws, so a request's tokens do not depend on which path its batch took.
fn device_or_host<B: Backend>(
    backend: &B,
    logits: &B::Tensor,
    samplers: &mut [&mut Sampler],
    drawn: Option<&[RowSampling]>,
) -> Result<Vec<u32>> {
    if !samplers.iter().any(|s| s.needs_host()) {
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
        if let Some(ids) = backend.sample(logits, &rows)? {
            return Ok(ids);
        }
        let (_, vocab, data) = host_rows(backend, logits, samplers.len())?;
        // rows are independent and each may sort the whole vocabulary: one per core
        return Ok(data
            .par_chunks(vocab.max(1))
            .zip(rows.par_iter())
            .map(|(row, r)| sample_with_u(row, r))
            .collect());
    }
    let (_, vocab, mut data) = host_rows(backend, logits, samplers.len())?;
    Ok(data
        .par_chunks_mut(vocab.max(1))
        .zip(samplers.par_iter_mut())
        .map(|(row, s)| s.sample(row))
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
