//! Where a model comes from: an HF directory (safetensors), a GGUF file, or an HF repo id (downloaded
//! into the HF cache). Whatever the source, tensors are asked for by their HF names.

use std::path::{Path, PathBuf};

use super::gguf::GgufFile;
use super::safetensors::SafetensorsDir;
use super::{hub, names, HostTensor};
use crate::config::ModelConfig;
use crate::{KestrelError, Result};

/// What a model loader asks for its weights, by HF name: a [`ModelSource`] as its files hold them, or a
/// wrapper such as [`super::quantizing::QuantizingSource`] that converts them on the way.
pub trait TensorSource {
    /// The tensor with HF name `hf_name`.
    fn tensor(&self, hf_name: &str) -> Result<HostTensor>;
    fn has_tensor(&self, hf_name: &str) -> bool;
    /// The file or directory the tensors come from (for messages).
    fn path(&self) -> PathBuf;
}

impl TensorSource for ModelSource {
    fn tensor(&self, hf_name: &str) -> Result<HostTensor> {
        ModelSource::tensor(self, hf_name)
    }
    fn has_tensor(&self, hf_name: &str) -> bool {
        ModelSource::has_tensor(self, hf_name)
    }
    fn path(&self) -> PathBuf {
        ModelSource::path(self)
    }
}

pub enum ModelSource {
    HfDir(SafetensorsDir),
    Gguf(GgufFile),
}

impl ModelSource {
    /// Opens `--model`: a directory, a `.gguf` file, or an HF repo id like `Qwen/Qwen3-0.6B`.
    pub fn open(spec: &str) -> Result<ModelSource> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::HfDir(SafetensorsDir::open(path)?));
        }
        if path.is_file() {
            return Ok(ModelSource::Gguf(GgufFile::open(path)?));
        }
        if hub::looks_like_repo_id(spec) {
            let dir = hub::fetch_model(spec)?;
            return Ok(ModelSource::HfDir(SafetensorsDir::open(&dir)?));
        }
        Err(KestrelError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or directory (--model takes an HF model directory, a .gguf file, or a Hugging Face repo id such as Qwen/Qwen3-0.6B)",
            ),
        ))
    }

    pub fn path(&self) -> PathBuf {
        match self {
            ModelSource::HfDir(d) => d.dir.clone(),
            ModelSource::Gguf(g) => g.path.clone(),
        }
    }

    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            ModelSource::HfDir(d) => {
                let path = d.dir.join("config.json");
                if !path.exists() {
                    return Err(KestrelError::format(
                        &d.dir,
                        "no config.json in this directory: an HF model directory needs config.json, tokenizer.json and the safetensors weights",
                    ));
                }
                let mut cfg = ModelConfig::from_hf_file(&path)?;
                // generation_config.json's eos list (e.g. <|im_end|> and <|endoftext|>) is what generation stops on.
                let gen = d.dir.join("generation_config.json");
                if let Ok(text) = std::fs::read_to_string(&gen) {
                    let json: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| KestrelError::format(&gen, format!("invalid JSON: {e}")))?;
                    let ids: Vec<u32> = match json.get("eos_token_id") {
                        Some(serde_json::Value::Array(a)) => a
                            .iter()
                            .filter_map(|v| v.as_u64())
                            .map(|v| v as u32)
                            .collect(),
                        Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
                        None => vec![],
                    };
                    for id in ids {
                        if !cfg.eos_token_ids.contains(&id) {
                            cfg.eos_token_ids.push(id);
                        }
                    }
                }
                Ok(cfg)
            }
            ModelSource::Gguf(g) => ModelConfig::from_gguf(g),
        }
    }

    /// The tensor with HF name `hf_name`.
    pub fn tensor(&self, hf_name: &str) -> Result<HostTensor> {
        match self {
            ModelSource::HfDir(d) => d.tensor(hf_name),
            ModelSource::Gguf(g) => {
                let gname =
                    names::hf_to_gguf(hf_name).ok_or_else(|| KestrelError::MissingTensor {
                        name: hf_name.to_string(),
                        source_desc: g.path.display().to_string(),
                    })?;
                let mut t = g.tensor(&gname)?;
                t.name = format!("{gname} ({hf_name})");
                Ok(t)
            }
        }
    }

    pub fn has_tensor(&self, hf_name: &str) -> bool {
        match self {
            ModelSource::HfDir(d) => d.contains(hf_name),
            ModelSource::Gguf(g) => names::hf_to_gguf(hf_name)
                .map(|n| g.tensor_info(&n).is_some())
                .unwrap_or(false),
        }
    }
}
