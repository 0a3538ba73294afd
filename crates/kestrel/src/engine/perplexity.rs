//! Perplexity with llama-perplexity's method, so the two tools' numbers compare: the text's tokens are
//! cut into chunks of `n_ctx` (a trailing partial chunk is dropped); each chunk is evaluated from an
//! empty cache, its first token replaced by BOS where the model adds one, and only the second half is
//! scored: the negative log-likelihood of token `i + 1` under the logits of position `i`, for
//! `i` in `n_ctx / 2 .. n_ctx - 1`. PPL = exp(mean NLL over every scored token).

use super::generate::SingleSequence;
use crate::backend::Backend;
use crate::model::Qwen3Model;
use crate::{KestrelError, Result};

/// Running totals after each chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    /// Sum of the scored tokens' negative log-likelihoods (natural log).
    pub nll: f64,
    /// Sum of their squares (llama-perplexity's uncertainty estimate).
    pub nll2: f64,
    /// Tokens scored.
    pub count: usize,
    /// The perplexity after each chunk (what llama-perplexity prints as `[1]x,[2]y,...`).
    pub running: Vec<f64>,
}

impl Perplexity {
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }
    /// llama-perplexity's "+/-": the standard error of the mean NLL, carried through exp.
    pub fn ppl_error(&self) -> f64 {
        let n = self.count.max(2) as f64;
        let mean = self.nll / n;
        let var = (self.nll2 / n - mean * mean).max(0.0) * n / (n - 1.0);
        (var / n).sqrt() * self.ppl()
    }
}

/// How many chunks of `n_ctx` tokens `tokens` holds (at most `max_chunks`, when given).
pub fn chunk_count(tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> usize {
    let whole = tokens / n_ctx.max(1);
    max_chunks.map_or(whole, |m| whole.min(m))
}

/// The perplexity of `model` over `tokens` (see the module doc); `bos` replaces each chunk's first
/// token where the model adds one. `on_chunk` sees the running totals after each chunk.
pub fn perplexity<B: Backend>(
    backend: &B,
    model: &Qwen3Model<B>,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(&Perplexity),
) -> Result<Perplexity> {
    if n_ctx < 4 {
        return Err(KestrelError::InvalidParameter {
            name: "ctx-size".into(),
            msg: format!(
                "a context of {n_ctx} tokens scores nothing: use at least 4 (llama-perplexity's default is 512)"
            ),
        });
    }
    let chunks = chunk_count(tokens.len(), n_ctx, max_chunks);
    if chunks == 0 {
        return Err(KestrelError::InvalidParameter {
            name: "ctx-size".into(),
            msg: format!(
                "the text is {} tokens, fewer than one chunk of {n_ctx}: use a longer text or a smaller context",
                tokens.len()
            ),
        });
    }
    let first = n_ctx / 2;
    let mut totals = Perplexity {
        nll: 0.0,
        nll2: 0.0,
        count: 0,
        running: Vec::with_capacity(chunks),
    };
    for c in 0..chunks {
        let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut seq = SingleSequence::new(backend, model, n_ctx)?;
        let logits = seq.feed(backend, model, &chunk, true)?;
        for i in first..n_ctx - 1 {
            let nll = -log_softmax_at(&logits[i], chunk[i + 1] as usize);
            totals.nll += nll;
            totals.nll2 += nll * nll;
            totals.count += 1;
        }
        totals.running.push(totals.ppl());
        on_chunk(&totals);
    }
    Ok(totals)
}

/// log softmax(row)[target], in f64 after the max is subtracted.
fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_the_definition() {
        let row = [1.0f32, 2.0, 3.0, -1.0];
        let z: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        for (t, &l) in row.iter().enumerate() {
            let want = (l as f64).exp() / z;
            assert!((log_softmax_at(&row, t).exp() - want).abs() < 1e-12);
        }
    }

    #[test]
    fn chunks_drop_the_partial_tail() {
        assert_eq!(chunk_count(1100, 512, None), 2);
        assert_eq!(chunk_count(1100, 512, Some(1)), 1);
        assert_eq!(chunk_count(100, 512, None), 0);
    }

    #[test]
    fn uniform_predictions_give_the_vocabulary_size() {
        // the module doc's arithmetic: every scored token at probability 1/4 -> PPL 4, no spread
        let p = Perplexity {
            nll: 10.0 * 4f64.ln(),
            nll2: 10.0 * 4f64.ln().powi(2),
            count: 10,
            running: vec![],
        };
        assert!((p.ppl() - 4.0).abs() < 1e-12);
        assert!(p.ppl_error() < 1e-6);
    }
}
