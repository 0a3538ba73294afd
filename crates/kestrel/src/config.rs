//! The model's hyperparameters, read from an HF `config.json` or from GGUF metadata.
//!
//! Qwen2 and Qwen3 share one description: Qwen2 is Qwen3 with a bias on the q/k/v projections and no
//! per-head q/k RMSNorm.

use std::path::Path;

use serde_json::Value;

use crate::formats::gguf::GgufFile;
use crate::{KestrelError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Arch> {
        match name.to_ascii_lowercase().as_str() {
            "qwen3" | "qwen3forcausallm" => Ok(Arch::Qwen3),
            "qwen2" | "qwen2forcausallm" => Ok(Arch::Qwen2),
            _ => Err(KestrelError::UnsupportedArchitecture(name.to_string())),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2: q/k/v projections carry a bias.
    pub qkv_bias: bool,
    /// Qwen3: per-head RMSNorm on q and k before RoPE.
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    fn for_arch(arch: Arch) -> (bool, bool) {
        match arch {
            Arch::Qwen2 => (true, false),
            Arch::Qwen3 => (false, true),
        }
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Reads an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| KestrelError::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| KestrelError::format(path, format!("invalid JSON: {e}")))?;
        Self::from_hf_json(&json).map_err(|e| match e {
            KestrelError::Config(msg) => KestrelError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_hf_json(json: &Value) -> Result<ModelConfig> {
        let arch_name = json
            .get("model_type")
            .and_then(Value::as_str)
            .or_else(|| {
                json.get("architectures")
                    .and_then(|a| a.get(0))
                    .and_then(Value::as_str)
            })
            .ok_or_else(|| {
                KestrelError::Config("no 'model_type' or 'architectures' field".into())
            })?;
        let arch = Arch::parse(arch_name)?;
        let usize_field = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    KestrelError::Config(format!("missing or non-integer field '{key}'"))
                })
        };
        let hidden_size = usize_field("hidden_size")?;
        let num_heads = usize_field("num_attention_heads")?;
        let num_kv_heads = json
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .unwrap_or(num_heads);
        let head_dim = match json.get("head_dim").and_then(Value::as_u64) {
            Some(d) => d as usize,
            None => hidden_size / num_heads.max(1),
        };
        // transformers 5 moved rope_theta into rope_parameters.
        let rope_theta = json
            .get("rope_theta")
            .or_else(|| {
                json.get("rope_parameters")
                    .and_then(|r| r.get("rope_theta"))
            })
            .and_then(Value::as_f64)
            .unwrap_or(1_000_000.0) as f32;
        let eos_token_ids = match json.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect(),
            _ => vec![],
        };
        let (qkv_bias, qk_norm) = Self::for_arch(arch);
        let cfg = ModelConfig {
            arch,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_layers: usize_field("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: json
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            rope_theta,
            max_position_embeddings: json
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(32768) as usize,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: json
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(qkv_bias),
            qk_norm,
            bos_token_id: json
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`general.architecture`, then `<arch>.*` keys as llama.cpp writes them).
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let arch_name = file.architecture()?;
        let arch = Arch::parse(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str| -> Result<usize> { Ok(file.get_u64(&key(k))? as usize) };
        let hidden_size = get("embedding_length")?;
        let num_heads = get("attention.head_count")?;
        let num_kv_heads = get("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = get("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
        let embd =
            file.tensor_info("token_embd.weight")
                .ok_or_else(|| KestrelError::MissingTensor {
                    name: "token_embd.weight".into(),
                    source_desc: file.path.display().to_string(),
                })?;
        let vocab_size = embd.shape.first().copied().unwrap_or(0);
        let (qkv_bias, qk_norm) = Self::for_arch(arch);
        let eos = file
            .get_u64("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|v| v as u32);
        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: get("feed_forward_length")?,
            num_layers: get("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: file
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            rope_theta: file.get_f32(&key("rope.freq_base")).unwrap_or(1_000_000.0),
            max_position_embeddings: get("context_length").unwrap_or(32768),
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
            qkv_bias: qkv_bias && file.tensor_info("blk.0.attn_q.bias").is_some(),
            qk_norm,
            bos_token_id: file
                .get_u64("tokenizer.ggml.bos_token_id")
                .ok()
                .map(|v| v as u32),
            eos_token_ids: eos.into_iter().collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(KestrelError::Config(msg));
        if self.hidden_size == 0 || self.num_layers == 0 || self.vocab_size == 0 {
            return bad("hidden size, layer count and vocab size must be positive".into());
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "{} attention heads is not a multiple of {} KV heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and positive",
                self.head_dim
            ));
        }
        Ok(())
    }
}
