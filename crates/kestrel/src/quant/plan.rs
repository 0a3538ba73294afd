//! The quantization plan: which ggml type each weight of a Qwen2/Qwen3 model is stored as when Kestrel
//! quantizes it (`kestrel quantize`, `--quant`). It is llama.cpp's choice, `llama_tensor_get_type` in
//! src/llama-quant.cpp, for the three ftypes Kestrel makes, as it applies to dense Qwen2/Qwen3 models:
//!
//! | tensor                                     | Q8_0 | Q4_0  | Q4_K_M                          |
//! |--------------------------------------------|------|-------|---------------------------------|
//! | 1-D: norms, q/k/v biases                   | F32  | F32   | F32                             |
//! | `output.weight` (lm_head)                  | Q8_0 | Q6_K  | Q6_K                            |
//! | `token_embd.weight`, tied (no lm_head)     | Q8_0 | Q6_K  | Q6_K                            |
//! | `token_embd.weight`, untied                | Q8_0 | Q4_0  | Q4_K                            |
//! | `attn_v`, `ffn_down` of layer i            | Q8_0 | Q4_0  | Q6_K if use_more_bits(i), Q4_K  |
//! | `attn_q`, `attn_k`, `attn_output`, `ffn_gate`, `ffn_up` | Q8_0 | Q4_0 | Q4_K                |
//!
//! `use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2` (the first and last eighth of
//! the layers and every third one between). llama.cpp counts attn_v and ffn_down tensors as it meets
//! them (`i_attention_wv`, `i_ffn_down`); it visits tensors layer by layer (its loader sorts names by
//! block number, so blk.10 comes after blk.9) and each layer has one of each, so the count is the layer
//! index. (Before that sort, llama.cpp counted in name order, 0, 1, 10, 11, ..., 2, 20, ...: files
//! quantized then, like the Qwen2.5-Coder-0.5B Q4_K_M test asset, put Q6_K on other layers.) A K-quant needs rows that are a multiple of 256 elements; where a row isn't (Qwen2.5-0.5B's
//! hidden size 896), llama.cpp falls back: `output.weight` and a tied `token_embd` become Q8_0 at once,
//! and otherwise Q4_K -> Q5_0, Q6_K -> Q8_0 (then F16 if even that block size doesn't divide the row).
//! Checked tensor by tensor against llama.cpp itself: scripts/llama_cpp_quant_plan.py wrote
//! testdata/quant/llama_cpp_plan.json, which the tests below compare against.

use std::fmt;
use std::str::FromStr;

use super::GgmlType;
use crate::formats::names;
use crate::{KestrelError, Result};

/// A quantization Kestrel makes, named as llama.cpp's ftypes (`llama-quantize`'s type names).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_K_M,
}

impl QuantType {
    pub const ALL: [QuantType; 3] = [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_K_M];

    /// The lower-case name the command line takes (`q8_0`, `q4_0`, `q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_K_M => "q4_k_m",
        }
    }

    /// Parses a name, case-insensitively (`Q4_K_M`, `q4_k_m`; `-` for `_` too).
    pub fn parse(s: &str) -> Result<QuantType> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        QuantType::ALL
            .into_iter()
            .find(|t| t.name() == norm)
            .ok_or_else(|| {
                KestrelError::param(
                    "quantization type",
                    format!(
                        "'{s}' is not one of q8_0 (8.5 bits per weight), q4_0 (4.5) or q4_k_m (about 5)"
                    ),
                )
            })
    }

    /// llama.cpp's `llama_ftype` number, written as `general.file_type`.
    pub fn llama_ftype(self) -> u32 {
        match self {
            QuantType::Q8_0 => 7,
            QuantType::Q4_0 => 2,
            QuantType::Q4_K_M => 15,
        }
    }

    /// The type most weights get (llama.cpp's `default_type` for the ftype).
    pub fn base_type(self) -> GgmlType {
        match self {
            QuantType::Q8_0 => GgmlType::Q8_0,
            QuantType::Q4_0 => GgmlType::Q4_0,
            QuantType::Q4_K_M => GgmlType::Q4_K,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_ascii_uppercase())
    }
}

impl FromStr for QuantType {
    type Err = KestrelError;
    fn from_str(s: &str) -> Result<QuantType> {
        QuantType::parse(s)
    }
}

/// llama.cpp's `use_more_bits`: layers whose attn_v / ffn_down get Q6_K under Q4_K_M.
pub fn use_more_bits(layer: usize, num_layers: usize) -> bool {
    let (i, n) = (layer as i64, num_layers as i64);
    // `%` truncates like C's, and `i < n/8` short-circuits the negative case as in llama.cpp.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The plan for one model: the quantization, its layer count, and whether the embedding table is also
/// the output projection (no lm_head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantPlan {
    pub quant: QuantType,
    pub num_layers: usize,
    pub tied_embeddings: bool,
}

impl QuantPlan {
    pub fn new(quant: QuantType, num_layers: usize, tied_embeddings: bool) -> QuantPlan {
        QuantPlan {
            quant,
            num_layers,
            tied_embeddings,
        }
    }

    /// The type to store the tensor with HF name `hf_name` and shape `shape` (PyTorch order) as.
    pub fn tensor_type(&self, hf_name: &str, shape: &[usize]) -> Result<GgmlType> {
        if shape.len() < 2 {
            return Ok(GgmlType::F32);
        }
        let gguf = names::hf_to_gguf(hf_name).ok_or_else(|| {
            KestrelError::param(
                format!("tensor '{hf_name}'"),
                "not a Qwen2/Qwen3 weight Kestrel knows, so it has no quantization rule",
            )
        })?;
        self.gguf_tensor_type(&gguf, shape)
    }

    /// [`Self::tensor_type`] by GGUF name (`blk.3.attn_v.weight`), as llama.cpp decides it.
    pub fn gguf_tensor_type(&self, name: &str, shape: &[usize]) -> Result<GgmlType> {
        // llama.cpp quantizes 2-D tensors named *weight that are not norms; the rest keep their type,
        // which for 1-D tensors is F32 (convert_hf_to_gguf writes them so).
        if shape.len() < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
            return Ok(GgmlType::F32);
        }
        let cols = shape.last().copied().unwrap_or(0);
        let fits = |t: GgmlType| cols.is_multiple_of(t.block_size());
        let base = self.quant.base_type();
        let layer = || -> usize {
            name.strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse().ok())
                .unwrap_or(0)
        };
        let more_bits =
            || self.quant == QuantType::Q4_K_M && use_more_bits(layer(), self.num_layers);
        let mut ty = base;
        if name == "output.weight" || (self.tied_embeddings && name == "token_embd.weight") {
            ty = if !fits(base) {
                GgmlType::Q8_0
            } else if base != GgmlType::Q8_0 {
                GgmlType::Q6_K
            } else {
                base
            };
        } else if (name.contains("attn_v.weight") || name.contains("ffn_down")) && more_bits() {
            ty = GgmlType::Q6_K;
        }
        if !fits(ty) {
            ty = match ty {
                GgmlType::Q4_K => GgmlType::Q5_0,
                GgmlType::Q5_K => GgmlType::Q5_1,
                GgmlType::Q6_K => GgmlType::Q8_0,
                _ => {
                    return Err(KestrelError::param(
                        format!("tensor '{name}'"),
                        format!(
                            "rows of {cols} elements are not a multiple of the {ty} block size {} \
                             (llama.cpp cannot quantize it to {ty} either)",
                            ty.block_size()
                        ),
                    ))
                }
            };
            if !fits(ty) {
                ty = GgmlType::F16;
            }
        }
        Ok(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn parses_names_case_insensitively_and_lists_choices() {
        assert_eq!(QuantType::parse("Q4_K_M").unwrap(), QuantType::Q4_K_M);
        assert_eq!("q8_0".parse::<QuantType>().unwrap(), QuantType::Q8_0);
        assert_eq!(QuantType::parse("q4-0").unwrap(), QuantType::Q4_0);
        let e = QuantType::parse("q5_k_m").unwrap_err().to_string();
        assert!(
            e.contains("'q5_k_m'") && e.contains("q8_0") && e.contains("q4_k_m"),
            "{e}"
        );
        for t in QuantType::ALL {
            assert_eq!(QuantType::parse(&t.to_string()).unwrap(), t);
        }
    }

    #[test]
    fn use_more_bits_matches_llama_cpp_for_28_layers() {
        // Qwen3-0.6B / 1.7B: 28 layers. n/8 = 3, 7n/8 = 24.
        let picked: Vec<usize> = (0..28).filter(|&i| use_more_bits(i, 28)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
    }

    #[test]
    fn qwen25_05b_shapes_fall_back() {
        // hidden 896 (not a multiple of 256), ffn 4864 (19 x 256), 24 layers, tied.
        let p = QuantPlan::new(QuantType::Q4_K_M, 24, true);
        let t = |n: &str, s: &[usize]| p.gguf_tensor_type(n, s).unwrap();
        assert_eq!(t("token_embd.weight", &[151936, 896]), GgmlType::Q8_0);
        assert_eq!(t("blk.5.attn_q.weight", &[896, 896]), GgmlType::Q5_0);
        assert_eq!(t("blk.0.attn_v.weight", &[128, 896]), GgmlType::Q8_0);
        assert_eq!(t("blk.4.attn_v.weight", &[128, 896]), GgmlType::Q5_0);
        assert_eq!(t("blk.0.ffn_down.weight", &[896, 4864]), GgmlType::Q6_K);
        assert_eq!(t("blk.4.ffn_down.weight", &[896, 4864]), GgmlType::Q4_K);
        assert_eq!(t("blk.4.attn_norm.weight", &[896]), GgmlType::F32);
        let e = QuantPlan::new(QuantType::Q8_0, 2, false)
            .gguf_tensor_type("blk.0.attn_q.weight", &[64, 48])
            .unwrap_err()
            .to_string();
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("48"), "{e}");
    }

    /// Every tensor of every model and ftype in the golden table llama.cpp made.
    #[test]
    fn matches_llama_cpp_tensor_by_tensor() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/quant/llama_cpp_plan.json"
        );
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut checked = 0;
        for (model, entry) in golden["models"].as_object().unwrap() {
            let layers = entry["num_layers"].as_u64().unwrap() as usize;
            for (qname, table) in entry["plans"].as_object().unwrap() {
                let table = table.as_array().unwrap();
                let tied = !table.iter().any(|t| t["name"] == "output.weight");
                let plan = QuantPlan::new(QuantType::parse(qname).unwrap(), layers, tied);
                for t in table {
                    let name = t["name"].as_str().unwrap();
                    let shape: Vec<usize> = t["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect();
                    let hf = names::gguf_to_hf(name).unwrap();
                    let ours = plan.tensor_type(&hf, &shape).unwrap();
                    assert_eq!(
                        ours.name(),
                        t["type"].as_str().unwrap(),
                        "{model} {qname}: {name} {shape:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 400, "only {checked} tensors checked");
    }
}
