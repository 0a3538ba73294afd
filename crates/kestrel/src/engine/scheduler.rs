//! Which sequences run each step, and how many tokens each feeds (nano-vllm's `Scheduler`, with
//! vLLM-style chunked prefill mixed with decodes).
//!
//! Invariants (checked by the property tests after every [`Scheduler::schedule`]):
//! - A step feeds at most `max_num_batched_tokens` tokens and at most `max_num_seqs` sequences run.
//! - Every running sequence holds blocks for all its tokens, and the BlockManager's invariants hold
//!   over the running sequences (between `schedule` and `postprocess`; after `postprocess` a decoded
//!   sequence has one token whose slot the next `schedule` takes).
//! - Waiting sequences hold no blocks. Never-started sequences leave the waiting queue in the order
//!   they were added: admission only ever takes the queue's front and stops at the first sequence
//!   that does not fit. Preempted sequences go back to the front, oldest first.
//! - Each step: decodes of running sequences (1 token each) first, then the next prefill chunks of
//!   running sequences, then new admissions in FIFO order while seats, tokens and blocks allow.
//!
//! Prefix-cache safety. The BlockManager hashes a full block when it is allocated, before its KV
//! is written, and the scheduler cannot change that. It guarantees a hit never reads uncomputed KV:
//! 1. *Pending blocks.* A full block of a running sequence that is not computed before this step
//!    (prompt blocks still being prefilled, including this step's chunk, and a decode block that
//!    this step's token fills) is *pending*. An admission may not hit a pending hash: its hits stop
//!    there and it computes that block and the rest itself (vLLM's behaviour: a miss, not a wait, so
//!    requests sharing a long prefix that is still being prefilled do not hold up the queue). This
//!    covers hits inside one step too (each admission's own blocks join the pending set).
//! 2. *No uncomputed block is ever freed with its hash.* Freed hashed blocks stay hit-able, so a
//!    preemption victim must have computed all its full blocks: a sequence in the middle of its
//!    prefill is never chosen (it already holds all its blocks and needs none to progress); a
//!    finished sequence's last sampled token is never given a slot, so its hashed blocks are computed.
//!
//! With BlockManager support for registering a block's hash only once computed (a
//! `mark_computed(seq, num_tokens)` call from `postprocess`), rule 1 would become unnecessary and
//! any running sequence could be preempted.

use std::collections::{HashMap, HashSet, VecDeque};

use super::block_manager::{hash_block, BlockManager};
use super::sequence::{Sequence, SequenceStatus, PENDING_TOKEN};

#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub chunked_prefill: bool,
}

/// When a sequence stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqParams {
    /// Generated tokens at most (at least 1).
    pub max_tokens: usize,
    /// Stop after sampling this token (it is kept); `None` ignores eos.
    pub eos: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("sequence {0}: the prompt is empty")]
    EmptyPrompt(u64),
    #[error("sequence {0}: max_tokens must be at least 1")]
    ZeroMaxTokens(u64),
    #[error("sequence {seq}: prompt of {prompt} tokens plus max_tokens {max_tokens} needs {needed} {what} but the limit is {limit}")]
    TooLong {
        seq: u64,
        prompt: usize,
        max_tokens: usize,
        needed: usize,
        what: &'static str,
        limit: usize,
    },
    #[error("sequence {0} was already added")]
    Duplicate(u64),
    #[error("block_size {0} differs from the scheduler's")]
    BlockSize(usize),
    #[error("scheduler config: {0}")]
    Config(&'static str),
}

/// One sequence's share of a step, in what the runner needs to build the attention metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq_id: u64,
    /// Tokens to feed: positions `context_len - token_ids.len() .. context_len`.
    pub token_ids: Vec<u32>,
    /// Tokens with KV after the step.
    pub context_len: usize,
    pub block_table: Vec<u32>,
    /// Whether the step ends at the sequence's last token, so a token is sampled for it.
    pub samples: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduledBatch {
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted while planning this step (some may be re-admitted in `seqs`).
    pub preempted: Vec<u64>,
}

impl ScheduledBatch {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.token_ids.len()).sum()
    }
}

struct Entry {
    seq: Sequence,
    params: SeqParams,
    /// Leading tokens whose KV is computed (cache hits included).
    num_computed: usize,
    /// Chained hashes of the full blocks of `seq.token_ids`.
    hashes: Vec<u64>,
    /// A sampled token was appended and has no slot yet (`may_append` pending).
    needs_slot: bool,
}

impl Entry {
    /// Preempting frees every full block with its hash: all of them must be computed.
    fn safe_to_preempt(&self) -> bool {
        let covered = self.seq.len() - usize::from(self.needs_slot);
        covered / self.seq.block_size * self.seq.block_size <= self.num_computed
    }
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    bm: BlockManager,
    waiting: VecDeque<Entry>,
    /// In admission order.
    running: Vec<Entry>,
    finished: HashMap<u64, Sequence>,
    ids: HashSet<u64>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Result<Scheduler, SchedulerError> {
        if cfg.max_num_seqs == 0 {
            return Err(SchedulerError::Config("max_num_seqs must be at least 1"));
        }
        if cfg.max_num_batched_tokens < cfg.max_num_seqs {
            return Err(SchedulerError::Config(
                "max_num_batched_tokens must be at least max_num_seqs so decodes always fit",
            ));
        }
        if cfg.block_size == 0 || cfg.num_blocks == 0 {
            return Err(SchedulerError::Config(
                "block_size and num_blocks must be at least 1",
            ));
        }
        Ok(Scheduler {
            bm: BlockManager::new(cfg.num_blocks, cfg.block_size),
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            finished: HashMap::new(),
            ids: HashSet::new(),
        })
    }

    /// Queues a waiting sequence holding no blocks; refuses one that could never finish.
    pub fn add(&mut self, mut seq: Sequence, params: SeqParams) -> Result<(), SchedulerError> {
        let (id, prompt, bs) = (seq.id, seq.len(), self.cfg.block_size);
        if seq.is_empty() {
            return Err(SchedulerError::EmptyPrompt(id));
        }
        if params.max_tokens == 0 {
            return Err(SchedulerError::ZeroMaxTokens(id));
        }
        if seq.block_size != bs {
            return Err(SchedulerError::BlockSize(seq.block_size));
        }
        let too_long = |needed, what, limit| SchedulerError::TooLong {
            seq: id,
            prompt,
            max_tokens: params.max_tokens,
            needed,
            what,
            limit,
        };
        // The last sampled token never gets a slot.
        let max_len = prompt + params.max_tokens - 1;
        if max_len.div_ceil(bs) > self.cfg.num_blocks {
            return Err(too_long(
                max_len.div_ceil(bs),
                "KV blocks",
                self.cfg.num_blocks,
            ));
        }
        if !self.cfg.chunked_prefill && max_len > self.cfg.max_num_batched_tokens {
            let limit = self.cfg.max_num_batched_tokens;
            return Err(too_long(max_len, "batched tokens", limit));
        }
        if !self.ids.insert(id) {
            return Err(SchedulerError::Duplicate(id));
        }
        seq.status = SequenceStatus::Waiting;
        seq.block_table.clear();
        let mut hashes = Vec::new();
        for i in 0..seq.len() / bs {
            hashes.push(hash_block(hashes.last().copied(), seq.block(i)));
        }
        self.waiting.push_back(Entry {
            seq,
            params,
            num_computed: 0,
            hashes,
            needs_slot: false,
        });
        Ok(())
    }

    pub fn is_finished(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn block_manager(&self) -> &BlockManager {
        &self.bm
    }

    pub fn running(&self) -> impl Iterator<Item = &Sequence> {
        self.running.iter().map(|e| &e.seq)
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Ids in queue order (front first).
    pub fn waiting_ids(&self) -> Vec<u64> {
        self.waiting.iter().map(|e| e.seq.id).collect()
    }

    /// Leading tokens of a running sequence whose KV is computed.
    pub fn num_computed_tokens(&self, id: u64) -> Option<usize> {
        self.running
            .iter()
            .find(|e| e.seq.id == id)
            .map(|e| e.num_computed)
    }

    /// Hands over a finished sequence (prompt and generated tokens).
    pub fn take_finished(&mut self, id: u64) -> Option<Sequence> {
        let seq = self.finished.remove(&id)?;
        self.ids.remove(&id);
        Some(seq)
    }

    /// Drops a sequence wherever it is (waiting, running or finished) and frees its blocks; false
    /// when the id is unknown. Called between steps: a running sequence may be mid-prefill, so its
    /// unwritten blocks leave the prefix cache with it (rule 2 above).
    pub fn abort(&mut self, id: u64) -> bool {
        if let Some(i) = self.waiting.iter().position(|e| e.seq.id == id) {
            self.waiting.remove(i);
        } else if let Some(i) = self.running.iter().position(|e| e.seq.id == id) {
            let mut e = self.running.remove(i);
            self.bm.deallocate_partial(&mut e.seq, e.num_computed);
        } else if self.finished.remove(&id).is_none() {
            return false;
        }
        self.ids.remove(&id);
        true
    }

    /// A launched step's tokens `(id, pos, token)`: each replaces the [`PENDING_TOKEN`] at `pos` of
    /// sequence `id` (wherever it is) and hashes the block it completes, if any. Whether each id was
    /// known.
    pub fn set_tokens(&mut self, tokens: &[(u64, usize, u32)]) -> Vec<bool> {
        let index = self.running_index();
        tokens
            .iter()
            .map(|&(id, pos, tok)| self.set_token_at(index.get(&id).copied(), id, pos, tok))
            .collect()
    }

    /// Each running sequence's index in `running`, by id.
    fn running_index(&self) -> HashMap<u64, usize> {
        self.running
            .iter()
            .enumerate()
            .map(|(i, e)| (e.seq.id, i))
            .collect()
    }

    /// `at`: the sequence's index in `running`, if it runs.
    fn set_token_at(&mut self, at: Option<usize>, id: u64, pos: usize, token: u32) -> bool {
        let bs = self.cfg.block_size;
        let entry = match at {
            Some(i) => Some(&mut self.running[i]),
            None => self.waiting.iter_mut().find(|e| e.seq.id == id),
        };
        let Some(e) = entry else {
            return match self.finished.get_mut(&id) {
                Some(seq) if pos < seq.len() => {
                    seq.token_ids[pos] = token;
                    true
                }
                _ => false,
            };
        };
        if pos >= e.seq.len() {
            return false;
        }
        e.seq.token_ids[pos] = token;
        let block = pos / bs;
        if e.seq.block_is_final(block) && e.hashes.len() == block {
            let h = hash_block(e.hashes.last().copied(), e.seq.block(block));
            e.hashes.push(h);
        }
        self.bm.hash_full_block(&e.seq, block);
        true
    }

    fn preempt(&mut self, i: usize) -> u64 {
        let mut e = self.running.remove(i);
        self.bm.deallocate(&mut e.seq);
        e.seq.status = SequenceStatus::Waiting;
        e.num_computed = 0;
        e.needs_slot = false;
        let id = e.seq.id;
        self.waiting.push_front(e);
        id
    }

    fn push(batch: &mut ScheduledBatch, e: &Entry, n: usize) {
        let end = e.num_computed + n;
        batch.seqs.push(ScheduledSeq {
            seq_id: e.seq.id,
            token_ids: e.seq.token_ids[e.num_computed..end].to_vec(),
            context_len: end,
            block_table: e.seq.block_table.clone(),
            samples: end == e.seq.len(),
        });
    }

    /// Plans one step; `None` when nothing can run (nothing left, or nothing fits).
    pub fn schedule(&mut self) -> Option<ScheduledBatch> {
        let mut batch = ScheduledBatch::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        // Decodes, in admission order; victims are the most recently admitted safe sequences.
        let mut decoded = HashSet::new();
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].needs_slot {
                i += 1;
                continue;
            }
            while !self.bm.can_append(&self.running[i].seq) {
                match (i + 1..self.running.len())
                    .rev()
                    .find(|&j| self.running[j].safe_to_preempt())
                {
                    Some(j) => batch.preempted.push(self.preempt(j)),
                    None => break,
                }
            }
            if !self.bm.can_append(&self.running[i].seq) {
                batch.preempted.push(self.preempt(i));
                continue;
            }
            let e = &mut self.running[i];
            self.bm
                .may_append(&mut e.seq)
                .expect("can_append checked a free block");
            e.needs_slot = false;
            decoded.insert(e.seq.id);
            Self::push(&mut batch, e, 1);
            budget -= 1;
            i += 1;
        }
        // Next chunks of partially prefilled sequences.
        for e in self.running.iter().filter(|e| !decoded.contains(&e.seq.id)) {
            let left = e.seq.len() - e.num_computed;
            if left > 0 && budget > 0 {
                let n = left.min(budget);
                Self::push(&mut batch, e, n);
                budget -= n;
            }
        }
        // Blocks whose KV is not computed before this step ends: no admission may hit them.
        let bs = self.cfg.block_size;
        let mut pending: HashSet<u64> = HashSet::new();
        for e in &self.running {
            pending.extend(e.hashes.iter().skip(e.num_computed / bs));
        }
        // Admissions, FIFO.
        while let Some(front) = self.waiting.front() {
            let computed = |h: u64| !pending.contains(&h);
            let fits = self.running.len() < self.cfg.max_num_seqs
                && budget > 0
                && (self.cfg.chunked_prefill || front.seq.len() <= budget)
                && self.bm.can_allocate_with(&front.seq, &computed);
            if !fits {
                break;
            }
            let mut e = self.waiting.pop_front().expect("front exists");
            self.bm
                .allocate_with(&mut e.seq, &computed)
                .expect("can_allocate checked the blocks");
            e.seq.status = SequenceStatus::Running;
            e.num_computed = e.seq.num_cached_tokens;
            let n = (e.seq.len() - e.num_computed).min(budget);
            Self::push(&mut batch, &e, n);
            budget -= n;
            pending.extend(e.hashes.iter().skip(e.num_computed / bs));
            self.running.push(e);
        }
        (!batch.seqs.is_empty()).then_some(batch)
    }

    /// Applies a step's results: `sampled[k]` is the token sampled for `batch.seqs[k]` (`Some`
    /// exactly where `samples`). Returns the ids of the sequences that finished.
    pub fn postprocess(&mut self, batch: &ScheduledBatch, sampled: &[Option<u32>]) -> Vec<u64> {
        assert_eq!(
            batch.seqs.len(),
            sampled.len(),
            "one sample per scheduled sequence"
        );
        let bs = self.cfg.block_size;
        // Running sequences by id, once (a step may hold hundreds).
        let index = self.running_index();
        let mut done = Vec::new();
        for (s, &tok) in batch.seqs.iter().zip(sampled) {
            let i = *index.get(&s.seq_id).expect("scheduled sequence is running");
            let e = &mut self.running[i];
            e.num_computed = s.context_len;
            if e.num_computed < e.seq.len() {
                continue;
            }
            let tok = tok.expect("a token is sampled at the end of a sequence's tokens");
            e.seq.append_token(tok);
            // a pending token's block is hashed when the real token replaces it (set_tokens)
            if e.seq.len().is_multiple_of(bs) && tok != PENDING_TOKEN {
                let parent = e.hashes.last().copied();
                let h = hash_block(parent, e.seq.block(e.seq.len() / bs - 1));
                e.hashes.push(h);
            }
            let stop =
                e.params.eos == Some(tok) || e.seq.num_completion_tokens() >= e.params.max_tokens;
            if stop {
                done.push(e.seq.id);
            } else {
                e.needs_slot = true;
            }
        }
        if !done.is_empty() {
            // Finished sequences leave `running` in one pass, the others keeping their order.
            let ended: HashSet<u64> = done.iter().copied().collect();
            for mut e in std::mem::take(&mut self.running) {
                if ended.contains(&e.seq.id) {
                    self.bm.deallocate(&mut e.seq);
                    e.seq.status = SequenceStatus::Finished;
                    self.finished.insert(e.seq.id, e.seq);
                } else {
                    self.running.push(e);
                }
            }
        }
        done
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
