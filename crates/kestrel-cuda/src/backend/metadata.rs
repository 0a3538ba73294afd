//! A forward step's attention metadata on the device, uploaded once per forward (not once per layer).
//!
//! Invariants:
//! - All the metadata of a step lives in one u32 device buffer, copied from the host in one transfer.
//!   Its regions (positions, slot mapping, cu_seqlens_q, context lens, block tables) sit at offsets
//!   that depend only on the buffer's capacities, so while a batch fits, every step reads the same
//!   device addresses (CUDA graphs will need that).
//! - The buffer is reused: [`CudaMetadata`] takes it from the backend's pool and gives it back when
//!   dropped; it grows (to the next power of two of each region) only when a batch doesn't fit.
//! - A CUDA-graph decode step has its own buffer ([`decode_pool`]), sized for its batch-size bucket
//!   and block-table width, filled before the graph replays ([`upload_decode`]).
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
    /// Sequences with exactly one new token (decodes; in a mixed step, the decode kernel's rows).
    pub single_query_seqs: usize,
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
        let mut single_query_seqs = 0;
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
            single_query_seqs += (s.query_len == 1) as usize;
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
            single_query_seqs,
            max_context_len,
            max_blocks_per_seq: max_blocks,
            block_size: bs,
            buf: Some(buf),
            pool: pool.clone(),
        })
    }

    /// The metadata of a padded decode step whose buffer [`upload_decode`] filled: `bucket`
    /// sequences of one token each, block tables `width` wide. Nothing is copied (CUDA graph capture).
    pub(crate) fn staged(
        pool: &MetaPool,
        bucket: usize,
        width: usize,
        block_size: usize,
        max_context_len: usize,
    ) -> Result<Self> {
        let buf = pool.lock().unwrap_or_else(|e| e.into_inner()).take();
        let buf = buf.ok_or_else(|| {
            KestrelError::Backend("a decode step's metadata buffer is already in use".into())
        })?;
        if buf.cap != decode_capacity(bucket, width) {
            return Err(KestrelError::Backend(format!(
                "decode metadata buffer sized {:?}, the step needs {bucket} x {width}",
                buf.cap
            )));
        }
        Ok(CudaMetadata {
            num_tokens: bucket,
            num_seqs: bucket,
            max_query_len: 1,
            single_query_seqs: bucket,
            max_context_len,
            max_blocks_per_seq: width,
            block_size,
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

fn decode_capacity(bucket: usize, width: usize) -> Capacity {
    Capacity {
        tokens: bucket,
        seqs: bucket,
        table: bucket * width,
    }
}

/// A metadata buffer for decode steps of `bucket` sequences with block tables `width` wide, owned by
/// one CUDA graph (its address is baked into the graph).
pub(crate) fn decode_pool(dev: &CudaDevice, bucket: usize, width: usize) -> Result<MetaPool> {
    let cap = decode_capacity(bucket, width);
    let data = dev
        .stream()
        .alloc_zeros::<u32>(cap.total())
        .map_err(|e| KestrelError::Backend(format!("allocating decode metadata: {e}")))?;
    Ok(Arc::new(Mutex::new(Some(MetaBuffer { cap, data }))))
}

/// A decode step's `meta` (every sequence one new token, at most `bucket` sequences, none using more
/// than `width` blocks) packed in the layout of a [`decode_pool`] buffer, padded to `bucket`
/// sequences: a padding sequence owns one padding token row (position 0, slot `u32::MAX`: no cache
/// write) and has no keys (the decode kernel writes zeros for it and reads no block table).
fn pack_decode(meta: &AttnMetadata, bucket: usize, width: usize) -> Result<Vec<u32>> {
    let n = meta.seqs.len();
    let bs = meta.block_size;
    if n > bucket || meta.num_tokens() != n || bs == 0 {
        return Err(KestrelError::Backend(format!(
            "a decode step of {n} sequences and {} tokens (block size {bs}) in a bucket of {bucket}",
            meta.num_tokens()
        )));
    }
    let cap = decode_capacity(bucket, width);
    let [pos, slots, cu, ctx, tables] = cap.offsets();
    let mut host = vec![0u32; cap.total()];
    host[pos..pos + n].copy_from_slice(&meta.positions);
    host[slots..slots + n].copy_from_slice(&meta.slot_mapping);
    host[slots + n..slots + bucket].fill(u32::MAX);
    for (i, c) in host[cu..=cu + bucket].iter_mut().enumerate() {
        *c = i as u32;
    }
    for (i, s) in meta.seqs.iter().enumerate() {
        let used = s.context_len.div_ceil(bs);
        if s.query_len != 1 || s.query_start != i || used > width || s.block_table.len() < used {
            return Err(KestrelError::Backend(format!(
                "sequence {i} of a decode step: query {}+{}, {} tokens over {} blocks, table width {width}",
                s.query_start,
                s.query_len,
                s.context_len,
                s.block_table.len()
            )));
        }
        host[ctx + i] = s.context_len as u32;
        host[tables + i * width..][..used].copy_from_slice(&s.block_table[..used]);
    }
    Ok(host)
}

/// Copies a decode step's `meta` into `pool`'s buffer, padded as [`pack_decode`] says.
pub(crate) fn upload_decode(
    dev: &CudaDevice,
    pool: &MetaPool,
    meta: &AttnMetadata,
    bucket: usize,
    width: usize,
) -> Result<()> {
    let host = pack_decode(meta, bucket, width)?;
    let cap = decode_capacity(bucket, width);
    let mut guard = pool.lock().unwrap_or_else(|e| e.into_inner());
    let buf = guard
        .as_mut()
        .ok_or_else(|| KestrelError::Backend("a decode step's metadata buffer is in use".into()))?;
    if buf.cap != cap {
        return Err(KestrelError::Backend(
            "decode metadata buffer of another size".into(),
        ));
    }
    dev.stream()
        .memcpy_htod(&host, &mut buf.data)
        .map_err(|e| KestrelError::Backend(format!("uploading decode metadata: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel::backend::SeqSlice;

    #[test]
    fn decode_steps_pad_to_their_bucket() {
        let seq = |i: usize, ctx: usize, table: Vec<u32>| SeqSlice {
            query_start: i,
            query_len: 1,
            context_len: ctx,
            block_table: table,
        };
        let meta =
            AttnMetadata::new(4, vec![seq(0, 5, vec![7, 2, 9]), seq(1, 1, vec![3])]).unwrap();
        let host = pack_decode(&meta, 4, 2).unwrap();
        let cap = decode_capacity(4, 2);
        let [pos, slots, cu, ctx, tables] = cap.offsets();
        assert_eq!(host.len(), cap.total());
        assert_eq!(&host[pos..slots], &[4, 0, 0, 0]);
        assert_eq!(&host[slots..cu], &[2 * 4, 3 * 4, u32::MAX, u32::MAX]);
        assert_eq!(&host[cu..ctx], &[0, 1, 2, 3, 4]);
        assert_eq!(&host[ctx..tables], &[5, 1, 0, 0]);
        assert_eq!(&host[tables..], &[7, 2, 3, 0, 0, 0, 0, 0]);
        // too many sequences, a table too narrow, a prefill step
        assert!(pack_decode(&meta, 1, 2).is_err());
        assert!(pack_decode(&meta, 2, 1).is_err());
        let prefill = AttnMetadata::new(
            4,
            vec![SeqSlice {
                query_start: 0,
                query_len: 2,
                context_len: 2,
                block_table: vec![0],
            }],
        )
        .unwrap();
        assert!(pack_decode(&prefill, 2, 1).is_err());
    }
}
