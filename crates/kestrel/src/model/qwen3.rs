//! Qwen3 / Qwen2. Reads like the HF config: embed, then per layer
//! `norm + qkv → q/k norm + RoPE + cache write → attention → o_proj + residual → norm + gate/up SiLU →
//! down + residual` (the residual stream carried alongside: each projection adds into it and each
//! norm reads it, so a backend can fuse the norms into the matmuls after them), then the final norm
//! and the lm_head on the rows that need logits.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{AttnMetadata, AttnParams, Backend};
use crate::config::ModelConfig;
use crate::formats::source::TensorSource;
use crate::formats::HostTensor;
use crate::Result;

static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

pub struct LayerWeights<B: Backend> {
    pub attn_norm: B::Vector,
    /// q, k and v projections stacked by rows.
    pub qkv: B::Matrix,
    pub qkv_bias: Option<B::Vector>,
    pub q_norm: Option<B::Vector>,
    pub k_norm: Option<B::Vector>,
    pub o_proj: B::Matrix,
    pub ffn_norm: B::Vector,
    /// gate and up projections stacked by rows.
    pub gate_up: B::Matrix,
    pub down: B::Matrix,
}

pub struct Qwen3Model<B: Backend> {
    pub config: ModelConfig,
    pub embed: B::Matrix,
    pub layers: Vec<LayerWeights<B>>,
    pub norm: B::Vector,
    /// None when tied to the embedding table.
    pub lm_head: Option<B::Matrix>,
    /// Unique among the models of this process (see [`Qwen3Model::instance_id`]).
    id: u64,
}

impl<B: Backend> Qwen3Model<B> {
    /// Loads every weight through `backend`, checking shapes against the config.
    ///
    /// `src` is usually a [`crate::formats::source::ModelSource`]; a
    /// [`crate::formats::quantizing::QuantizingSource`] hands out the same weights quantized.
    pub fn load(backend: &B, config: &ModelConfig, src: &impl TensorSource) -> Result<Self> {
        let c = config;
        let (h, q, kv, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let get = |name: &str, shape: &[usize]| -> Result<HostTensor> {
            let t = src.tensor(name)?;
            t.expect_shape(shape)?;
            Ok(t)
        };
        let embed =
            backend.upload_matrix(&[get("model.embed_tokens.weight", &[c.vocab_size, h])?])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let attn = |s: &str| p(&format!("self_attn.{s}"));
            let qkv = [
                get(&attn("q_proj.weight"), &[q, h])?,
                get(&attn("k_proj.weight"), &[kv, h])?,
                get(&attn("v_proj.weight"), &[kv, h])?,
            ];
            let qkv_bias = if c.qkv_bias {
                Some(backend.upload_vector(&[
                    get(&attn("q_proj.bias"), &[q])?,
                    get(&attn("k_proj.bias"), &[kv])?,
                    get(&attn("v_proj.bias"), &[kv])?,
                ])?)
            } else {
                None
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(backend.upload_vector(&[get(&attn("q_norm.weight"), &[c.head_dim])?])?),
                    Some(backend.upload_vector(&[get(&attn("k_norm.weight"), &[c.head_dim])?])?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                attn_norm: backend.upload_vector(&[get(&p("input_layernorm.weight"), &[h])?])?,
                qkv: backend.upload_matrix(&qkv)?,
                qkv_bias,
                q_norm,
                k_norm,
                o_proj: backend.upload_matrix(&[get(&attn("o_proj.weight"), &[h, q])?])?,
                ffn_norm: backend
                    .upload_vector(&[get(&p("post_attention_layernorm.weight"), &[h])?])?,
                gate_up: backend.upload_matrix(&[
                    get(&p("mlp.gate_proj.weight"), &[inter, h])?,
                    get(&p("mlp.up_proj.weight"), &[inter, h])?,
                ])?,
                down: backend.upload_matrix(&[get(&p("mlp.down_proj.weight"), &[h, inter])?])?,
            });
        }
        // Some tied checkpoints still ship lm_head.weight; an untied one must.
        let lm_head = if src.has_tensor("lm_head.weight") {
            Some(backend.upload_matrix(&[get("lm_head.weight", &[c.vocab_size, h])?])?)
        } else if c.tie_word_embeddings {
            None
        } else {
            return Err(crate::KestrelError::MissingTensor {
                name: "lm_head.weight".into(),
                source_desc: format!(
                    "{} (the config says the embeddings are not tied)",
                    src.path().display()
                ),
            });
        };
        Ok(Qwen3Model {
            config: c.clone(),
            embed,
            layers,
            norm: backend.upload_vector(&[get("model.norm.weight", &[h])?])?,
            lm_head,
            id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// This loaded model's id, never reused in the process: a backend that captures decode steps
    /// (CUDA graphs bake in the weights' addresses) replays them only for the same id.
    pub fn instance_id(&self) -> u64 {
        self.id
    }

    fn attn_params<'a>(&self, layer: &'a LayerWeights<B>) -> AttnParams<'a, B::Vector> {
        let c = &self.config;
        AttnParams {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            rope_theta: c.rope_theta,
            rms_norm_eps: c.rms_norm_eps,
            q_norm: layer.q_norm.as_ref(),
            k_norm: layer.k_norm.as_ref(),
        }
    }

    /// One forward step over a batch (`tokens` of many sequences, described by `meta`). Returns the
    /// logits `[logit_rows.len(), vocab]` of the batch rows in `logit_rows`.
    pub fn forward(
        &self,
        backend: &B,
        tokens: &[u32],
        meta: &AttnMetadata,
        cache: &mut B::KvCache,
        logit_rows: &[usize],
    ) -> Result<B::Tensor> {
        let eps = self.config.rms_norm_eps;
        let meta = backend.prepare_metadata(meta)?;
        let mut residual = backend.embed(&self.embed, tokens)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let p = self.attn_params(layer);
            let qkv = backend.rms_norm_matmul(
                &residual,
                &layer.attn_norm,
                eps,
                &layer.qkv,
                layer.qkv_bias.as_ref(),
            )?;
            let attn = backend.qk_norm_rope_attention(&qkv, &p, &meta, cache, l)?;
            backend.matmul_add_residual(&attn, &layer.o_proj, &mut residual)?;
            let act =
                backend.rms_norm_gate_up_silu(&residual, &layer.ffn_norm, eps, &layer.gate_up)?;
            backend.matmul_add_residual(&act, &layer.down, &mut residual)?;
        }
        // Logits for every row (decode steps, teacher forcing) need no gather; the final norm is
        // row-wise, so it can follow the gather.
        let every_row =
            logit_rows.len() == tokens.len() && logit_rows.iter().enumerate().all(|(i, &r)| i == r);
        let last = if every_row {
            residual
        } else {
            backend.select_rows(&residual, logit_rows)?
        };
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        backend.rms_norm_matmul(&last, &self.norm, eps, lm_head, None)
    }

    /// Weight bytes one decode step reads: every layer's matrices and the lm_head (the embedding table
    /// contributes one row). Over a measured time per token, the memory bandwidth decode reaches.
    pub fn decode_weight_bytes(&self, backend: &B) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.o_proj, &l.gate_up, &l.down]
                    .into_iter()
                    .map(|m| backend.matrix_bytes(m))
                    .sum::<usize>()
            })
            .sum();
        layers + backend.matrix_bytes(self.lm_head.as_ref().unwrap_or(&self.embed))
    }
}
