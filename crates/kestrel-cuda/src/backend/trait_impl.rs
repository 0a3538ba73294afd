//! `impl Backend for CudaBackend`: each op checks shapes on the host, then launches its kernels.

use std::sync::atomic::Ordering;

use kestrel::backend::{
    pick_tokens, AttnMetadata, AttnParams, Backend, DecodeForward, DecodeInput, DecodePick,
    HostTiming, KvCacheSpec, PendingDecode,
};
use kestrel::engine::penalties::RowPenalties;
use kestrel::engine::row_sampling::RowSampling;
use kestrel::formats::HostTensor;
use kestrel::{KestrelError, Result};

use super::graphs::MAX_GRAPH_BATCH;
use super::linear::GEMV_MAX_TOKENS;
use super::metadata::CudaMetadata;
use super::tensor::{
    int8_activations_allowed, matrix_for_device, vector_to_f32, CudaKvCache, CudaMatrix,
    CudaTensor, CudaVector, HostMatrix, MatrixStorage,
};
use super::{be, CudaBackend};
use crate::dtype::{to_f32, Bf16};
use crate::ops::argmax::argmax;
use crate::ops::argmax::FED_FROM_PREVIOUS;
use crate::ops::embedding::embedding;
use crate::ops::norm::rms_norm;
use crate::ops::quant_layout::QuantWeights;

fn check(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(KestrelError::Backend(format!(
            "{what}: length {got}, expected {want}"
        )));
    }
    Ok(())
}

/// Row indices as u32, each checked against `rows`.
fn row_ids(ids: impl IntoIterator<Item = usize>, rows: usize, what: &str) -> Result<Vec<u32>> {
    ids.into_iter()
        .map(|r| {
            if r < rows {
                Ok(r as u32)
            } else if what == "token id" {
                Err(KestrelError::param(
                    what,
                    format!("{r} is outside the vocabulary of {rows} tokens"),
                ))
            } else {
                Err(KestrelError::Backend(format!(
                    "row {r} of a {rows}-row tensor"
                )))
            }
        })
        .collect()
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type KvCache = CudaKvCache;
    type Metadata = CudaMetadata;

    fn name(&self) -> String {
        let d = self.device();
        let mode = if self.cuda_graphs() {
            "cuda graphs"
        } else {
            "eager"
        };
        format!("cuda: {} ({}, bf16, {mode})", d.name(), d.arch())
    }

    fn matrix_bytes(&self, m: &CudaMatrix) -> usize {
        match &m.storage {
            MatrixStorage::Bf16(d) => d.len() * std::mem::size_of::<Bf16>(),
            MatrixStorage::Quant(parts) => parts.iter().map(QuantWeights::bytes).sum(),
        }
    }

    fn upload_matrix(&self, parts: &[HostTensor]) -> Result<CudaMatrix> {
        let (rows, cols, host) = matrix_for_device(parts)?;
        let what = parts
            .first()
            .map_or("a matrix".to_string(), |p| format!("tensor '{}'", p.name));
        let storage = match host {
            HostMatrix::Bf16(values) => MatrixStorage::Bf16(self.upload(&what, &values)?),
            HostMatrix::Quant(runs) => {
                // the prefill tile, sized before any forward (see reserve_dequant_tile)
                self.reserve_dequant_tile(rows, cols)?;
                MatrixStorage::Quant(
                    runs.iter()
                        .map(|(format, planes)| {
                            QuantWeights::upload(self.device(), *format, cols, planes)
                        })
                        .collect::<crate::Result<_>>()
                        .map_err(|e| KestrelError::Backend(format!("uploading {what}: {e}")))?,
                )
            }
        };
        Ok(CudaMatrix {
            rows,
            cols,
            storage,
            int8_activations: int8_activations_allowed(parts),
        })
    }

    fn upload_vector(&self, parts: &[HostTensor]) -> Result<CudaVector> {
        let host = vector_to_f32(parts)?;
        let what = parts
            .first()
            .map_or("a vector".to_string(), |p| format!("tensor '{}'", p.name));
        Ok(CudaVector {
            data: self.upload(&what, &host)?,
        })
    }

    fn alloc_kv_cache(&self, spec: &KvCacheSpec) -> Result<CudaKvCache> {
        let len = spec
            .num_blocks
            .checked_mul(spec.block_size * spec.num_kv_heads * spec.head_dim)
            .ok_or_else(|| KestrelError::Backend("KV cache size overflows".into()))?;
        let zeros = || {
            self.device().stream().alloc_zeros(len).map_err(|e| {
                KestrelError::Backend(format!(
                    "allocating the KV cache ({} blocks of {} tokens, {:.2} GiB in all) on GPU {}: {e}",
                    spec.num_blocks,
                    spec.block_size,
                    (4 * len * spec.num_layers) as f64 / (1u64 << 30) as f64,
                    self.device().name()
                ))
            })
        };
        let mut k = Vec::with_capacity(spec.num_layers);
        let mut v = Vec::with_capacity(spec.num_layers);
        for _ in 0..spec.num_layers {
            k.push(zeros()?);
            v.push(zeros()?);
        }
        Ok(CudaKvCache { spec: *spec, k, v })
    }

    fn prepare_metadata(&self, meta: &AttnMetadata) -> Result<CudaMetadata> {
        // programmatic dependent launch for decode-sized steps only (see CudaDevice::set_pdl)
        let tokens: usize = meta.seqs.iter().map(|s| s.query_len).sum();
        self.device().set_pdl(tokens <= GEMV_MAX_TOKENS);
        match self.staged() {
            // A decode step's padded metadata is already on the device (graphs::decode_step).
            Some(st) => {
                let max_ctx = meta.seqs.iter().map(|s| s.context_len).max().unwrap_or(0);
                CudaMetadata::staged(&st.meta, st.bucket, st.width, meta.block_size, max_ctx)
            }
            None => CudaMetadata::upload(self.device(), &self.meta_pool, meta),
        }
    }

    fn embed(&self, table: &CudaMatrix, tokens: &[u32]) -> Result<CudaTensor> {
        let mut out = self.tensor(tokens.len(), table.cols)?;
        let staged = self.staged();
        let uploaded;
        // A decode step's (padded) token ids are already on the device. Those fed there from the
        // previous step's argmax (asynchronous scheduling: FED_FROM_PREVIOUS rows here) are in the
        // vocabulary by construction; the host checks the rest.
        let ids = match &staged {
            Some(st) => {
                let host = tokens.iter().filter(|&&t| t & FED_FROM_PREVIOUS == 0);
                row_ids(host.map(|&t| t as usize), table.rows, "token id")?;
                check("staged token ids", st.ids.len(), tokens.len())?;
                &*st.ids
            }
            None => {
                let ids = row_ids(tokens.iter().map(|&t| t as usize), table.rows, "token id")?;
                uploaded = self.upload("token ids", &ids)?;
                &uploaded
            }
        };
        match &table.storage {
            MatrixStorage::Bf16(data) => {
                embedding(self.device(), data, table.cols, ids, &mut out.data)
            }
            MatrixStorage::Quant(parts) => self.embed_quantized(parts, ids, &mut out),
        }
        .map_err(be)?;
        Ok(out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaVector, eps: f32) -> Result<CudaTensor> {
        check("rms_norm weight", weight.len(), x.cols)?;
        let mut out = self.tensor(x.rows, x.cols)?;
        rms_norm(self.device(), &x.data, &weight.data, eps, &mut out.data).map_err(be)?;
        Ok(out)
    }

    fn matmul(
        &self,
        x: &CudaTensor,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
    ) -> Result<CudaTensor> {
        self.linear(x, w, bias)
    }

    fn matmul_add_residual(
        &self,
        x: &CudaTensor,
        w: &CudaMatrix,
        residual: &mut CudaTensor,
    ) -> Result<()> {
        self.linear_add_residual(x, w, residual)
    }

    fn gate_up_silu(&self, x: &CudaTensor, gate_up: &CudaMatrix) -> Result<CudaTensor> {
        self.gate_up_silu_impl(x, gate_up)
    }

    fn rms_norm_matmul(
        &self,
        x: &CudaTensor,
        norm: &CudaVector,
        eps: f32,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
    ) -> Result<CudaTensor> {
        check("rms_norm weight", norm.len(), x.cols)?;
        self.norm_linear(x, norm, eps, w, bias)
    }

    fn rms_norm_gate_up_silu(
        &self,
        x: &CudaTensor,
        norm: &CudaVector,
        eps: f32,
        gate_up: &CudaMatrix,
    ) -> Result<CudaTensor> {
        check("rms_norm weight", norm.len(), x.cols)?;
        self.norm_gate_up_silu(x, norm, eps, gate_up)
    }

    fn qk_norm_rope_store_kv(
        &self,
        qkv: &CudaTensor,
        p: &AttnParams<'_, CudaVector>,
        meta: &CudaMetadata,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<CudaTensor> {
        self.qk_norm_rope_store_kv_impl(qkv, p, meta, cache, layer)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        p: &AttnParams<'_, CudaVector>,
        meta: &CudaMetadata,
        cache: &CudaKvCache,
        layer: usize,
    ) -> Result<CudaTensor> {
        self.attention_impl(q, p, meta, cache, layer)
    }

    fn qk_norm_rope_attention(
        &self,
        qkv: &CudaTensor,
        p: &AttnParams<'_, CudaVector>,
        meta: &CudaMetadata,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<CudaTensor> {
        self.qk_norm_rope_attention_impl(qkv, p, meta, cache, layer)
    }

    fn select_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        // A gather of rows is the embedding lookup with `x` as the table.
        let ids = row_ids(rows.iter().copied(), x.rows, "row")?;
        let ids = self.upload("row ids", &ids)?;
        let mut out = self.tensor(rows.len(), x.cols)?;
        embedding(self.device(), &x.data, x.cols, &ids, &mut out.data).map_err(be)?;
        Ok(out)
    }

    fn to_host(&self, x: &CudaTensor) -> Result<(usize, usize, Vec<f32>)> {
        let host = self.device().download(&x.data, "a tensor").map_err(be)?;
        Ok((x.rows, x.cols, to_f32(&host)))
    }

    fn decode_step(
        &self,
        forward_id: u64,
        tokens: &[u32],
        meta: &AttnMetadata,
        cache: &mut CudaKvCache,
        forward: &mut DecodeForward<'_, Self>,
        pick: DecodePick<'_>,
    ) -> Result<Vec<u32>> {
        let n = meta.seqs.len();
        let decode = n > 0 && tokens.len() == n && meta.seqs.iter().all(|s| s.query_len == 1);
        if let DecodePick::Sample(rows, _) = pick {
            if rows.len() != n {
                return Err(KestrelError::Backend(format!(
                    "decode step: {} sampling rows for {n} sequences",
                    rows.len()
                )));
            }
        }
        if decode && n <= MAX_GRAPH_BATCH {
            return self
                .graph_decode_step(forward_id, tokens, meta, cache, forward, pick, None, None)
                .map(|(ids, _)| ids);
        }
        let logits = forward(tokens, meta, cache)?;
        pick_tokens(self, &logits, pick)
    }

    /// On unless `KESTREL_DECODE_LONGEST_FIRST=0`. At 64+ sequences every decode attention CTA takes
    /// a whole context (one partition), dispatched in sequence order, so a long context dispatched
    /// late is the tail of each layer's attention: bench.py's decode-only steps 5.71 -> 5.53 s (H200,
    /// session 9, output tok/s 22,040 -> 22,681; with the tensor-core prefill 23,941 -> 24,138).
    fn decode_longest_first(&self) -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            !matches!(
                std::env::var("KESTREL_DECODE_LONGEST_FIRST").as_deref(),
                Ok("0")
            )
        })
    }

    /// On unless `KESTREL_ASYNC_DECODE=0` (greedy decode steps of up to 256 sequences; see
    /// backend/async_decode.rs). H100, 65cc1c8, bench.py 0.6B BF16: 18,980 / 19,144 output tok/s
    /// off, 19,667 on (decode-only steps 7.15 -> 6.88 s).
    fn async_decode(&self) -> bool {
        self.async_decode.load(Ordering::Relaxed)
    }

    fn launch_decode(
        &self,
        forward_id: u64,
        inputs: &[DecodeInput],
        previous: Option<&PendingDecode>,
        meta: &AttnMetadata,
        cache: &mut CudaKvCache,
        forward: &mut DecodeForward<'_, Self>,
        pick: DecodePick<'_>,
    ) -> Result<PendingDecode> {
        self.launch_decode_async(forward_id, inputs, previous, meta, cache, forward, pick)
    }

    fn collect_decode(&self, pending: PendingDecode) -> Result<Vec<u32>> {
        self.collect_decode_async(pending)
    }

    fn host_timing(&self) -> Option<HostTiming> {
        Some(HostTiming {
            waited_s: self.device().waited_seconds(),
            decode_prep_s: self.decode_prep_ns.load(Ordering::Relaxed) as f64 * 1e-9,
        })
    }

    fn memory_bandwidth(&self) -> Option<f64> {
        crate::bandwidth::measure_copy_bandwidth(self.device()).ok()
    }

    fn decode_step_kernels(&self) -> Option<usize> {
        match self.step_kernels.load(Ordering::Relaxed) {
            0 => None,
            k => Some(k),
        }
    }

    fn sample(
        &self,
        logits: &CudaTensor,
        rows: &[RowSampling],
        penalties: &[RowPenalties],
    ) -> Result<Option<Vec<u32>>> {
        super::sampling::sample(self, logits, rows, penalties).map(Some)
    }

    fn argmax(&self, logits: &CudaTensor) -> Result<Vec<u32>> {
        let mut ids = self.alloc::<u32>(logits.rows)?;
        argmax(self.device(), &logits.data, logits.cols, &mut ids).map_err(be)?;
        self.device().download(&ids, "token ids").map_err(be)
    }
}
