//! The attention half of a layer: q/k norm + RoPE + cache write, then paged attention over the cache.

use cudarc::driver::{CudaSlice, CudaView};
use kestrel::backend::AttnParams;
use kestrel::{KestrelError, Result};

use super::graphs::AttnScratch;
use super::metadata::CudaMetadata;
use super::tensor::{CudaKvCache, CudaTensor, CudaVector};
use super::{be, CudaBackend};
use crate::dtype::Bf16;
use crate::ops::attention::{
    attention_counters_len, attention_workspace_len, paged_attention, paged_decode_attention_qk,
    AttnBatch, AttnShape, DecodeKernel, PrefillKernel,
};
use crate::ops::qk_norm_rope_kv::{qk_norm_rope_kv, HeadShape, QkNormRopeInputs};

/// Partitions at most.
const MAX_PARTITIONS: usize = 32;
/// Decode CTAs to aim for (sequences × kv heads × partitions): enough to fill an H100's 132 SMs.
/// Measured on H100 at 4d22544 (Qwen3-0.6B): 2048 gave the bench.py workload 1.5% more (13,198 vs
/// 13,004 tok/s) but 64-sequence decode 12% less (18,116 vs 20,698), so 512 stays.
const TARGET_CTAS: usize = 512;

/// [`TARGET_CTAS`], or `KESTREL_ATTN_TARGET_CTAS` (to measure).
fn target_ctas() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| crate::knobs::positive_usize("KESTREL_ATTN_TARGET_CTAS", TARGET_CTAS))
}

/// Split-K partitions (the grid's z) for a decode step: enough CTAs to fill the GPU. It depends on
/// the batch-size bucket only, never on context lengths, so a CUDA graph replays as contexts grow
/// and a padded step splits like an unpadded one; the kernel itself never makes a partition under
/// 64 keys (partitions past a short context exit at once).
fn decode_partitions(meta: &CudaMetadata, num_kv_heads: usize) -> usize {
    let seqs = super::graphs::decode_bucket(meta.num_seqs);
    target_ctas()
        .div_ceil((seqs * num_kv_heads).max(1))
        .clamp(1, MAX_PARTITIONS)
}

/// The q/k norm + RoPE inputs as the backend holds them.
type QkInputs<'a> = QkNormRopeInputs<
    'a,
    CudaSlice<Bf16>,
    CudaView<'a, u32>,
    CudaView<'a, u32>,
    CudaSlice<f32>,
    CudaSlice<f32>,
>;

/// Which decode steps fuse the q/k norm + RoPE + cache write into attention (see
/// `qk_norm_rope_attention_impl`): all of them, unless `KESTREL_FUSE_QK` says `0` (none, to
/// measure what it brings) or `wave` (grids of about one wave only, the default before session 12).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FuseQk {
    Never,
    OneWave,
    Always,
}

fn fuse_qk() -> FuseQk {
    static MODE: std::sync::OnceLock<FuseQk> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("KESTREL_FUSE_QK").as_deref() {
        Err(_) | Ok("") | Ok("1") | Ok("all") => FuseQk::Always,
        Ok("0") => FuseQk::Never,
        Ok("wave") => FuseQk::OneWave,
        Ok(other) => {
            eprintln!(
                "warning: KESTREL_FUSE_QK={other} not understood (0, 1 or wave); fusing every decode step"
            );
            FuseQk::Always
        }
    })
}

/// Whether a mixed step's decode rows go to the split-K decode kernel (a second launch) rather than
/// the prefill kernel: on unless `KESTREL_SPLIT_MIXED=0`. A decode row then goes through the kernel
/// it takes in a pure decode step. With the lane decode kernel it lost (H100, 0.6B, acf13f9: bench.py
/// 13,546 -> 12,272 output tok/s); with the tensor-core one it wins (H100, 0.6B, session 8: bench.py
/// 16,045 -> 17,329; its 19 steps with prompt tokens 1.66 -> 0.98 s).
fn split_mixed_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KESTREL_SPLIT_MIXED").map_or(true, |v| v != "0"))
}

fn check_layer(cache: &CudaKvCache, layer: usize) -> Result<()> {
    if layer >= cache.k.len() {
        return Err(KestrelError::Backend(format!(
            "layer {layer} of a {}-layer KV cache",
            cache.k.len()
        )));
    }
    Ok(())
}

impl CudaBackend {
    pub(crate) fn qk_norm_rope_store_kv_impl(
        &self,
        qkv: &CudaTensor,
        p: &AttnParams<'_, CudaVector>,
        meta: &CudaMetadata,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<CudaTensor> {
        check_layer(cache, layer)?;
        let mut q = self.tensor(qkv.rows, p.num_heads * p.head_dim)?;
        let shape = HeadShape {
            num_heads: p.num_heads,
            num_kv_heads: p.num_kv_heads,
            head_dim: p.head_dim,
        };
        self.with_qk_inputs(qkv, p, meta, |inputs| {
            qk_norm_rope_kv(
                self.device(),
                shape,
                inputs,
                &mut q.data,
                &mut cache.k[layer],
                &mut cache.v[layer],
            )
            .map_err(be)
        })?;
        Ok(q)
    }

    pub(crate) fn attention_impl(
        &self,
        q: &CudaTensor,
        p: &AttnParams<'_, CudaVector>,
        meta: &CudaMetadata,
        cache: &CudaKvCache,
        layer: usize,
    ) -> Result<CudaTensor> {
        check_layer(cache, layer)?;
        self.with_attention_scratch(q.rows, p, meta, |shape, batch, parts, scratch, out| {
            paged_attention(
                self.device(),
                shape,
                batch,
                parts,
                &q.data,
                &cache.k[layer],
                &cache.v[layer],
                &mut scratch.partials,
                &mut scratch.counters,
                out,
            )
        })
    }

    /// q/k norm + RoPE + cache write, then attention: one fused launch for decode steps, two ops
    /// for steps with prompt tokens (and with `KESTREL_FUSE_QK=0`; `wave`: fused only where the
    /// grid is about one wave, bucket x kv heads <= the target CTAs). Measured on H100 (0.6B): batch 1
    /// +7%, 64 sequences +2.8%; with the lane decode kernel nano-vllm's 256-sequence workload lost
    /// 1.7% fused (each CTA's prologue, positions then the qkv row then norm + RoPE, is two more
    /// dependent round trips, paid once per wave), so only one-wave grids fused. With the
    /// tensor-core kernel it wins there too (session 12, H100, one call: bench.py 19,601 / 19,637
    /// output tok/s against 19,493 / 19,535 one-wave only; `--batch 128` tg 29,281 vs 29,008,
    /// `--batch 256` 34,278 vs 34,009).
    pub(crate) fn qk_norm_rope_attention_impl(
        &self,
        qkv: &CudaTensor,
        p: &AttnParams<'_, CudaVector>,
        meta: &CudaMetadata,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<CudaTensor> {
        let fused = match fuse_qk() {
            FuseQk::Never => false,
            FuseQk::OneWave => {
                super::graphs::decode_bucket(meta.num_seqs) * p.num_kv_heads <= target_ctas()
            }
            FuseQk::Always => true,
        };
        if meta.max_query_len != 1 || !fused {
            let q = self.qk_norm_rope_store_kv_impl(qkv, p, meta, cache, layer)?;
            return self.attention_impl(&q, p, meta, cache, layer);
        }
        check_layer(cache, layer)?;
        let (k_cache, v_cache) = (&mut cache.k[layer], &mut cache.v[layer]);
        self.with_qk_inputs(qkv, p, meta, |inputs| {
            self.with_attention_scratch(qkv.rows, p, meta, |shape, batch, parts, scratch, out| {
                paged_decode_attention_qk(
                    self.device(),
                    shape,
                    batch,
                    parts,
                    inputs,
                    k_cache,
                    v_cache,
                    &mut scratch.partials,
                    &mut scratch.counters,
                    out,
                )
            })
        })
    }

    /// Runs `f` with the q/k norm + RoPE inputs of a layer (after checking `qkv` has a row per token
    /// of the step): its qkv rows, the step's positions and slots, the RoPE frequencies and the norm
    /// weights.
    fn with_qk_inputs<R>(
        &self,
        qkv: &CudaTensor,
        p: &AttnParams<'_, CudaVector>,
        meta: &CudaMetadata,
        f: impl FnOnce(&QkInputs<'_>) -> Result<R>,
    ) -> Result<R> {
        if qkv.rows != meta.num_tokens {
            return Err(KestrelError::Backend(format!(
                "qkv has {} rows for a batch of {} tokens",
                qkv.rows, meta.num_tokens
            )));
        }
        let (positions, slots) = (meta.positions(), meta.slot_mapping());
        self.with_inv_freq(p.head_dim, p.rope_theta, |inv_freq| {
            f(&QkNormRopeInputs {
                qkv: &qkv.data,
                positions: &positions,
                slot_mapping: &slots,
                inv_freq,
                q_norm: p.q_norm.map(|n| &n.data),
                k_norm: p.k_norm.map(|n| &n.data),
                rms_norm_eps: p.rms_norm_eps,
            })
        })
    }

    /// Runs `launch` with the step's attention shape and batch, its decode split, the decode scratch
    /// (grown as needed; a captured decode step's own, at a fixed address) and a new `rows`-row
    /// output, which it returns.
    fn with_attention_scratch(
        &self,
        rows: usize,
        p: &AttnParams<'_, CudaVector>,
        meta: &CudaMetadata,
        launch: impl FnOnce(
            &AttnShape,
            &AttnBatch<'_, CudaView<'_, u32>>,
            usize,
            &mut AttnScratch,
            &mut CudaSlice<Bf16>,
        ) -> crate::Result<()>,
    ) -> Result<CudaTensor> {
        let shape = AttnShape {
            num_heads: p.num_heads,
            num_kv_heads: p.num_kv_heads,
            head_dim: p.head_dim,
            block_size: meta.block_size,
            max_blocks_per_seq: meta.max_blocks_per_seq,
        };
        let (cu, ctx, tables) = (
            meta.cu_seqlens_q(),
            meta.context_lens(),
            meta.block_tables(),
        );
        let batch = AttnBatch {
            num_seqs: meta.num_seqs,
            num_tokens: meta.num_tokens,
            max_query_len: meta.max_query_len,
            single_query_seqs: if split_mixed_enabled() {
                meta.single_query_seqs
            } else {
                0
            },
            decode_kernel: DecodeKernel::Auto,
            prefill_kernel: PrefillKernel::Auto,
            cu_seqlens_q: &cu,
            context_lens: &ctx,
            block_tables: &tables,
        };
        let max_partitions = decode_partitions(meta, p.num_kv_heads);
        let need = attention_workspace_len(&shape, meta.num_seqs, max_partitions).max(1);
        let need_counters = attention_counters_len(&shape, meta.num_seqs).max(1);
        // A decode step of a graph has its own scratch at a fixed address, sized by its eager run.
        let staged = self.staged();
        let mut ws = match &staged {
            Some(st) => st.workspace.lock(),
            None => self.attn_workspace.lock(),
        }
        .unwrap_or_else(|e| e.into_inner());
        let too_small =
            |w: &AttnScratch| w.partials.len() < need || w.counters.len() < need_counters;
        if ws.as_ref().is_none_or(too_small) {
            if staged.as_ref().is_some_and(|st| st.capturing) {
                return Err(KestrelError::Backend(
                    "attention workspace too small inside a graph capture".into(),
                ));
            }
            *ws = None; // free the old scratch before allocating the larger one
            let partials = self.alloc::<f32>(need.next_power_of_two())?;
            // zeroed: the decode kernel's partition counters start at zero (and stay so)
            let len = need_counters.next_power_of_two();
            let counters = self
                .device()
                .stream()
                .alloc_zeros::<u32>(len)
                .map_err(|e| {
                    KestrelError::Backend(format!("allocating {len} attention counters: {e}"))
                })?;
            *ws = Some(AttnScratch { partials, counters });
        }
        let scratch = ws.as_mut().expect("allocated above");
        let mut out = self.tensor(rows, p.num_heads * p.head_dim)?;
        launch(&shape, &batch, max_partitions, scratch, &mut out.data).map_err(be)?;
        Ok(out)
    }
}
