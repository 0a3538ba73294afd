//! The reference directory that `scripts/make_full_size_reference.py` writes: `reference.json` and,
//! per sequence, HF's fp32 and bf16 logits as raw little-endian f32 `[tokens, vocab]`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::report::Segment;
use crate::{KestrelError, Result};

/// One reference sequence: `tokens` = prompt + teacher tokens, and HF's logits `[tokens, vocab]`.
pub struct RefSequence {
    pub name: String,
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub fp32: Vec<f32>,
    pub bf16: Vec<f32>,
}

pub struct Reference {
    pub dir: PathBuf,
    pub shape: String,
    pub attn_implementation: String,
    pub vocab: usize,
    pub seqs: Vec<RefSequence>,
    /// HF fp32's and HF bf16's greedy tokens after the first sequence's prompt.
    pub greedy_fp32: Vec<u32>,
    pub greedy_bf16: Vec<u32>,
    pub greedy_fp32_margins: Vec<f64>,
}

impl Reference {
    pub fn load(dir: &Path) -> Result<Reference> {
        let path = dir.join("reference.json");
        let text = std::fs::read_to_string(&path).map_err(|e| KestrelError::io(&path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| KestrelError::format(&path, format!("invalid JSON: {e}")))?;
        let bad = |what: &str| KestrelError::format(&path, format!("missing or bad {what}"));
        let ids = |v: &Value, what: &str| -> Result<Vec<u32>> {
            v.as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as u32)).collect())
                .ok_or_else(|| bad(what))
        };
        let vocab = json["vocab"].as_u64().ok_or_else(|| bad("vocab"))? as usize;
        let mut seqs = Vec::new();
        for s in json["sequences"]
            .as_array()
            .ok_or_else(|| bad("sequences"))?
        {
            let name = s["name"].as_str().ok_or_else(|| bad("sequence name"))?;
            let tokens = ids(&s["tokens"], "sequence tokens")?;
            let prompt_len = s["prompt_len"].as_u64().ok_or_else(|| bad("prompt_len"))? as usize;
            let logits = |key: &str| -> Result<Vec<f32>> {
                let file = dir.join(s[key].as_str().ok_or_else(|| bad(key))?);
                let bytes = std::fs::read(&file).map_err(|e| KestrelError::io(&file, e))?;
                if bytes.len() != tokens.len() * vocab * 4 {
                    return Err(KestrelError::format(
                        &file,
                        format!(
                            "{} bytes, expected [{}, {vocab}] f32",
                            bytes.len(),
                            tokens.len()
                        ),
                    ));
                }
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            };
            if prompt_len == 0 || prompt_len > tokens.len() {
                return Err(bad("prompt_len"));
            }
            let seq = RefSequence {
                name: name.to_string(),
                fp32: logits("logits_fp32")?,
                bf16: logits("logits_bf16")?,
                tokens,
                prompt_len,
            };
            // The files must say what the generator measured (catches a misread or stale file).
            let mut check = Segment::new("");
            for p in 0..seq.prompt_len {
                let r = p * vocab..(p + 1) * vocab;
                check.add(
                    name,
                    p,
                    &seq.bf16[r.clone()],
                    &seq.fp32[r.clone()],
                    &seq.bf16[r],
                );
            }
            let want = s["hf_bf16_rel_l2_prefill"].as_f64().unwrap_or(f64::NAN);
            if (check.ours() - want).abs() > 1e-3 * want.abs().max(1e-6) {
                return Err(KestrelError::format(
                    &path,
                    format!("{name}: the logit files give HF bf16 rel L2 {:e}, reference.json says {want:e}", check.ours()),
                ));
            }
            seqs.push(seq);
        }
        if seqs.is_empty() {
            return Err(bad("sequences (none)"));
        }
        let g = &json["greedy"];
        Ok(Reference {
            dir: dir.to_path_buf(),
            shape: json["shape"].as_str().unwrap_or("?").to_string(),
            attn_implementation: json["attn_implementation"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
            vocab,
            seqs,
            greedy_fp32: ids(&g["fp32_tokens"], "greedy.fp32_tokens")?,
            greedy_bf16: ids(&g["bf16_tokens"], "greedy.bf16_tokens")?,
            greedy_fp32_margins: g["fp32_top1_top2_margins"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
        })
    }
}
