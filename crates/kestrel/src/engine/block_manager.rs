//! Fixed-size KV cache blocks: who holds them, and prefix caching of full blocks (nano-vllm's
//! `BlockManager`, with vLLM's LRU reuse of freed cached blocks).
//!
//! Invariants (checked by [`BlockManager::check_invariants`] after every step of the property tests):
//! - Every block is either *used* (`ref_count >= 1`) or *free* (`ref_count == 0`) and then in exactly
//!   one free list; a block's `ref_count` is the number of live sequences whose block table holds it.
//! - A free block with a hash is in the LRU list and is the `hash_to_block` entry of its hash, so a
//!   later hit can revive it until it is reused; every other free block has no hash.
//! - Each `hash_to_block` entry points to a block holding that hash.
//! - A block has a hash iff it is full. The hash chains the block's tokens with the previous block's
//!   hash, so equal prefixes give equal hashes; a hit also compares the block's stored tokens and
//!   parent hash, so a false hit needs a 64-bit collision of two chains ending in the same block.
//! - A sequence only ever writes KV into its last block, and that block is its own (`ref_count == 1`)
//!   until it is full: partial blocks are never hashed, hence never shared.
//!
//! Fresh blocks come from the uncached free list first, then from the least recently freed cached
//! block (whose hash is dropped). Deallocation frees a sequence's blocks last to first, so its tail is
//! evicted before its prefix, which more requests share.
//!
//! A prompt whose blocks all hit keeps its last block out of the hit: it gets a fresh block and is
//! recomputed (at most `block_size` tokens), so prefill always has a token to compute and no sequence
//! writes into a shared block. The block's hash stays registered to the first copy.
//!
//! As in nano-vllm, a full block is hashed when allocated, before its KV is written: the Scheduler
//! must not let another sequence read a hit before the owner's prefill has computed that block.

use std::collections::{BTreeMap, HashMap};

use super::sequence::Sequence;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("sequence {seq} needs {needed} free KV cache blocks but {free} are free")]
    OutOfBlocks {
        seq: u64,
        needed: usize,
        free: usize,
    },
    #[error("sequence {0} already holds KV cache blocks")]
    AlreadyAllocated(u64),
}

/// Chained hash of a full block: stable across runs and platforms (a splitmix64 mix per token).
pub fn hash_block(parent: Option<u64>, tokens: &[u32]) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = mix(parent.map_or(GOLDEN, |p| p ^ 1) ^ tokens.len() as u64);
    for &t in tokens {
        h = mix(h.wrapping_add(GOLDEN) ^ u64::from(t));
    }
    h
}

#[derive(Clone, Debug, Default)]
struct Block {
    ref_count: u32,
    hash: Option<u64>,
    parent_hash: Option<u64>,
    token_ids: Vec<u32>,
    /// Key in the LRU list while free with a hash.
    free_stamp: Option<u64>,
}

pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    hash_to_block: HashMap<u64, u32>,
    /// Free blocks without a hash, reused first.
    free_uncached: Vec<u32>,
    /// Free blocks with a hash, by the time they were freed (least recent first).
    free_cached: BTreeMap<u64, u32>,
    next_stamp: u64,
}

/// What allocating a sequence would do: its blocks' hashes, and the cached blocks its prefix hits.
struct Plan {
    hashes: Vec<Option<u64>>,
    hits: Vec<u32>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> BlockManager {
        assert!(block_size > 0, "block_size must be at least 1");
        assert!(num_blocks <= u32::MAX as usize, "too many blocks");
        BlockManager {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            hash_to_block: HashMap::new(),
            free_uncached: (0..num_blocks as u32).rev().collect(),
            free_cached: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Free blocks, cached ones (revivable or evictable) included.
    pub fn num_free_blocks(&self) -> usize {
        self.free_uncached.len() + self.free_cached.len()
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.blocks[block as usize].ref_count
    }

    fn plan(&self, seq: &Sequence, usable: &dyn Fn(u64) -> bool) -> Plan {
        let n = seq.num_blocks();
        let mut hashes = Vec::with_capacity(n);
        let mut hits = Vec::new();
        let mut parent = None;
        for i in 0..n {
            let tokens = seq.block(i);
            let hash = seq.block_is_final(i).then(|| hash_block(parent, tokens));
            if let (true, Some(h)) = (hits.len() == i, hash) {
                if let Some(&b) = self.hash_to_block.get(&h).filter(|_| usable(h)) {
                    let block = &self.blocks[b as usize];
                    if block.parent_hash == parent && block.token_ids == tokens {
                        hits.push(b);
                    }
                }
            }
            hashes.push(hash);
            parent = hash;
        }
        if n > 0 && hits.len() == n {
            hits.pop(); // leave the last block to compute
        }
        Plan { hashes, hits }
    }

    /// Free blocks that allocating `seq` would take: every block but the hits on used blocks.
    pub fn num_blocks_to_allocate(&self, seq: &Sequence) -> usize {
        self.num_blocks_to_allocate_with(seq, &|_| true)
    }

    /// [`Self::num_blocks_to_allocate`] when only hashes for which `usable` holds may hit.
    pub fn num_blocks_to_allocate_with(
        &self,
        seq: &Sequence,
        usable: &dyn Fn(u64) -> bool,
    ) -> usize {
        let plan = self.plan(seq, usable);
        let shared = plan.hits.iter().filter(|&&b| self.ref_count(b) > 0).count();
        seq.num_blocks() - shared
    }

    pub fn can_allocate(&self, seq: &Sequence) -> bool {
        self.num_blocks_to_allocate(seq) <= self.num_free_blocks()
    }

    /// [`Self::can_allocate`] when only hashes for which `usable` holds may hit.
    pub fn can_allocate_with(&self, seq: &Sequence, usable: &dyn Fn(u64) -> bool) -> bool {
        self.num_blocks_to_allocate_with(seq, usable) <= self.num_free_blocks()
    }

    /// Gives a sequence holding no blocks the blocks of all its tokens, reusing cached full blocks
    /// of its prefix (counted in `num_cached_tokens`). On error nothing changes.
    pub fn allocate(&mut self, seq: &mut Sequence) -> Result<(), BlockError> {
        self.allocate_with(seq, &|_| true)
    }

    /// [`Self::allocate`] where only hashes for which `usable` holds may hit: hits stop at the first
    /// block that may not (its KV is not computed yet, say), and that block and the rest get fresh
    /// blocks, computed again. Their hashes stay registered to the first copies.
    pub fn allocate_with(
        &mut self,
        seq: &mut Sequence,
        usable: &dyn Fn(u64) -> bool,
    ) -> Result<(), BlockError> {
        if !seq.block_table.is_empty() {
            return Err(BlockError::AlreadyAllocated(seq.id));
        }
        let plan = self.plan(seq, usable);
        let shared = plan.hits.iter().filter(|&&b| self.ref_count(b) > 0).count();
        let needed = seq.num_blocks() - shared;
        if needed > self.num_free_blocks() {
            return Err(BlockError::OutOfBlocks {
                seq: seq.id,
                needed,
                free: self.num_free_blocks(),
            });
        }
        // Hits first: a revived block must leave the free lists before fresh blocks are taken.
        for &b in &plan.hits {
            let block = &mut self.blocks[b as usize];
            if block.ref_count == 0 {
                let stamp = block
                    .free_stamp
                    .take()
                    .expect("free cached block has a stamp");
                self.free_cached.remove(&stamp);
            }
            block.ref_count += 1;
            seq.block_table.push(b);
        }
        seq.num_cached_tokens = plan.hits.len() * self.block_size;
        for i in plan.hits.len()..seq.num_blocks() {
            let b = self.take_fresh();
            if let Some(h) = plan.hashes[i] {
                let parent = i.checked_sub(1).and_then(|p| plan.hashes[p]);
                self.register(b, h, parent, seq.block(i));
            }
            seq.block_table.push(b);
        }
        Ok(())
    }

    /// Releases a sequence's blocks, last to first; blocks left unreferenced become free, keeping
    /// their hash for later hits.
    pub fn deallocate(&mut self, seq: &mut Sequence) {
        for &b in seq.block_table.iter().rev() {
            let block = &mut self.blocks[b as usize];
            block.ref_count -= 1;
            if block.ref_count == 0 {
                self.release(b);
            }
        }
        seq.block_table.clear();
        seq.num_cached_tokens = 0;
    }

    /// Releases a sequence whose KV is written only for its first `num_computed` tokens (an aborted
    /// request, possibly mid-prefill). Its full blocks past them were hashed at allocation but never
    /// written: their hashes are dropped first, so no later prefix-cache hit reads unwritten KV.
    pub fn deallocate_partial(&mut self, seq: &mut Sequence, num_computed: usize) {
        let first_unwritten = (num_computed / self.block_size).min(seq.block_table.len());
        for &b in &seq.block_table[first_unwritten..] {
            let block = &mut self.blocks[b as usize];
            // Shared blocks were hits, hence computed; only our own can be unwritten.
            if block.ref_count == 1 {
                if let Some(h) = block.hash.take() {
                    block.parent_hash = None;
                    block.token_ids.clear();
                    if self.hash_to_block.get(&h) == Some(&b) {
                        self.hash_to_block.remove(&h);
                    }
                }
            }
        }
        self.deallocate(seq);
    }

    /// Whether [`Self::may_append`] can run: it needs a free block when the sequence has just
    /// crossed into a new block.
    pub fn can_append(&self, seq: &Sequence) -> bool {
        let needs_block = seq.block_table.len() < seq.num_blocks();
        self.num_free_blocks() >= usize::from(needs_block)
    }

    /// Called after a token is appended to an allocated sequence: takes a block for it when it
    /// starts a new block, and hashes the last block when the token filled it.
    pub fn may_append(&mut self, seq: &mut Sequence) -> Result<(), BlockError> {
        let n = seq.num_blocks();
        if seq.block_table.len() < n {
            if self.num_free_blocks() == 0 {
                return Err(BlockError::OutOfBlocks {
                    seq: seq.id,
                    needed: 1,
                    free: 0,
                });
            }
            let b = self.take_fresh();
            seq.block_table.push(b);
        }
        self.hash_full_block(seq, n - 1);
        Ok(())
    }

    /// Hashes (and registers for prefix-cache hits) the sequence's block `i` if it is full, holds no
    /// pending token, is held and has no hash yet: after [`Self::may_append`], or when a pending
    /// token is replaced by the real one.
    pub fn hash_full_block(&mut self, seq: &Sequence, i: usize) {
        let Some(&b) = seq.block_table.get(i) else {
            return;
        };
        if !seq.block_is_final(i) || self.blocks[b as usize].hash.is_some() {
            return;
        }
        let parent = i
            .checked_sub(1)
            .and_then(|p| self.blocks[seq.block_table[p] as usize].hash);
        self.register(b, hash_block(parent, seq.block(i)), parent, seq.block(i));
    }

    /// Records a full block's hash; the first block registered under a hash stays its entry.
    fn register(&mut self, b: u32, hash: u64, parent: Option<u64>, tokens: &[u32]) {
        let block = &mut self.blocks[b as usize];
        block.hash = Some(hash);
        block.parent_hash = parent;
        block.token_ids = tokens.to_vec();
        self.hash_to_block.entry(hash).or_insert(b);
    }

    /// A free block with `ref_count` 1 and no hash: uncached first, else the LRU cached one.
    fn take_fresh(&mut self) -> u32 {
        let b = match self.free_uncached.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.free_cached.pop_first().expect("a free block");
                let block = &mut self.blocks[b as usize];
                block.free_stamp = None;
                let hash = block.hash.expect("cached block has a hash");
                self.hash_to_block.remove(&hash);
                b
            }
        };
        let block = &mut self.blocks[b as usize];
        block.ref_count = 1;
        block.hash = None;
        block.parent_hash = None;
        block.token_ids.clear();
        b
    }

    fn release(&mut self, b: u32) {
        let block = &mut self.blocks[b as usize];
        match block.hash {
            Some(h) if self.hash_to_block.get(&h) == Some(&b) => {
                block.free_stamp = Some(self.next_stamp);
                self.free_cached.insert(self.next_stamp, b);
                self.next_stamp += 1;
            }
            _ => {
                // An unhashed block, or a duplicate no hit can reach.
                block.hash = None;
                block.parent_hash = None;
                block.token_ids.clear();
                self.free_uncached.push(b);
            }
        }
    }

    /// Checks the module's invariants against the sequences holding blocks.
    pub fn check_invariants(&self, live: &[&Sequence]) -> Result<(), String> {
        let n = self.blocks.len();
        let mut refs = vec![0u32; n];
        for seq in live {
            if seq.block_table.len() != seq.num_blocks() {
                return Err(format!(
                    "sequence {} has {} tokens in {} blocks",
                    seq.id,
                    seq.len(),
                    seq.block_table.len()
                ));
            }
            if seq.num_cached_tokens % self.block_size != 0
                || (seq.num_cached_tokens > 0 && seq.num_cached_tokens >= seq.len())
            {
                return Err(format!(
                    "sequence {} caches {} tokens",
                    seq.id, seq.num_cached_tokens
                ));
            }
            let mut parent = None;
            for (i, &b) in seq.block_table.iter().enumerate() {
                let block = self.blocks.get(b as usize).ok_or(format!("no block {b}"))?;
                refs[b as usize] += 1;
                let tokens = seq.block(i);
                // A full block holding a pending token is hashed once the token arrives.
                let full = seq.block_is_final(i);
                let expect = full.then(|| hash_block(parent, tokens));
                if block.hash != expect || (full && block.token_ids != tokens) {
                    return Err(format!(
                        "sequence {} block {i} ({b}) has a wrong hash",
                        seq.id
                    ));
                }
                if !full && block.ref_count != 1 {
                    return Err(format!("partial block {b} is shared"));
                }
                parent = expect;
            }
        }
        let mut free = vec![false; n];
        for &b in self.free_uncached.iter().chain(self.free_cached.values()) {
            if std::mem::replace(&mut free[b as usize], true) {
                return Err(format!("block {b} is free twice"));
            }
        }
        for (b, block) in self.blocks.iter().enumerate() {
            if block.ref_count != refs[b] {
                return Err(format!(
                    "block {b}: ref_count {} but {} holders",
                    block.ref_count, refs[b]
                ));
            }
            if free[b] == (block.ref_count > 0) {
                return Err(format!(
                    "block {b}: free {} with ref_count {}",
                    free[b], block.ref_count
                ));
            }
        }
        for (&stamp, &b) in &self.free_cached {
            let block = &self.blocks[b as usize];
            let h = block
                .hash
                .ok_or(format!("cached free block {b} has no hash"))?;
            if block.free_stamp != Some(stamp) || self.hash_to_block.get(&h) != Some(&b) {
                return Err(format!(
                    "cached free block {b} is not reachable by its hash"
                ));
            }
        }
        if let Some(&b) = self
            .free_uncached
            .iter()
            .find(|&&b| self.blocks[b as usize].hash.is_some())
        {
            return Err(format!("uncached free block {b} has a hash"));
        }
        for (&h, &b) in &self.hash_to_block {
            if self.blocks.get(b as usize).and_then(|block| block.hash) != Some(h) {
                return Err(format!("hash entry {h:#x} points to block {b} without it"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "block_manager_tests.rs"]
mod tests;
