//! A request's tokens and its place in the paged KV cache: the one type the Scheduler, the
//! BlockManager and the Runner share (nano-vllm's `Sequence`).

/// Stands for a token sampled by a decode step that is launched but not read back yet (asynchronous
/// scheduling); replaced by the real token when it is ([`super::scheduler::Scheduler::set_tokens`]).
/// No block holding it is hashed until then. Never a vocabulary id.
pub const PENDING_TOKEN: u32 = u32::MAX;

/// Where a sequence is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceStatus {
    Waiting,
    Running,
    Finished,
}

/// Prompt and generated tokens of one request, and the cache blocks that hold them.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub id: u64,
    pub status: SequenceStatus,
    /// Prompt tokens, then generated tokens.
    pub token_ids: Vec<u32>,
    pub num_prompt_tokens: usize,
    /// Leading tokens whose KV came from the prefix cache (a multiple of `block_size`).
    pub num_cached_tokens: usize,
    /// Cache blocks holding this sequence's tokens, in order; empty while it holds none.
    pub block_table: Vec<u32>,
    pub block_size: usize,
}

impl Sequence {
    /// A waiting sequence holding no blocks. `block_size` must be at least 1.
    pub fn new(id: u64, prompt: Vec<u32>, block_size: usize) -> Sequence {
        assert!(block_size > 0, "block_size must be at least 1");
        Sequence {
            id,
            status: SequenceStatus::Waiting,
            num_prompt_tokens: prompt.len(),
            token_ids: prompt,
            num_cached_tokens: 0,
            block_table: Vec::new(),
            block_size,
        }
    }

    pub fn len(&self) -> usize {
        self.token_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty()
    }

    pub fn is_finished(&self) -> bool {
        self.status == SequenceStatus::Finished
    }

    pub fn num_completion_tokens(&self) -> usize {
        self.len() - self.num_prompt_tokens
    }

    pub fn completion_token_ids(&self) -> &[u32] {
        &self.token_ids[self.num_prompt_tokens..]
    }

    pub fn last_token(&self) -> Option<u32> {
        self.token_ids.last().copied()
    }

    /// Blocks needed to hold every token.
    pub fn num_blocks(&self) -> usize {
        self.len().div_ceil(self.block_size)
    }

    /// Tokens in the last block (0 for an empty sequence, `block_size` when it is full).
    pub fn last_block_num_tokens(&self) -> usize {
        self.len() - self.num_blocks().saturating_sub(1) * self.block_size
    }

    /// The tokens of block `i` (shorter than `block_size` only for the last block).
    pub fn block(&self, i: usize) -> &[u32] {
        let start = i * self.block_size;
        &self.token_ids[start..(start + self.block_size).min(self.len())]
    }

    pub fn append_token(&mut self, token: u32) {
        self.token_ids.push(token);
    }

    /// Whether block `i` is full and holds no [`PENDING_TOKEN`]: only such blocks are hashed.
    pub fn block_is_final(&self, i: usize) -> bool {
        let b = self.block(i);
        b.len() == self.block_size && !b.contains(&PENDING_TOKEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_tokens() {
        let mut s = Sequence::new(7, vec![1, 2, 3, 4, 5], 2);
        assert_eq!(
            (s.len(), s.num_blocks(), s.last_block_num_tokens()),
            (5, 3, 1)
        );
        assert_eq!((s.block(0), s.block(2)), (&[1, 2][..], &[5][..]));
        s.append_token(6);
        assert_eq!((s.num_blocks(), s.last_block_num_tokens()), (3, 2));
        assert_eq!(s.completion_token_ids(), &[6]);
        let e = Sequence::new(8, vec![], 4);
        assert_eq!((e.num_blocks(), e.last_block_num_tokens()), (0, 0));
    }
}
