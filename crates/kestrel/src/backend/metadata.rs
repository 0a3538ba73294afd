//! The explicit description of a forward step over a paged KV cache (no global state).

use crate::{KestrelError, Result};

/// One sequence's part of a batch: `query_len` new tokens starting at `query_start` in the batch, after
/// which the sequence holds `context_len` tokens in the cache (so its first new token sits at position
/// `context_len - query_len`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqSlice {
    pub query_start: usize,
    pub query_len: usize,
    pub context_len: usize,
    /// Cache blocks holding this sequence's tokens, in order.
    pub block_table: Vec<u32>,
}

/// What the attention ops need to know about a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttnMetadata {
    pub block_size: usize,
    pub seqs: Vec<SeqSlice>,
    /// Per batch token: its position in its sequence.
    pub positions: Vec<u32>,
    /// Per batch token: the cache slot (`block * block_size + offset`) its k and v go to.
    pub slot_mapping: Vec<u32>,
}

impl AttnMetadata {
    /// Builds positions and slot mapping from the sequences' slices and block tables.
    pub fn new(block_size: usize, seqs: Vec<SeqSlice>) -> Result<AttnMetadata> {
        let total: usize = seqs.iter().map(|s| s.query_len).sum();
        let mut positions = Vec::with_capacity(total);
        let mut slot_mapping = Vec::with_capacity(total);
        for (i, s) in seqs.iter().enumerate() {
            if s.query_start != positions.len() || s.query_len > s.context_len {
                return Err(KestrelError::Backend(format!(
                    "sequence {i} of the batch is not contiguous"
                )));
            }
            if s.block_table.len() * block_size < s.context_len {
                return Err(KestrelError::Backend(format!(
                    "sequence {i} holds {} tokens but has only {} blocks of {block_size}",
                    s.context_len,
                    s.block_table.len()
                )));
            }
            for pos in s.context_len - s.query_len..s.context_len {
                positions.push(pos as u32);
                let block = s.block_table[pos / block_size];
                slot_mapping.push(block * block_size as u32 + (pos % block_size) as u32);
            }
        }
        Ok(AttnMetadata {
            block_size,
            seqs,
            positions,
            slot_mapping,
        })
    }

    pub fn num_tokens(&self) -> usize {
        self.positions.len()
    }

    /// Batch row of each sequence's last token (where its next-token logits come from).
    pub fn last_token_rows(&self) -> Vec<usize> {
        self.seqs
            .iter()
            .map(|s| s.query_start + s.query_len - 1)
            .collect()
    }
}

/// The KV cache's geometry: `num_blocks` blocks of `block_size` tokens for every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheSpec {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}
