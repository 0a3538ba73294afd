//! The batched sampling step: one row of logits per sequence that takes a token, each chosen by its
//! own request's [`Sampler`] (its parameters, penalties and seeded RNG).
//!
//! Every request owns its RNG and draws exactly once per token it generates, so a seeded request
//! gives the same tokens whatever else shares its batches, and preemption (recompute) does not
//! disturb it. When every row is plain greedy the argmax runs on the backend and the logits never
//! cross to the host.

use super::runner::StepLogits;
use super::sampling::Sampler;
use crate::backend::Backend;
use crate::{KestrelError, Result};

/// Picks the next token of each sampling sequence: `samplers[k]` belongs to row `k` of `step`. Each
/// chosen token is recorded in its sampler (for the penalties).
pub fn sample_step<B: Backend>(
    backend: &B,
    step: StepLogits<B::Tensor>,
    samplers: &mut [&mut Sampler],
) -> Result<Vec<u32>> {
    let ids = match step {
        StepLogits::Tokens(ids) => ids,
        StepLogits::Logits(logits) => {
            if samplers.iter().all(|s| s.params().is_plain_greedy()) {
                backend.argmax(&logits)?
            } else {
                let (rows, vocab, mut data) = backend.to_host(&logits)?;
                if rows != samplers.len() {
                    return Err(KestrelError::Engine(format!(
                        "{rows} logits rows for {} sampling sequences",
                        samplers.len()
                    )));
                }
                data.chunks_mut(vocab.max(1))
                    .zip(samplers.iter_mut())
                    .map(|(row, s)| s.sample(row))
                    .collect()
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
