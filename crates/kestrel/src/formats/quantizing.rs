//! A [`TensorSource`] whose weights come out quantized per a [`QuantPlan`]: how `--quant` runs a float
//! checkpoint (HF safetensors, or an F32/F16/BF16 GGUF) as Q8_0 / Q4_0 / Q4_K_M without the model code
//! knowing, and what `kestrel quantize` writes to a GGUF file. Each tensor is converted when asked for,
//! row by row in parallel ([`quant::convert_tensor`]); norms and biases become F32.

use std::path::PathBuf;

use super::source::{ModelSource, TensorSource};
use super::HostTensor;
use crate::config::ModelConfig;
use crate::quant::{self, QuantPlan, QuantType};
use crate::{KestrelError, Result};

/// Called with each tensor as it is handed out (already converted).
pub type OnTensor<'a> = &'a (dyn Fn(&HostTensor) + Sync);

pub struct QuantizingSource<'a> {
    source: &'a ModelSource,
    plan: QuantPlan,
    on_tensor: Option<OnTensor<'a>>,
}

impl<'a> QuantizingSource<'a> {
    /// Quantizes `source`'s weights (the model `config` describes) to `quant`. The embeddings count as
    /// tied when the source has no `lm_head.weight`, as the model loader decides.
    pub fn new(source: &'a ModelSource, config: &ModelConfig, quant: QuantType) -> Self {
        let tied = !source.has_tensor("lm_head.weight");
        QuantizingSource {
            source,
            plan: QuantPlan::new(quant, config.num_layers, tied),
            on_tensor: None,
        }
    }

    /// Calls `f` with every tensor handed out (progress reporting).
    pub fn with_progress(mut self, f: OnTensor<'a>) -> Self {
        self.on_tensor = Some(f);
        self
    }

    pub fn plan(&self) -> &QuantPlan {
        &self.plan
    }
}

impl TensorSource for QuantizingSource<'_> {
    fn tensor(&self, hf_name: &str) -> Result<HostTensor> {
        let t = self.source.tensor(hf_name)?;
        if t.ty.is_quantized() {
            return Err(KestrelError::UnsupportedTensorType {
                tensor: t.name,
                ty: t.ty.to_string(),
                hint: format!(
                    " in {}: it is already quantized, and re-quantizing a quantized file is not \
                     supported (it would round the weights twice); run the file as it is, without a \
                     quantization type, or quantize the original F32/F16/BF16 checkpoint",
                    self.source.path().display()
                ),
            });
        }
        let ty = self.plan.tensor_type(hf_name, &t.shape)?;
        let out = if ty == t.ty {
            t
        } else {
            let bytes = quant::convert_tensor(t.ty, t.bytes(), ty, t.cols()).map_err(|e| {
                KestrelError::param(
                    format!("tensor '{}'", t.name),
                    format!("converting {} to {ty}: {e}", t.ty),
                )
            })?;
            HostTensor::from_bytes(t.name, ty, t.shape, bytes)
        };
        if let Some(f) = self.on_tensor {
            f(&out);
        }
        Ok(out)
    }

    fn has_tensor(&self, hf_name: &str) -> bool {
        self.source.has_tensor(hf_name)
    }

    fn path(&self) -> PathBuf {
        self.source.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    fn testdata(rel: &str) -> String {
        format!("{}/../../testdata/{rel}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn quantizes_matrices_per_plan_and_keeps_norms_f32() {
        let src = ModelSource::open(&testdata("tiny-qwen3-bf16")).unwrap();
        let cfg = src.config().unwrap();
        let q = QuantizingSource::new(&src, &cfg, QuantType::Q4_K_M);
        assert!(q.plan().tied_embeddings);
        let norm = q.tensor("model.layers.0.input_layernorm.weight").unwrap();
        assert_eq!(norm.ty, GgmlType::F32);
        let orig = src.tensor("model.layers.0.input_layernorm.weight").unwrap();
        assert_eq!(norm.to_f32().unwrap(), orig.to_f32().unwrap());
        // Rows of 64: Q4_K falls back to Q5_0; the last of 3 layers gets more bits (Q6_K -> Q8_0).
        let v = q.tensor("model.layers.2.self_attn.v_proj.weight").unwrap();
        assert_eq!(v.ty, GgmlType::Q8_0);
        let gate = q.tensor("model.layers.0.mlp.gate_proj.weight").unwrap();
        assert_eq!(gate.ty, GgmlType::Q5_0);
        // Same bytes as quantizing the f32 values directly.
        let orig = src.tensor("model.layers.0.mlp.gate_proj.weight").unwrap();
        let direct =
            quant::quantize_tensor(GgmlType::Q5_0, &orig.to_f32().unwrap(), orig.cols()).unwrap();
        assert_eq!(gate.bytes(), &direct[..]);
    }

    #[test]
    fn refuses_to_requantize() {
        let dir = std::env::temp_dir().join(format!("kestrel-requant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.gguf");
        let mut w = crate::formats::gguf_write::GgufWriter::new();
        let data = quant::quantize_tensor(GgmlType::Q8_0, &[0.5; 64], 32).unwrap();
        w.add_tensor("token_embd.weight", GgmlType::Q8_0, &[2, 32], data)
            .unwrap();
        w.write(&path).unwrap();
        let src = ModelSource::open(path.to_str().unwrap()).unwrap();
        let cfg = crate::config::ModelConfig::from_hf_json(&serde_json::json!({
            "model_type": "qwen3", "vocab_size": 2, "hidden_size": 32, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 1, "head_dim": 32
        }))
        .unwrap();
        let q = QuantizingSource::new(&src, &cfg, QuantType::Q4_0);
        let e = q
            .tensor("model.embed_tokens.weight")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("token_embd.weight") && e.contains("re-quantizing"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
