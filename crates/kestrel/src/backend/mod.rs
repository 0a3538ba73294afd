//! The Backend trait: the coarse, fusable ops the model is written against (DESIGN.md rules 2 and 3).
//!
//! Every op works on a batch of tokens from many sequences at once; attention reads and writes a paged
//! KV cache described by an explicit [`AttnMetadata`]. The CPU backend implements each op plainly and is
//! the reference; faster backends fuse them.

pub mod async_decode;
pub mod cpu;
mod metadata;

pub use async_decode::{DecodeInput, PendingDecode};
pub use metadata::{AttnMetadata, KvCacheSpec, SeqSlice};

use crate::engine::penalties::RowPenalties;
use crate::engine::row_sampling::{sample_with_u, RowSampling};
use crate::formats::HostTensor;
use crate::Result;

/// Shapes and weights of one attention layer, as the attention ops need them.
pub struct AttnParams<'a, V> {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    /// Qwen3's per-head RMSNorm weights (None for Qwen2).
    pub q_norm: Option<&'a V>,
    pub k_norm: Option<&'a V>,
}

/// Cumulative host time of a device backend, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostTiming {
    /// Blocked waiting for the device's results (each step ends in one download: its tokens or
    /// logits). A step's wall time minus its share is host work, which the device waited for unless
    /// the step was launched ahead of the one before (asynchronous scheduling).
    pub waited_s: f64,
    /// Spent in decode steps before their graph (or eager kernels) were launched: uploading the
    /// step's inputs, and the first run and capture of a new batch-size bucket's graph.
    pub decode_prep_s: f64,
}

pub trait Backend: Send + Sync {
    /// Activations: `[tokens, width]`, row-major.
    type Tensor: Send;
    /// A weight matrix `[out, in]` in its storage format (F32, BF16, Q4_K, ...), possibly made of several
    /// source tensors stacked by rows (merged q/k/v, merged gate/up), each keeping its own type.
    type Matrix: Send + Sync;
    /// A small f32 vector (norm weights, biases).
    type Vector: Send + Sync;
    type KvCache: Send;
    /// A forward step's [`AttnMetadata`] in the form the attention ops read it (the CPU keeps it on the
    /// host; a GPU uploads positions, slots and block tables once per forward, not once per layer).
    type Metadata: Send;

    fn name(&self) -> String;

    /// Makes a matrix of `parts` stacked by rows; all parts have the same number of columns.
    fn upload_matrix(&self, parts: &[HostTensor]) -> Result<Self::Matrix>;
    /// Bytes a matmul with `m` reads from memory (its storage on this backend).
    fn matrix_bytes(&self, m: &Self::Matrix) -> usize;
    /// Makes an f32 vector of `parts` concatenated.
    fn upload_vector(&self, parts: &[HostTensor]) -> Result<Self::Vector>;
    fn alloc_kv_cache(&self, spec: &KvCacheSpec) -> Result<Self::KvCache>;
    /// Called once per forward step, before the first layer.
    fn prepare_metadata(&self, meta: &AttnMetadata) -> Result<Self::Metadata>;

    /// Rows `tokens` of the embedding table.
    fn embed(&self, table: &Self::Matrix, tokens: &[u32]) -> Result<Self::Tensor>;
    /// RMSNorm of each row times `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Vector, eps: f32) -> Result<Self::Tensor>;
    /// `x · wᵀ (+ bias)`.
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Matrix,
        bias: Option<&Self::Vector>,
    ) -> Result<Self::Tensor>;
    /// `residual += x · wᵀ` (o_proj and down_proj feed the residual stream).
    fn matmul_add_residual(
        &self,
        x: &Self::Tensor,
        w: &Self::Matrix,
        residual: &mut Self::Tensor,
    ) -> Result<()>;
    /// `silu(x · w_gateᵀ) * (x · w_upᵀ)` with `gate_up` the gate rows then the up rows.
    fn gate_up_silu(&self, x: &Self::Tensor, gate_up: &Self::Matrix) -> Result<Self::Tensor>;
    /// `rms_norm(x) · wᵀ (+ bias)`: a layer's input norm and the projection after it (the residual
    /// stream is `x`). A backend may fuse the norm into the matmul; this default does them in turn.
    fn rms_norm_matmul(
        &self,
        x: &Self::Tensor,
        norm: &Self::Vector,
        eps: f32,
        w: &Self::Matrix,
        bias: Option<&Self::Vector>,
    ) -> Result<Self::Tensor> {
        let normed = self.rms_norm(x, norm, eps)?;
        self.matmul(&normed, w, bias)
    }
    /// `gate_up_silu(rms_norm(x))`: the MLP's input norm, gate/up projection and SwiGLU.
    fn rms_norm_gate_up_silu(
        &self,
        x: &Self::Tensor,
        norm: &Self::Vector,
        eps: f32,
        gate_up: &Self::Matrix,
    ) -> Result<Self::Tensor> {
        let normed = self.rms_norm(x, norm, eps)?;
        self.gate_up_silu(&normed, gate_up)
    }
    /// Splits merged `qkv` rows into q, k, v; applies the per-head q/k RMSNorm (if any) and neox RoPE at
    /// each token's position; writes k and v into the cache slots of `meta`; returns q `[tokens, heads*head_dim]`.
    fn qk_norm_rope_store_kv(
        &self,
        qkv: &Self::Tensor,
        p: &AttnParams<'_, Self::Vector>,
        meta: &Self::Metadata,
        cache: &mut Self::KvCache,
        layer: usize,
    ) -> Result<Self::Tensor>;
    /// Causal attention of each query token over its sequence's cached keys and values (GQA).
    fn attention(
        &self,
        q: &Self::Tensor,
        p: &AttnParams<'_, Self::Vector>,
        meta: &Self::Metadata,
        cache: &Self::KvCache,
        layer: usize,
    ) -> Result<Self::Tensor>;
    /// [`Backend::qk_norm_rope_store_kv`] then [`Backend::attention`] on its q: returns the attention
    /// output. A backend may fuse the two (the CUDA backend does for decode steps); this default runs
    /// them in turn.
    fn qk_norm_rope_attention(
        &self,
        qkv: &Self::Tensor,
        p: &AttnParams<'_, Self::Vector>,
        meta: &Self::Metadata,
        cache: &mut Self::KvCache,
        layer: usize,
    ) -> Result<Self::Tensor> {
        let q = self.qk_norm_rope_store_kv(qkv, p, meta, cache, layer)?;
        self.attention(&q, p, meta, cache, layer)
    }
    /// The given rows of `x` (e.g. the last token of each sequence, before the lm_head).
    fn select_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// Copies a tensor to the host: (rows, cols, values).
    fn to_host(&self, x: &Self::Tensor) -> Result<(usize, usize, Vec<f32>)>;
    /// The index of each row's largest value, ties to the lowest index (greedy decoding: a GPU moves
    /// only the token ids to the host).
    fn argmax(&self, logits: &Self::Tensor) -> Result<Vec<u32>> {
        let (rows, cols, data) = self.to_host(logits)?;
        Ok((0..rows)
            .map(|r| crate::engine::sampling::argmax(&data[r * cols..(r + 1) * cols]))
            .collect())
    }

    /// Samples one token per row of `logits` under `rows[r]` (settings and the step's uniform draw)
    /// after `penalties[r]` (empty: no row has any), with exactly the semantics of
    /// [`RowPenalties::apply`] then [`crate::engine::row_sampling::sample_with_u`], so only token ids
    /// cross to the host. `Ok(None)`: not supported here, the caller samples on the host (this default).
    fn sample(
        &self,
        logits: &Self::Tensor,
        rows: &[RowSampling],
        penalties: &[RowPenalties],
    ) -> Result<Option<Vec<u32>>> {
        let _ = (logits, rows, penalties);
        Ok(None)
    }

    /// A decode step: `forward` is the model's forward pass, returning one logits row per token; the
    /// result is each sequence's token as `pick` chooses it from its row (the argmax, or
    /// [`Backend::sample`] under that row's settings and draw, with the host reference for rows the
    /// backend leaves). Every sequence of `meta` has one new token (`tokens[i]` is sequence `i`'s).
    /// A backend may call `forward` with `tokens` padded to a larger batch (it then reads the padded
    /// step's metadata from where it staged it, not from `meta`), and may capture the step once and
    /// replay it (CUDA graphs) for later calls with the same `forward_id` (the model instance,
    /// [`crate::model::Qwen3Model::instance_id`]) and cache; the default just runs it.
    fn decode_step(
        &self,
        forward_id: u64,
        tokens: &[u32],
        meta: &AttnMetadata,
        cache: &mut Self::KvCache,
        forward: &mut DecodeForward<'_, Self>,
        pick: DecodePick<'_>,
    ) -> Result<Vec<u32>> {
        let _ = forward_id;
        let logits = forward(tokens, meta, cache)?;
        pick_tokens(self, &logits, pick)
    }

    /// Whether the engine may launch a pure-decode step before reading back the previous one's
    /// tokens ([`Backend::launch_decode`]). Off by default.
    fn async_decode(&self) -> bool {
        false
    }

    /// [`Backend::decode_step`] with its tokens read back later by [`Backend::collect_decode`], in
    /// launch order. `inputs[i]` is sequence `i`'s token or a row of `previous` (the step launched
    /// just before, not collected yet). The default runs the step now and keeps its tokens in the
    /// returned [`PendingDecode`].
    #[allow(clippy::too_many_arguments)]
    fn launch_decode(
        &self,
        forward_id: u64,
        inputs: &[DecodeInput],
        previous: Option<&PendingDecode>,
        meta: &AttnMetadata,
        cache: &mut Self::KvCache,
        forward: &mut DecodeForward<'_, Self>,
        pick: DecodePick<'_>,
    ) -> Result<PendingDecode> {
        let tokens = async_decode::resolve_inputs(inputs, previous)?;
        let ids = self.decode_step(forward_id, &tokens, meta, cache, forward, pick)?;
        Ok(PendingDecode::ready(ids))
    }

    /// The tokens of a step from [`Backend::launch_decode`] (waits for it).
    fn collect_decode(&self, pending: PendingDecode) -> Result<Vec<u32>> {
        pending.into_tokens()
    }

    /// [`Backend::decode_step`] taking the argmax of each row (greedy decoding).
    fn decode_argmax(
        &self,
        forward_id: u64,
        tokens: &[u32],
        meta: &AttnMetadata,
        cache: &mut Self::KvCache,
        forward: &mut DecodeForward<'_, Self>,
    ) -> Result<Vec<u32>> {
        self.decode_step(forward_id, tokens, meta, cache, forward, DecodePick::Argmax)
    }

    /// Kernels the last decode step launched (or captured), where the backend counts them.
    fn decode_step_kernels(&self) -> Option<usize> {
        None
    }

    /// Whether a pure-decode step should list its sequences longest context first (the engine sorts
    /// them so): a GPU whose decode attention gives each sequence its own blocks, dispatched in row
    /// order, then starts the longest ones first instead of ending the step on one.
    fn decode_longest_first(&self) -> bool {
        false
    }

    /// Where the host's time went so far, where the backend counts it (benchmarks report it).
    fn host_timing(&self) -> Option<HostTiming> {
        None
    }

    /// Memory bandwidth this device really reaches (bytes/s, a measured copy), where the backend can
    /// measure it: benchmarks report decode speed as a fraction of it.
    fn memory_bandwidth(&self) -> Option<f64> {
        None
    }
}

/// How [`Backend::decode_step`] chooses each row's token.
#[derive(Clone, Copy, Debug)]
pub enum DecodePick<'a> {
    /// The largest logit (ties to the lowest id).
    Argmax,
    /// Sampled under each row's settings and draw ([`RowSampling`]) after its penalties (an empty
    /// slice: no row has any).
    Sample(&'a [RowSampling], &'a [RowPenalties]),
}

/// `pick` applied to `logits` (one row per entry of a `Sample` pick): on the backend where it can,
/// rows it leaves (or a backend without a sampling op) through the host reference, with the same draw.
pub fn pick_tokens<B: Backend + ?Sized>(
    backend: &B,
    logits: &B::Tensor,
    pick: DecodePick<'_>,
) -> Result<Vec<u32>> {
    match pick {
        DecodePick::Argmax => backend.argmax(logits),
        DecodePick::Sample(rows, penalties) => match backend.sample(logits, rows, penalties)? {
            Some(ids) => Ok(ids),
            None => {
                let (n, cols, mut data) = backend.to_host(logits)?;
                if n != rows.len() || !(penalties.is_empty() || penalties.len() == n) {
                    return Err(crate::KestrelError::Engine(format!(
                        "{n} logits rows for {} sampling rows and {} penalty rows",
                        rows.len(),
                        penalties.len()
                    )));
                }
                Ok(data
                    .chunks_mut(cols.max(1))
                    .enumerate()
                    .map(|(r, row)| {
                        if let Some(p) = penalties.get(r) {
                            p.apply(row);
                        }
                        sample_with_u(row, &rows[r])
                    })
                    .collect())
            }
        },
    }
}

/// The model's forward pass as [`Backend::decode_step`] runs it: (tokens, metadata, cache) → logits,
/// one row per token.
pub type DecodeForward<'a, B> = dyn FnMut(&[u32], &AttnMetadata, &mut <B as Backend>::KvCache) -> Result<<B as Backend>::Tensor>
    + 'a;
