//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, seeded sampling.
//!
//! Order and semantics follow llama.cpp / vLLM: penalties on the raw logits (repetition penalty à la
//! CTRL/HF over prompt and output; presence and frequency penalties à la OpenAI over the output), then
//! temperature, then the top-k / top-p / min-p filters, then a draw. Temperature 0 is greedy.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::penalties::{PenaltyEntry, RowPenalties};
use super::row_sampling::{sample_with_u, RowSampling};
use crate::{KestrelError, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Report each generated token's log-probability with this many alternatives (None: don't).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 256,
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Plain greedy decoding: temperature 0 and no penalty, so the next token is the argmax of the raw
    /// logits (which a GPU backend computes without copying the logits to the host).
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |n: &str, m: &str| Err(KestrelError::param(n, m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", "must be a finite number > 0");
        }
        if !self.presence_penalty.is_finite() || self.presence_penalty.abs() > 2.0 {
            return bad("presence_penalty", "must be in [-2, 2]");
        }
        if !self.frequency_penalty.is_finite() || self.frequency_penalty.abs() > 2.0 {
            return bad("frequency_penalty", "must be in [-2, 2]");
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1");
        }
        if self
            .logprobs
            .is_some_and(|n| n > super::logprobs::MAX_TOP_LOGPROBS)
        {
            return bad("top_logprobs", "must be at most 20");
        }
        Ok(())
    }
}

/// Per-sequence sampling state: the RNG and the token counts the penalties need (kept only for a
/// request with penalties: two hash updates a token per sequence were a third of the engine's host
/// time between GPU steps).
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Tokens of the prompt and the output (repetition penalty).
    seen: HashMap<u32, u32>,
    /// Tokens of the output only (presence / frequency penalties).
    generated: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::seed_from_u64(rand::random()),
        };
        let mut sampler = Sampler {
            params,
            rng,
            seen: HashMap::new(),
            generated: HashMap::new(),
        };
        if sampler.has_penalties() {
            for &t in prompt {
                *sampler.seen.entry(t).or_insert(0) += 1;
            }
        }
        sampler
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token the sequence produced (or was fed), for the penalties.
    pub fn accept(&mut self, token: u32) {
        if !self.has_penalties() {
            return;
        }
        *self.seen.entry(token).or_insert(0) += 1;
        *self.generated.entry(token).or_insert(0) += 1;
    }

    /// Whether this request penalises repeated tokens (see [`Sampler::penalties`]).
    pub fn has_penalties(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
    }

    /// This step's settings and random draw: exactly one `u` from the request's RNG per sampled
    /// (temperature > 0) token, none for greedy ones, whichever path (host or device) then picks it.
    pub fn draw(&mut self) -> RowSampling {
        let p = &self.params;
        let u = if p.temperature == 0.0 {
            0.0
        } else {
            self.rng.random::<f32>()
        };
        RowSampling {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            u,
        }
    }

    /// Picks the next token from `logits` (modified in place by the penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.apply_penalties(logits);
        let row = self.draw();
        sample_with_u(logits, &row)
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        self.penalties().apply(logits);
    }

    /// This request's penalties now (none when it has none): every token of the prompt and output
    /// for the repetition penalty, the output's counts for presence / frequency.
    pub fn penalties(&self) -> RowPenalties {
        let p = &self.params;
        if !self.has_penalties() {
            return RowPenalties::default();
        }
        let subtracts = p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        let mut entries: Vec<PenaltyEntry> = self
            .seen
            .keys()
            .map(|&t| PenaltyEntry {
                token: t,
                repeated: p.repetition_penalty != 1.0,
                subtract: match self.generated.get(&t) {
                    Some(&n) if subtracts => {
                        Some(p.presence_penalty + p.frequency_penalty * n as f32)
                    }
                    _ => None,
                },
            })
            .filter(|e| e.repeated || e.subtract.is_some())
            .collect();
        entries.sort_unstable_by_key(|e| e.token);
        RowPenalties {
            repetition: p.repetition_penalty,
            entries,
        }
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        f(&mut p);
        p
    }

    /// Draw `n` samples and count how often each token comes out.
    fn histogram(p: SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(p, &[]);
        let mut h = vec![0; logits.len()];
        for _ in 0..n {
            h[s.sample(&mut logits.to_vec()) as usize] += 1;
        }
        h
    }

    const LOGITS: [f32; 5] = [2.0, 1.0, 0.5, 0.0, -1.0];

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::default(), &[]);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -5.0]), 1);
        assert_eq!(
            argmax(&[1.0, 1.0, 0.0]),
            0,
            "first of equal logits, as torch.argmax"
        );
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        let n = 20_000;
        let h = histogram(params(|p| p.seed = Some(1)), &LOGITS, n);
        let z: f32 = LOGITS.iter().map(|l| l.exp()).sum();
        for (i, &c) in h.iter().enumerate() {
            let expected = LOGITS[i].exp() / z;
            let got = c as f32 / n as f32;
            assert!(
                (got - expected).abs() < 0.015,
                "token {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn top_k_top_p_min_p_cut_the_tail() {
        let h = histogram(params(|p| p.top_k = 2), &LOGITS, 2000);
        assert!(
            h[0] > 0 && h[1] > 0 && h[2..].iter().all(|&c| c == 0),
            "{h:?}"
        );
        // softmax(LOGITS) ≈ [.55, .20, .12, .07, .03]: top_p 0.7 keeps the first two.
        let h = histogram(params(|p| p.top_p = 0.7), &LOGITS, 2000);
        assert!(
            h[0] > 0 && h[1] > 0 && h[2..].iter().all(|&c| c == 0),
            "{h:?}"
        );
        // min_p 0.3 keeps tokens with p >= 0.3 * 0.55: the first two.
        let h = histogram(params(|p| p.min_p = 0.3), &LOGITS, 2000);
        assert!(
            h[0] > 0 && h[1] > 0 && h[2..].iter().all(|&c| c == 0),
            "{h:?}"
        );
    }

    #[test]
    fn same_seed_same_tokens() {
        let run = |seed| {
            let mut s = Sampler::new(params(|p| p.seed = Some(seed)), &[]);
            (0..64)
                .map(|_| s.sample(&mut LOGITS.to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn penalties_follow_their_definitions() {
        // Repetition penalty (prompt and output): positive logits divided, negative multiplied.
        let s = Sampler::new(
            SamplingParams {
                repetition_penalty: 2.0,
                ..Default::default()
            },
            &[0, 4],
        );
        let mut l = LOGITS.to_vec();
        s.apply_penalties(&mut l);
        assert_eq!(l, vec![1.0, 1.0, 0.5, 0.0, -2.0]);
        // Presence and frequency (output only): l -= presence + frequency * count.
        let mut s = Sampler::new(
            SamplingParams {
                presence_penalty: 0.5,
                frequency_penalty: 0.25,
                ..Default::default()
            },
            &[1],
        );
        s.accept(2);
        s.accept(2);
        s.accept(3);
        let mut l = LOGITS.to_vec();
        s.apply_penalties(&mut l);
        assert_eq!(l, vec![2.0, 1.0, 0.5 - 0.5 - 0.5, 0.0 - 0.5 - 0.25, -1.0]);
        // A strong repetition penalty moves greedy off the repeated token.
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 3.0,
                ..Default::default()
            },
            &[0],
        );
        assert_eq!(s.sample(&mut LOGITS.to_vec()), 1);
    }

    #[test]
    fn invalid_parameters_are_named() {
        for (p, name) in [
            (params(|p| p.temperature = -1.0), "temperature"),
            (params(|p| p.top_p = 0.0), "top_p"),
            (params(|p| p.min_p = 1.5), "min_p"),
            (params(|p| p.repetition_penalty = 0.0), "repetition_penalty"),
            (params(|p| p.presence_penalty = 3.0), "presence_penalty"),
            (params(|p| p.max_tokens = 0), "max_tokens"),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
