//! An HF safetensors checkpoint written as a quantized GGUF file that llama.cpp loads (`kestrel
//! quantize`): the metadata llama.cpp's convert_hf_to_gguf.py writes for qwen2/qwen3 (hyperparameters,
//! tokenizer, chat template), `general.file_type` the llama.cpp ftype, and the tensors under their GGUF
//! names in llama-quantize's order (names outside the blocks first, then block by block, by name within
//! each), each converted per the [`crate::quant::QuantPlan`] only when its turn comes to be written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::gguf::GgufValue;
use super::gguf_write::GgufWriter;
use super::quantizing::{OnTensor, QuantizingSource};
use super::source::{ModelSource, TensorSource};
use super::{names, HostTensor, TensorBytes};
use crate::config::{Arch, ModelConfig};
use crate::quant::{GgmlType, QuantType};
use crate::tokenizer::HfTokenizerExport;
use crate::{KestrelError, Result};

/// gguf-py's `GGML_QUANT_VERSION`, written as `general.quantization_version`.
const QUANT_VERSION: u32 = 2;

/// The `general.*` and `<arch>.*` metadata convert_hf_to_gguf writes for a Qwen2/Qwen3 config.
pub fn arch_metadata(cfg: &ModelConfig, name: &str, file_type: u32) -> Vec<(String, GgufValue)> {
    let arch = cfg.arch.name();
    let k = |key: &str| format!("{arch}.{key}");
    let u = |v: usize| GgufValue::U32(v as u32);
    let mut out = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.into()),
        ),
        ("general.type".into(), GgufValue::String("model".into())),
        ("general.name".into(), GgufValue::String(name.into())),
        (k("block_count"), u(cfg.num_layers)),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_heads)),
        (k("attention.head_count_kv"), u(cfg.num_kv_heads)),
        (k("rope.freq_base"), GgufValue::F32(cfg.rope_theta)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(cfg.rms_norm_eps),
        ),
    ];
    // convert_hf_to_gguf writes these when config.json has head_dim (Qwen3 always; Qwen2 configs
    // don't, and llama.cpp then takes hidden / heads).
    if cfg.arch == Arch::Qwen3 || cfg.head_dim * cfg.num_heads != cfg.hidden_size {
        out.push((k("attention.key_length"), u(cfg.head_dim)));
        out.push((k("attention.value_length"), u(cfg.head_dim)));
    }
    out.push(("general.file_type".into(), GgufValue::U32(file_type)));
    out
}

/// llama.cpp's tensor order: tensors outside the blocks first, then by block number, by name within.
fn llama_order(gguf_name: &str) -> (i64, String) {
    let layer = gguf_name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<i64>().ok())
        .unwrap_or(-1);
    (layer, gguf_name.to_string())
}

/// What was written.
#[derive(Debug, Default)]
pub struct ExportSummary {
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors and their data bytes per type.
    pub by_type: BTreeMap<String, (usize, u64)>,
}

/// A planned export: the source, its config and tokenizer, and the tensors to write.
pub struct GgufExport<'a> {
    source: &'a ModelSource,
    /// `general.name`.
    name: String,
    config: ModelConfig,
    quant: QuantType,
    tokenizer: HfTokenizerExport,
    /// (GGUF name, HF name, type, shape) in file order.
    tensors: Vec<(String, String, GgmlType, Vec<usize>)>,
    /// Checkpoint tensors with no GGUF name (not part of the model, e.g. rotary inv_freq buffers).
    pub skipped: Vec<String>,
}

impl<'a> GgufExport<'a> {
    /// Plans the export of `source`, which must be an HF safetensors directory.
    pub fn new(source: &'a ModelSource, quant: QuantType) -> Result<GgufExport<'a>> {
        let ModelSource::HfDir(d) = source else {
            return Err(KestrelError::format(
                source.path(),
                "this is a GGUF file, and quantizing reads an HF safetensors checkpoint directory \
                 (re-quantizing a GGUF is not supported; use the original checkpoint, or llama.cpp's \
                 llama-quantize)",
            ));
        };
        let config = source.config()?;
        let tokenizer = HfTokenizerExport::from_hf_dir(&d.dir, config.vocab_size)?;
        let qs = QuantizingSource::new(source, &config, quant);
        let mut tensors = Vec::new();
        let mut skipped = Vec::new();
        let mut names_sorted: Vec<&str> = d.names().collect();
        names_sorted.sort_unstable();
        for hf in names_sorted {
            let Some(gguf) = names::hf_to_gguf(hf) else {
                skipped.push(hf.to_string());
                continue;
            };
            if let Some(layer) = gguf.strip_prefix("blk.").and_then(|r| r.split('.').next()) {
                if layer.parse::<usize>().is_ok_and(|l| l >= config.num_layers) {
                    return Err(KestrelError::format(
                        &d.dir,
                        format!(
                            "tensor '{hf}' belongs to layer {layer}, but config.json says num_hidden_layers is {}",
                            config.num_layers
                        ),
                    ));
                }
            }
            let t = source.tensor(hf)?;
            let ty = qs.plan().tensor_type(hf, &t.shape)?;
            tensors.push((gguf, hf.to_string(), ty, t.shape));
        }
        tensors.sort_by_key(|t| llama_order(&t.0));
        let name = d
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Ok(GgufExport {
            source,
            name,
            config,
            quant,
            tokenizer,
            tensors,
            skipped,
        })
    }

    /// Sets `general.name` (default: the checkpoint directory's name).
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Tensors the file will hold.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// All the metadata, in convert_hf_to_gguf's order.
    pub fn metadata(&self) -> Vec<(String, GgufValue)> {
        let mut m = arch_metadata(&self.config, &self.name, self.quant.llama_ftype());
        m.extend(self.tokenizer.metadata());
        m.push((
            "general.quantization_version".into(),
            GgufValue::U32(QUANT_VERSION),
        ));
        m
    }

    /// Writes the file at `out` (through `out.partial`, renamed when complete), converting one tensor
    /// at a time; `on_tensor` sees each converted tensor.
    pub fn write(&self, out: &Path, on_tensor: Option<OnTensor>) -> Result<ExportSummary> {
        let mut w = GgufWriter::new();
        for (k, v) in self.metadata() {
            w.add_kv(k, v);
        }
        for (gguf, _, ty, shape) in &self.tensors {
            w.add_tensor_deferred(gguf.clone(), *ty, shape)?;
        }
        let mut qs = QuantizingSource::new(self.source, &self.config, self.quant);
        if let Some(f) = on_tensor {
            qs = qs.with_progress(f);
        }
        let mut summary = ExportSummary::default();
        let mut partial = out.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let result = w.write_with(&partial, |gguf| {
            let (_, hf, ty, _) = self
                .tensors
                .iter()
                .find(|t| t.0 == gguf)
                .ok_or_else(|| KestrelError::Engine(format!("unplanned tensor {gguf}")))?;
            let t: HostTensor = qs.tensor(hf)?;
            if t.ty != *ty {
                return Err(KestrelError::Engine(format!(
                    "tensor '{hf}' came out {} where the plan said {ty}",
                    t.ty
                )));
            }
            let bytes = match t.data {
                TensorBytes::Owned(v) => Arc::try_unwrap(v).unwrap_or_else(|v| v.to_vec()),
                mapped => mapped.as_slice().to_vec(),
            };
            summary.tensors += 1;
            summary.bytes += bytes.len() as u64;
            let e = summary.by_type.entry(ty.to_string()).or_default();
            e.0 += 1;
            e.1 += bytes.len() as u64;
            Ok(bytes)
        });
        if let Err(e) = result {
            std::fs::remove_file(&partial).ok();
            return Err(e);
        }
        std::fs::rename(&partial, out).map_err(|e| KestrelError::io(out, e))?;
        Ok(summary)
    }
}
