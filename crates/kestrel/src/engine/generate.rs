//! Generation for one prompt: a batch of one over the paged forward API. Prefill in chunks, then decode
//! token by token, streaming text that never splits a UTF-8 character and honouring stop tokens, stop
//! strings and max tokens.

use std::time::{Duration, Instant};

use super::sampling::{Sampler, SamplingParams};
use super::stop::{StopMatcher, StopStep};
use crate::backend::{pick_tokens, AttnMetadata, Backend, DecodePick, KvCacheSpec, SeqSlice};
use crate::model::Qwen3Model;
use crate::tokenizer::Tokenizer;
use crate::{KestrelError, Result};

/// Tokens per prefill forward pass: bounds activation memory for long prompts.
pub const PREFILL_CHUNK: usize = 512;
pub const BLOCK_SIZE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// The request was aborted (by its client, or a failed step); only the engine reports it.
    Abort,
}

#[derive(Clone, Debug)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    pub finish_reason: FinishReason,
    pub tokens: Vec<u32>,
}

impl GenerationStats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    /// Decode speed over the tokens after the first (the first comes from the prefill).
    pub fn decode_tok_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// A single sequence's KV cache: blocks 0..n in order.
pub struct SingleSequence<B: Backend> {
    pub cache: B::KvCache,
    block_table: Vec<u32>,
    len: usize,
}

impl<B: Backend> SingleSequence<B> {
    pub fn new(backend: &B, model: &Qwen3Model<B>, capacity: usize) -> Result<Self> {
        let c = &model.config;
        let num_blocks = capacity.div_ceil(BLOCK_SIZE).max(1);
        let cache = backend.alloc_kv_cache(&KvCacheSpec {
            num_layers: c.num_layers,
            num_blocks,
            block_size: BLOCK_SIZE,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })?;
        Ok(SingleSequence {
            cache,
            block_table: (0..num_blocks as u32).collect(),
            len: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.block_table.len() * BLOCK_SIZE
    }

    /// Feeds `tokens` (appended after what the cache holds) in chunks of [`PREFILL_CHUNK`], calling
    /// `on_logits` with each chunk's logits tensor: every new token's row, or only the last row of the
    /// last chunk.
    fn forward_chunks(
        &mut self,
        backend: &B,
        model: &Qwen3Model<B>,
        tokens: &[u32],
        all_logits: bool,
        mut on_logits: impl FnMut(B::Tensor) -> Result<()>,
    ) -> Result<()> {
        if self.len + tokens.len() > self.capacity() {
            return Err(KestrelError::PromptTooLong {
                prompt_tokens: self.len + tokens.len(),
                context: self.capacity(),
            });
        }
        let chunks = tokens.len().div_ceil(PREFILL_CHUNK);
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            self.len += chunk.len();
            let meta = AttnMetadata::new(
                BLOCK_SIZE,
                vec![SeqSlice {
                    query_start: 0,
                    query_len: chunk.len(),
                    context_len: self.len,
                    block_table: self.block_table.clone(),
                }],
            )?;
            // Without all_logits an earlier chunk of a long prompt only fills the cache; its last row's
            // logits are computed (the cheapest) and dropped.
            let rows: Vec<usize> = if all_logits {
                (0..chunk.len()).collect()
            } else {
                vec![chunk.len() - 1]
            };
            let logits = model.forward(backend, chunk, &meta, &mut self.cache, &rows)?;
            if all_logits || i + 1 == chunks {
                on_logits(logits)?;
            }
        }
        Ok(())
    }

    /// Feeds `tokens` (appended after what the cache holds) and returns the logits of the rows chosen by
    /// `all_logits`: every new token, or only the last. Logits come back as host f32 rows.
    pub fn feed(
        &mut self,
        backend: &B,
        model: &Qwen3Model<B>,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let mut rows_out = Vec::new();
        self.forward_chunks(backend, model, tokens, all_logits, |logits| {
            let (n, vocab, data) = backend.to_host(&logits)?;
            rows_out.extend((0..n).map(|r| data[r * vocab..(r + 1) * vocab].to_vec()));
            Ok(())
        })?;
        Ok(rows_out)
    }

    /// Feeds `tokens` and returns the argmax of the last token's logits, computed by the backend (on a
    /// GPU only the token id crosses to the host).
    pub fn feed_argmax(
        &mut self,
        backend: &B,
        model: &Qwen3Model<B>,
        tokens: &[u32],
    ) -> Result<u32> {
        self.feed_pick(backend, model, tokens, DecodePick::Argmax)
    }

    /// Feeds `tokens` and returns the token `pick` chooses from the last token's logits (a `Sample`
    /// pick has one row), on the backend where it can: one new token goes through
    /// [`Backend::decode_step`] (a GPU replays a captured graph of the step).
    pub fn feed_pick(
        &mut self,
        backend: &B,
        model: &Qwen3Model<B>,
        tokens: &[u32],
        pick: DecodePick<'_>,
    ) -> Result<u32> {
        if let [token] = tokens {
            return self.decode_one(backend, model, *token, pick);
        }
        let mut next = None;
        self.forward_chunks(backend, model, tokens, false, |logits| {
            next = pick_tokens(backend, &logits, pick)?.pop();
            Ok(())
        })?;
        next.ok_or_else(|| KestrelError::param("tokens", "is empty"))
    }

    /// One token through [`Backend::decode_step`].
    fn decode_one(
        &mut self,
        backend: &B,
        model: &Qwen3Model<B>,
        token: u32,
        pick: DecodePick<'_>,
    ) -> Result<u32> {
        if self.len + 1 > self.capacity() {
            return Err(KestrelError::PromptTooLong {
                prompt_tokens: self.len + 1,
                context: self.capacity(),
            });
        }
        let meta = AttnMetadata::new(
            BLOCK_SIZE,
            vec![SeqSlice {
                query_start: 0,
                query_len: 1,
                context_len: self.len + 1,
                block_table: self.block_table.clone(),
            }],
        )?;
        self.len += 1;
        let id = model.instance_id();
        let mut forward = |t: &[u32], m: &AttnMetadata, c: &mut B::KvCache| {
            let rows: Vec<usize> = (0..t.len()).collect();
            model.forward(backend, t, m, c, &rows)
        };
        let ids = backend.decode_step(id, &[token], &meta, &mut self.cache, &mut forward, pick)?;
        ids.first()
            .copied()
            .ok_or_else(|| KestrelError::Backend("decode step returned no token".into()))
    }
}

/// Generates from `prompt`, calling `on_text` with each piece of text as it is ready.
#[allow(clippy::too_many_arguments)]
pub fn generate<B: Backend>(
    backend: &B,
    model: &Qwen3Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    eos_token_ids: &[u32],
    context: usize,
    mut on_text: impl FnMut(&str),
) -> Result<GenerationStats> {
    params.validate()?;
    if prompt.is_empty() {
        return Err(KestrelError::param("prompt", "is empty"));
    }
    if prompt.len() >= context {
        return Err(KestrelError::PromptTooLong {
            prompt_tokens: prompt.len(),
            context,
        });
    }
    let max_new = params.max_tokens.min(context - prompt.len());
    let mut seq = SingleSequence::new(backend, model, prompt.len() + max_new)?;
    let mut sampler = Sampler::new(params.clone(), prompt);
    let mut stream = tokenizer.stream(true);
    let mut stops = StopMatcher::new(params.stop.clone());
    let is_stop_token = |t: u32| {
        params.stop_token_ids.contains(&t) || (!params.ignore_eos && eos_token_ids.contains(&t))
    };

    // Greedy decoding takes the argmax on the backend and sampling samples there (one draw per token
    // from the request's RNG and its penalties, as on the host), so only token ids cross.
    let greedy = params.is_plain_greedy();
    let feed =
        |seq: &mut SingleSequence<B>, sampler: &mut Sampler, tokens: &[u32]| -> Result<u32> {
            if greedy {
                return seq.feed_argmax(backend, model, tokens);
            }
            let row = [sampler.draw()];
            let penalties = if sampler.has_penalties() {
                vec![sampler.penalties()]
            } else {
                Vec::new()
            };
            seq.feed_pick(backend, model, tokens, DecodePick::Sample(&row, &penalties))
        };

    let t0 = Instant::now();
    let mut pending = feed(&mut seq, &mut sampler, prompt)?;
    let prefill_time = t0.elapsed();
    let t1 = Instant::now();
    let mut tokens = Vec::new();
    let mut finish = FinishReason::Length;
    let mut stopped_by_string = false;
    while tokens.len() < max_new {
        let next = pending;
        sampler.accept(next);
        tokens.push(next);
        if is_stop_token(next) {
            finish = FinishReason::Stop;
            break;
        }
        if let Some(text) = stream.push(next)? {
            match stops.push(&text) {
                StopStep::Emit(t) => on_text(&t),
                StopStep::Stopped(t) => {
                    on_text(&t);
                    finish = FinishReason::Stop;
                    stopped_by_string = true;
                    break;
                }
            }
        }
        if tokens.len() == max_new {
            break;
        }
        pending = feed(&mut seq, &mut sampler, &[next])?;
    }
    if !stopped_by_string {
        let rest = stream.flush().unwrap_or_default();
        match stops.push(&rest) {
            StopStep::Emit(t) => on_text(&(t + &stops.finish())),
            StopStep::Stopped(t) => {
                on_text(&t);
                finish = FinishReason::Stop;
            }
        }
    }
    Ok(GenerationStats {
        prompt_tokens: prompt.len(),
        generated_tokens: tokens.len(),
        prefill_time,
        decode_time: t1.elapsed(),
        finish_reason: finish,
        tokens,
    })
}
