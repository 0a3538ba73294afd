//! Several sequences stepping together over one shared paged KV cache: batched prefill (many prompts
//! per forward) and batched greedy decode (one forward over every sequence, through
//! [`Backend::decode_argmax`], so a GPU replays the captured graph of the batch's bucket).
//!
//! Sequence `i` of `n` owns cache blocks `i, i + n, i + 2n, ...` (interleaved, so nothing relies on a
//! sequence's blocks being contiguous).

use super::generate::BLOCK_SIZE;
use crate::backend::{AttnMetadata, Backend, KvCacheSpec, SeqSlice};
use crate::model::Qwen3Model;
use crate::{KestrelError, Result};

/// Default bound on the tokens of one batched prefill forward (activation memory).
pub const PREFILL_BATCH_TOKENS: usize = 8192;

/// A fixed set of sequences sharing one KV cache.
pub struct SequenceBatch<'a, B: Backend> {
    backend: &'a B,
    model: &'a Qwen3Model<B>,
    cache: B::KvCache,
    tables: Vec<Vec<u32>>,
    lens: Vec<usize>,
}

impl<'a, B: Backend> SequenceBatch<'a, B> {
    /// One sequence per entry of `capacities` (its most tokens), each empty. Every sequence gets the
    /// blocks of the largest capacity.
    pub fn new(backend: &'a B, model: &'a Qwen3Model<B>, capacities: &[usize]) -> Result<Self> {
        if capacities.is_empty() {
            return Err(KestrelError::param("capacities", "is empty"));
        }
        let n = capacities.len();
        let per_seq = capacities
            .iter()
            .map(|c| c.div_ceil(BLOCK_SIZE))
            .max()
            .unwrap_or(1)
            .max(1);
        let c = &model.config;
        let cache = backend.alloc_kv_cache(&KvCacheSpec {
            num_layers: c.num_layers,
            num_blocks: n * per_seq,
            block_size: BLOCK_SIZE,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })?;
        let tables = (0..n)
            .map(|i| (0..per_seq).map(|b| (b * n + i) as u32).collect())
            .collect();
        Ok(SequenceBatch {
            backend,
            model,
            cache,
            tables,
            lens: vec![0; n],
        })
    }

    pub fn backend(&self) -> &'a B {
        self.backend
    }

    pub fn model(&self) -> &'a Qwen3Model<B> {
        self.model
    }

    /// Number of sequences.
    pub fn num_seqs(&self) -> usize {
        self.lens.len()
    }

    /// Tokens sequence `i` holds in the cache.
    pub fn seq_len(&self, i: usize) -> usize {
        self.lens[i]
    }

    /// Tokens each sequence can hold.
    pub fn capacity(&self) -> usize {
        self.tables[0].len() * BLOCK_SIZE
    }

    /// Empties every sequence, keeping the cache (and so a GPU's captured decode graphs, which belong
    /// to one cache).
    pub fn reset(&mut self) {
        self.lens.iter_mut().for_each(|l| *l = 0);
    }

    fn check_room(&self, i: usize, new: usize) -> Result<()> {
        if i >= self.lens.len() {
            return Err(KestrelError::param(
                "sequence",
                format!("{i} is out of range (batch of {})", self.lens.len()),
            ));
        }
        if self.lens[i] + new > self.capacity() {
            return Err(KestrelError::PromptTooLong {
                prompt_tokens: self.lens[i] + new,
                context: self.capacity(),
            });
        }
        Ok(())
    }

    /// One forward over `parts` (sequence, its new tokens; each sequence at most once): logits of every
    /// new token (`all_rows`), or of each part's last token.
    pub fn step(&mut self, parts: &[(usize, &[u32])], all_rows: bool) -> Result<B::Tensor> {
        for (k, &(i, new)) in parts.iter().enumerate() {
            self.check_room(i, new.len())?;
            if new.is_empty() || parts[..k].iter().any(|p| p.0 == i) {
                return Err(KestrelError::param(
                    "parts",
                    format!("sequence {i} is empty or appears twice in one step"),
                ));
            }
        }
        let mut slices = Vec::with_capacity(parts.len());
        let mut tokens = Vec::new();
        for &(i, new) in parts {
            self.lens[i] += new.len();
            slices.push(SeqSlice {
                query_start: tokens.len(),
                query_len: new.len(),
                context_len: self.lens[i],
                block_table: self.tables[i].clone(),
            });
            tokens.extend_from_slice(new);
        }
        let meta = AttnMetadata::new(BLOCK_SIZE, slices)?;
        let rows: Vec<usize> = if all_rows {
            (0..tokens.len()).collect()
        } else {
            meta.last_token_rows()
        };
        self.model
            .forward(self.backend, &tokens, &meta, &mut self.cache, &rows)
    }

    /// Feeds `prompts[i]` to sequence `i` (appended after what it holds), packing several sequences into
    /// each forward of at most `max_tokens` tokens (a longer prompt is split across forwards), and
    /// returns each sequence's greedy next token (the backend's argmax of its last prompt token).
    pub fn prefill(&mut self, prompts: &[&[u32]], max_tokens: usize) -> Result<Vec<u32>> {
        let n = self.num_seqs();
        if prompts.len() != n {
            return Err(KestrelError::param(
                "prompts",
                format!("{} prompts for a batch of {n}", prompts.len()),
            ));
        }
        if max_tokens == 0 {
            return Err(KestrelError::param("max_tokens", "must be at least 1"));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(KestrelError::param(
                    "prompts",
                    format!("prompt {i} is empty"),
                ));
            }
            self.check_room(i, p.len())?;
        }
        let mut next = vec![0u32; n];
        let mut fed = vec![0usize; n];
        let mut i = 0;
        while i < n {
            let mut parts: Vec<(usize, &[u32])> = Vec::new();
            let mut budget = max_tokens;
            while i < n && budget > 0 {
                let rest = &prompts[i][fed[i]..];
                let take = rest.len().min(budget);
                parts.push((i, &rest[..take]));
                fed[i] += take;
                budget -= take;
                if fed[i] == prompts[i].len() {
                    i += 1;
                }
            }
            let logits = self.step(&parts, false)?;
            let ids = self.backend.argmax(&logits)?;
            if ids.len() != parts.len() {
                return Err(KestrelError::Backend(format!(
                    "prefill: {} token ids for {} sequences",
                    ids.len(),
                    parts.len()
                )));
            }
            for (&(s, _), id) in parts.iter().zip(ids) {
                if fed[s] == prompts[s].len() {
                    next[s] = id;
                }
            }
        }
        Ok(next)
    }

    /// One greedy decode step of every sequence: `tokens[i]` is appended to sequence `i`; returns each
    /// sequence's next token. One forward through [`Backend::decode_argmax`].
    pub fn decode_argmax(&mut self, tokens: &[u32]) -> Result<Vec<u32>> {
        let n = self.num_seqs();
        if tokens.len() != n {
            return Err(KestrelError::param(
                "tokens",
                format!("{} tokens for a batch of {n}", tokens.len()),
            ));
        }
        for i in 0..n {
            self.check_room(i, 1)?;
        }
        let slices = (0..n)
            .map(|i| SeqSlice {
                query_start: i,
                query_len: 1,
                context_len: self.lens[i] + 1,
                block_table: self.tables[i].clone(),
            })
            .collect();
        let meta = AttnMetadata::new(BLOCK_SIZE, slices)?;
        for l in &mut self.lens {
            *l += 1;
        }
        let (backend, model) = (self.backend, self.model);
        let ids = backend.decode_argmax(
            model.instance_id(),
            tokens,
            &meta,
            &mut self.cache,
            &mut |t, m, c| {
                let rows: Vec<usize> = (0..t.len()).collect();
                model.forward(backend, t, m, c, &rows)
            },
        )?;
        if ids.len() != n {
            return Err(KestrelError::Backend(format!(
                "decode step returned {} tokens for {n} sequences",
                ids.len()
            )));
        }
        Ok(ids)
    }
}
