//! A forward step's attention metadata on the device, uploaded once per forward (not once per layer).
//!
//! Invariants:
//! - All the metadata of a step lives in one u32 device buffer, copied from the host in one transfer.
//!   Its regions (positions, slot mapping, cu_seqlens_q, context lens, block tables) sit at offsets
//!   that depend only on the buffer's capacities, so while a batch fits, every step reads the same
//!   device addresses (CUDA graphs will need that).
//! - The buffer is reused: [`CudaMetadata`] takes it from the backend's pool and gives it back when
//!   dropped; it grows (to the next power of two of each region) only when a batch doesn't fit.
//! - Block tables are `[num_seqs, max_blocks_per_seq]`, each row padded with block 0 past the blocks
//!   the sequence's context uses (the kernels never read past the context).

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaView};
use kestrel::backend::AttnMetadata;
use kestrel::{KestrelError, Result};

use crate::CudaDevice;

/// Region sizes of a metadata buffer, in u32 elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Capacity {
    tokens: usize,
    seqs: usize,
    table: usize,
}

impl Capacity {
    fn total(&self) -> usize {
        2 * self.tokens + (self.seqs + 1) + self.seqs + self.table
    }
    fn covers(&self, need: &Capacity) -> bool {
        self.tokens >= need.tokens && self.seqs >= need.seqs && self.table >= need.table
    }
    fn grown_to(&self, need: &Capacity) -> Capacity {
        let up = |have: usize, want: usize| have.max(want.next_power_of_two());
        Capacity {
            tokens: up(self.tokens, need.tokens),
            seqs: up(self.seqs, need.seqs),
            table: up(self.table, need.table),
        }
    }
    /// (positions, slot_mapping, cu_seqlens_q, context_lens, block_tables) offsets.
    fn offsets(&self) -> [usize; 5] {
        let pos = 0;
        let slots = pos + self.tokens;
        let cu = slots + self.tokens;
        let ctx = cu + self.seqs + 1;
        let tables = ctx + self.seqs;
        [pos, slots, cu, ctx, tables]
    }
}

pub(crate) struct MetaBuffer {
    cap: Capacity,
    data: CudaSlice<u32>,
}

/// The backend's reusable metadata buffer (None while a step holds it).
pub(crate) type MetaPool = Arc<Mutex<Option<MetaBuffer>>>;

/// What the CUDA attention ops read about a batch.
pub struct CudaMetadata {
    pub num_tokens: usize,
    pub num_seqs: usize,
    pub max_query_len: usize,
    pub max_context_len: usize,
    pub max_blocks_per_seq: usize,
    pub block_size: usize,
    buf: Option<MetaBuffer>,
    pool: MetaPool,
}

impl CudaMetadata {
    /// Packs `meta` and uploads it into the pool's buffer (grown if needed).
    pub(crate) fn upload(dev: &CudaDevice, pool: &MetaPool, meta: &AttnMetadata) -> Result<Self> {
        let bs = meta.block_size;
        if bs == 0 {
            return Err(KestrelError::Backend("block_size is 0".into()));
        }
        let num_tokens = meta.num_tokens();
        let num_seqs = meta.seqs.len();
        let max_blocks = meta
            .seqs
            .iter()
            .map(|s| s.context_len.div_ceil(bs))
            .max()
            .unwrap_or(0)
            .max(1);
        let need = Capacity {
            tokens: num_tokens.max(1),
            seqs: num_seqs.max(1),
            table: (num_seqs * max_blocks).max(1),
        };
        let taken = pool.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut buf = match taken {
            Some(b) if b.cap.covers(&need) => b,
            old => {
                let cap = old.map_or(need, |b| b.cap.grown_to(&need));
                let data = dev
                    .stream()
                    .alloc_zeros::<u32>(cap.total())
                    .map_err(|e| KestrelError::Backend(format!("allocating metadata: {e}")))?;
                MetaBuffer { cap, data }
            }
        };
        let [pos, slots, cu, ctx, tables] = buf.cap.offsets();
        let mut host = vec![0u32; buf.cap.total()];
        host[pos..pos + num_tokens].copy_from_slice(&meta.positions);
        host[slots..slots + num_tokens].copy_from_slice(&meta.slot_mapping);
        let mut max_query_len = 0;
        let mut max_context_len = 0;
        for (i, s) in meta.seqs.iter().enumerate() {
            host[cu + i] = s.query_start as u32;
            host[ctx + i] = s.context_len as u32;
            let used = s.context_len.div_ceil(bs);
            if s.block_table.len() < used {
                return Err(KestrelError::Backend(format!(
                    "sequence {i} holds {} tokens but has only {} blocks of {bs}",
                    s.context_len,
                    s.block_table.len()
                )));
            }
            host[tables + i * max_blocks..][..used].copy_from_slice(&s.block_table[..used]);
            max_query_len = max_query_len.max(s.query_len);
            max_context_len = max_context_len.max(s.context_len);
        }
        host[cu + num_seqs] = num_tokens as u32;
        dev.stream()
            .memcpy_htod(&host, &mut buf.data)
            .map_err(|e| KestrelError::Backend(format!("uploading metadata: {e}")))?;
        Ok(CudaMetadata {
            num_tokens,
            num_seqs,
            max_query_len,
            max_context_len,
            max_blocks_per_seq: max_blocks,
            block_size: bs,
            buf: Some(buf),
            pool: pool.clone(),
        })
    }

    fn region(&self, which: usize, len: usize) -> CudaView<'_, u32> {
        let buf = self.buf.as_ref().expect("metadata buffer held until drop");
        let start = buf.cap.offsets()[which];
        buf.data.slice(start..start + len)
    }
    /// `[num_tokens]` positions.
    pub fn positions(&self) -> CudaView<'_, u32> {
        self.region(0, self.num_tokens)
    }
    /// `[num_tokens]` cache slots.
    pub fn slot_mapping(&self) -> CudaView<'_, u32> {
        self.region(1, self.num_tokens)
    }
    /// `[num_seqs + 1]` first batch row of each sequence, then the number of tokens.
    pub fn cu_seqlens_q(&self) -> CudaView<'_, u32> {
        self.region(2, self.num_seqs + 1)
    }
    /// `[num_seqs]` tokens in the cache after this step.
    pub fn context_lens(&self) -> CudaView<'_, u32> {
        self.region(3, self.num_seqs)
    }
    /// `[num_seqs, max_blocks_per_seq]`.
    pub fn block_tables(&self) -> CudaView<'_, u32> {
        self.region(4, self.num_seqs * self.max_blocks_per_seq)
    }
}

impl Drop for CudaMetadata {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            *self.pool.lock().unwrap_or_else(|e| e.into_inner()) = Some(buf);
        }
    }
}
