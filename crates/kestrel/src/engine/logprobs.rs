//! Log-probabilities of generated tokens (the OpenAI `logprobs` option): from the model's raw logits
//! row (before temperature and penalties, vLLM's default "raw logprobs"), in f64 so that a row of
//! 150k values loses nothing to the sum.

/// A generated token's log-probability, and the `top` most likely tokens' (most likely first).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// The most alternatives a request may ask for (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `token`'s log-softmax in `row`, with the `top` largest.
pub fn token_logprob(row: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let lp = |x: f32| (x as f64 - lse) as f32;
    let mut best: Vec<u32> = (0..row.len() as u32).collect();
    let top = top.min(row.len());
    if top > 0 {
        // the top values, ties by id: the same order on every backend
        let key = |&i: &u32| (std::cmp::Reverse(ordered(row[i as usize])), i);
        best.select_nth_unstable_by_key(top - 1, key);
        best.truncate(top);
        best.sort_unstable_by_key(key);
    } else {
        best.clear();
    }
    TokenLogprob {
        token,
        logprob: lp(row[token as usize]),
        top: best.into_iter().map(|i| (i, lp(row[i as usize]))).collect(),
    }
}

/// f32 as an integer with the same order (NaN-free logits).
fn ordered(x: f32) -> i64 {
    let b = x.to_bits() as i32;
    (if b < 0 { !(b & 0x7FFF_FFFF) } else { b }) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top_tokens() {
        let row = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let t = token_logprob(&row, 4, 3);
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        assert!((t.logprob as f64 - (0.5f64.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3, 0]);
        assert!(
            (t.top.iter().map(|p| (p.1 as f64).exp()).sum::<f64>()
                - (2.0 * 3f64.exp() + 1.0f64.exp()) / z)
                .abs()
                < 1e-6
        );
        assert!(token_logprob(&row, 0, 0).top.is_empty());
        assert_eq!(token_logprob(&[-1.0, -5.0], 1, 9).top.len(), 2);
    }
}
