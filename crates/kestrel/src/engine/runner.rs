//! Runs one scheduled step on the model (nano-vllm's `ModelRunner`): owns the paged KV cache, turns a
//! [`ScheduledBatch`] into the explicit [`AttnMetadata`] of the forward pass, and returns what the
//! sampler needs for the sequences that take a token this step.
//!
//! A step that is pure decode (one token per sequence, every one sampling) with no request needing
//! the host (penalties) goes through [`Backend::decode_step`] with the argmax or this step's draws,
//! so a GPU replays the captured graph of the batch's size bucket, samples on the device, and only
//! token ids cross to the host. Every other step (prefill chunks, mixed steps, penalties) is a plain
//! forward returning one logits row per sampling sequence.
//!
//! The runner knows nothing of requests or the block manager: the scheduler's block tables are the
//! only truth about where a sequence's KV lives, which keeps preemption and prefix caching out of here.

use super::scheduler::ScheduledBatch;
use crate::backend::{
    AttnMetadata, Backend, DecodeInput, DecodePick, KvCacheSpec, PendingDecode, SeqSlice,
};
use crate::config::ModelConfig;
use crate::model::Qwen3Model;
use crate::{KestrelError, Result};

/// What a step leaves for choosing the next tokens, one entry per sampling sequence in batch order.
pub enum StepLogits<T> {
    /// Greedy tokens already chosen on the device (the decode graph path).
    Tokens(Vec<u32>),
    /// Logits `[sampling sequences, vocab]`.
    Logits(T),
}

/// The forward pass of a decode step: logits for every row.
fn every_row<B: Backend>(
    backend: &B,
    model: &Qwen3Model<B>,
    tokens: &[u32],
    meta: &AttnMetadata,
    cache: &mut B::KvCache,
) -> Result<B::Tensor> {
    let every: Vec<usize> = (0..tokens.len()).collect();
    model.forward(backend, tokens, meta, cache, &every)
}

pub struct Runner<B: Backend> {
    cache: B::KvCache,
    block_size: usize,
    num_blocks: usize,
    /// Steps that went through the decode graph path (benchmarks and tests read it).
    graph_steps: u64,
}

impl<B: Backend> Runner<B> {
    /// A KV cache of `num_blocks` blocks of `block_size` tokens for every layer of `config`.
    pub fn new(
        backend: &B,
        config: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(KestrelError::param(
                "num_blocks",
                "the KV cache needs at least one block of at least one token",
            ));
        }
        let cache = backend.alloc_kv_cache(&KvCacheSpec {
            num_layers: config.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        })?;
        Ok(Runner {
            cache,
            block_size,
            num_blocks,
            graph_steps: 0,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn graph_steps(&self) -> u64 {
        self.graph_steps
    }

    /// The batch's tokens in order and their metadata. Block ids are checked against the cache here:
    /// the attention ops index the cache with them unchecked.
    pub fn metadata(&self, batch: &ScheduledBatch) -> Result<(Vec<u32>, AttnMetadata)> {
        if batch.seqs.is_empty() {
            return Err(KestrelError::Engine("an empty step was scheduled".into()));
        }
        let mut tokens = Vec::with_capacity(batch.num_tokens());
        let mut slices = Vec::with_capacity(batch.seqs.len());
        for s in &batch.seqs {
            if let Some(&b) = s
                .block_table
                .iter()
                .find(|&&b| b as usize >= self.num_blocks)
            {
                return Err(KestrelError::Engine(format!(
                    "sequence {} holds block {b} of a cache of {}",
                    s.seq_id, self.num_blocks
                )));
            }
            if s.token_ids.is_empty() {
                return Err(KestrelError::Engine(format!(
                    "sequence {} was scheduled with no tokens",
                    s.seq_id
                )));
            }
            slices.push(SeqSlice {
                query_start: tokens.len(),
                query_len: s.token_ids.len(),
                context_len: s.context_len,
                block_table: s.block_table.clone(),
            });
            tokens.extend_from_slice(&s.token_ids);
        }
        Ok((tokens, AttnMetadata::new(self.block_size, slices)?))
    }

    /// Launches a pure-decode step (one token per sequence, each sampling) whose tokens are read
    /// back later ([`Backend::collect_decode`]): `inputs[i]` is sequence `i`'s token, or a row of
    /// `previous`, the step launched before and not collected yet.
    pub fn launch(
        &mut self,
        backend: &B,
        model: &Qwen3Model<B>,
        batch: &ScheduledBatch,
        inputs: &[DecodeInput],
        previous: Option<&PendingDecode>,
        pick: DecodePick<'_>,
    ) -> Result<PendingDecode> {
        let (tokens, meta) = self.metadata(batch)?;
        if tokens.len() != batch.seqs.len() || inputs.len() != tokens.len() {
            return Err(KestrelError::Engine(format!(
                "a launched decode step of {} sequences has {} tokens and {} inputs",
                batch.seqs.len(),
                tokens.len(),
                inputs.len()
            )));
        }
        self.graph_steps += 1;
        backend.launch_decode(
            model.instance_id(),
            inputs,
            previous,
            &meta,
            &mut self.cache,
            &mut |t, m, c| every_row(backend, model, t, m, c),
            pick,
        )
    }

    /// Runs the step. `pick`: how every sampling sequence's token is chosen on the backend (the
    /// argmax, or sampling with this step's draws), when no row needs the host (penalties): then a
    /// pure-decode step takes the decode graph path and returns tokens. `None` when no sequence
    /// samples (every one is in the middle of its prefill): the step only filled the cache.
    pub fn run(
        &mut self,
        backend: &B,
        model: &Qwen3Model<B>,
        batch: &ScheduledBatch,
        pick: Option<DecodePick<'_>>,
    ) -> Result<Option<StepLogits<B::Tensor>>> {
        let (tokens, meta) = self.metadata(batch)?;
        let last_rows = meta.last_token_rows();
        let rows: Vec<usize> = batch
            .seqs
            .iter()
            .zip(&last_rows)
            .filter(|(s, _)| s.samples)
            .map(|(_, &r)| r)
            .collect();
        let pure_decode = rows.len() == batch.seqs.len() && tokens.len() == batch.seqs.len();
        if let (Some(pick), true) = (pick, pure_decode) {
            self.graph_steps += 1;
            let ids = backend.decode_step(
                model.instance_id(),
                &tokens,
                &meta,
                &mut self.cache,
                &mut |t, m, c| every_row(backend, model, t, m, c),
                pick,
            )?;
            if ids.len() != tokens.len() {
                return Err(KestrelError::Backend(format!(
                    "decode step returned {} tokens for {} sequences",
                    ids.len(),
                    tokens.len()
                )));
            }
            return Ok(Some(StepLogits::Tokens(ids)));
        }
        if rows.is_empty() {
            // Only the KV matters; the last row's logits are the cheapest to compute and drop.
            let last = [tokens.len() - 1];
            model.forward(backend, &tokens, &meta, &mut self.cache, &last)?;
            return Ok(None);
        }
        let logits = model.forward(backend, &tokens, &meta, &mut self.cache, &rows)?;
        Ok(Some(StepLogits::Logits(logits)))
    }
}
