//! An HF tokenizer (tokenizer.json, tokenizer_config.json, config.json) as the `tokenizer.*` metadata of
//! a GGUF file, the way llama.cpp's convert_hf_to_gguf.py writes it for Qwen2/Qwen3 (`_set_vocab_gpt2`
//! and gguf-py's `SpecialVocab`): byte-level BPE ("gpt2") with the "qwen2" pre-tokenizer, one token per
//! id up to the model's vocab size (ids the tokenizer lacks become `[PADn]`, UNUSED), added tokens as
//! CONTROL (special, or `<|...|>`) or USER_DEFINED, the merges, special token ids from
//! tokenizer_config.json then config.json, `add_bos_token` (written false when tokenizer_config.json has
//! no such key, where gguf-py leaves it out: Qwen models take no BOS), and the chat template. (gguf-py also reads a
//! TemplateProcessing post-processor to guess BOS/EOS insertion; Qwen tokenizers have none, so that part
//! is left out.)

use std::path::Path;

use serde_json::Value;

use super::gguf_vocab::{GgufTokenType, GgufVocab};
use crate::formats::gguf::GgufValue;
use crate::{KestrelError, Result};

/// The vocabulary and chat template of an HF model directory.
#[derive(Debug)]
pub struct HfTokenizerExport {
    pub vocab: GgufVocab,
    /// Special token ids in the order gguf-py writes them: (GGUF key, id).
    pub special_ids: Vec<(&'static str, u32)>,
    pub chat_template: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| KestrelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| KestrelError::format(path, format!("invalid JSON: {e}")))
}

/// gguf-py's `SpecialVocab.special_token_types` with their GGUF keys.
const SPECIAL: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// convert_hf_to_gguf's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

impl HfTokenizerExport {
    /// Reads `dir`'s tokenizer for a model with `vocab_size` token ids (config.json's `vocab_size`).
    pub fn from_hf_dir(dir: &Path, vocab_size: usize) -> Result<HfTokenizerExport> {
        let tok_path = dir.join("tokenizer.json");
        let tok = read_json(&tok_path)?.ok_or_else(|| {
            KestrelError::Tokenizer(format!(
                "no tokenizer.json in {}: a GGUF file needs the model's tokenizer",
                dir.display()
            ))
        })?;
        let bad = |msg: String| KestrelError::format(&tok_path, msg);
        let model = &tok["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(bad(format!(
                "model.type is {}, Kestrel writes byte-level BPE tokenizers (Qwen2/Qwen3) only",
                model["type"]
            )));
        }
        let mut tokens: Vec<Option<(String, GgufTokenType)>> = vec![None; vocab_size];
        let mut put = |id: u64, text: &str, ty: GgufTokenType| -> Result<()> {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                bad(format!(
                    "token {text:?} has id {id}, beyond the model's vocab_size {vocab_size}"
                ))
            })?;
            *slot = Some((text.to_string(), ty));
            Ok(())
        };
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("model.vocab is not an object".into()))?;
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| bad(format!("model.vocab[{text:?}] is not an id")))?;
            put(id, text, GgufTokenType::Normal)?;
        }
        let added = tok["added_tokens"].as_array().cloned().unwrap_or_default();
        for a in &added {
            let (Some(id), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) else {
                return Err(bad(format!("added token {a} has no id or content")));
            };
            let special = a["special"].as_bool().unwrap_or(false);
            let ty = if special || looks_special(text) {
                GgufTokenType::Control
            } else {
                GgufTokenType::UserDefined
            };
            put(id, text, ty)?;
        }
        let (mut texts, mut types) = (Vec::with_capacity(vocab_size), Vec::new());
        for (i, t) in tokens.into_iter().enumerate() {
            let (text, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), GgufTokenType::Unused));
            texts.push(text);
            types.push(ty as i32);
        }
        let merges = merges(&model["merges"]).map_err(bad)?;

        // Special ids: tokenizer_config.json's `<type>_token` strings looked up among the added
        // tokens, then config.json's `<type>_token_id`; the first found wins.
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json(&tc_path)?.unwrap_or(Value::Null);
        let cfg = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        let mut special_ids: Vec<(&'static str, u32)> = Vec::new();
        let mut set = |key: &'static str, id: Option<u64>| {
            if let Some(id) = id.filter(|&i| (i as usize) < vocab_size) {
                if !special_ids.iter().any(|(k, _)| *k == key) {
                    special_ids.push((key, id as u32));
                }
            }
        };
        for (typ, key) in SPECIAL {
            let entry = &tc[format!("{typ}_token")];
            let content = entry.as_str().or_else(|| entry["content"].as_str());
            let id = content.and_then(|c| {
                added
                    .iter()
                    .find(|a| a["content"].as_str() == Some(c))
                    .and_then(|a| a["id"].as_u64())
            });
            set(key, id);
        }
        for (typ, key) in SPECIAL {
            set(key, cfg[format!("{typ}_token_id")].as_u64());
        }
        let id_of = |key: &str| special_ids.iter().find(|(k, _)| *k == key).map(|e| e.1);
        let vocab = GgufVocab {
            model: "gpt2".into(),
            pre: "qwen2".into(),
            tokens: texts,
            token_types: types,
            merges,
            bos_token_id: id_of("tokenizer.ggml.bos_token_id"),
            eos_token_id: id_of("tokenizer.ggml.eos_token_id"),
            padding_token_id: id_of("tokenizer.ggml.padding_token_id"),
            add_bos: tc["add_bos_token"].as_bool().unwrap_or(false),
        };
        Ok(HfTokenizerExport {
            vocab,
            special_ids,
            chat_template: chat_template(dir, &tc_path, &tc)?,
        })
    }

    /// The `tokenizer.*` metadata entries, in convert_hf_to_gguf's order.
    pub fn metadata(&self) -> Vec<(String, GgufValue)> {
        let v = &self.vocab;
        let strings = |xs: &[String]| {
            GgufValue::Array(xs.iter().map(|s| GgufValue::String(s.clone())).collect())
        };
        let mut out = vec![
            (
                "tokenizer.ggml.model".into(),
                GgufValue::String(v.model.clone()),
            ),
            (
                "tokenizer.ggml.pre".into(),
                GgufValue::String(v.pre.clone()),
            ),
            ("tokenizer.ggml.tokens".into(), strings(&v.tokens)),
            (
                "tokenizer.ggml.token_type".into(),
                GgufValue::Array(v.token_types.iter().map(|&t| GgufValue::I32(t)).collect()),
            ),
            ("tokenizer.ggml.merges".into(), strings(&v.merges)),
        ];
        for (key, id) in &self.special_ids {
            out.push((key.to_string(), GgufValue::U32(*id)));
        }
        out.push((
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(v.add_bos),
        ));
        if let Some(t) = &self.chat_template {
            out.push((
                "tokenizer.chat_template".into(),
                GgufValue::String(t.clone()),
            ));
        }
        out
    }
}

/// Merges as "left right" strings; the newer pair form encodes a space inside a part as U+0120 ('Ġ'),
/// as gguf-py does.
fn merges(v: &Value) -> std::result::Result<Vec<String>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| "model.merges is missing or not a list".to_string())?;
    list.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(p) if p.len() == 2 => {
                let part = |x: &Value| {
                    x.as_str()
                        .map(|s| s.replace(' ', "\u{120}"))
                        .ok_or_else(|| format!("merge {m} is not a pair of strings"))
                };
                Ok(format!("{} {}", part(&p[0])?, part(&p[1])?))
            }
            other => Err(format!(
                "merge {other} is neither \"a b\" nor [\"a\", \"b\"]"
            )),
        })
        .collect()
}

/// tokenizer_config.json's `chat_template` (a string, or the "default" of a `{name, template}` list),
/// else chat_template.jinja, else chat_template.json's, as gguf-py picks it.
fn chat_template(dir: &Path, tc_path: &Path, tc: &Value) -> Result<Option<String>> {
    let from_value = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(list) => list
                .iter()
                .find(|c| c["name"].as_str() == Some("default"))
                .and_then(|c| c["template"].as_str())
                .map(str::to_owned),
            _ => None,
        }
    };
    if let Some(v) = tc.get("chat_template") {
        return match from_value(v) {
            Some(t) => Ok(Some(t)),
            None if v.is_null() => Ok(None),
            None => Err(KestrelError::format(
                tc_path,
                "chat_template is neither a string nor a list with a \"default\" template",
            )),
        };
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| KestrelError::io(&jinja, e));
    }
    Ok(read_json(&dir.join("chat_template.json"))?.and_then(|j| from_value(&j["chat_template"])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir_with(files: &[(&str, Value)]) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("kestrel-hf-export-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for (name, v) in files {
            std::fs::write(d.join(name), v.to_string()).unwrap();
        }
        d
    }

    #[test]
    fn pads_missing_ids_types_added_tokens_and_encodes_spaces_in_merges() {
        let tok = json!({
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                      "merges": [["a", "b"], ["a b", "c"]]},
            "added_tokens": [
                {"id": 3, "content": "<|end|>", "special": false},
                {"id": 4, "content": "<think>", "special": false},
                {"id": 5, "content": "<pad>", "special": true}
            ]
        });
        let tc = json!({"eos_token": "<|end|>", "pad_token": {"content": "<pad>"},
                        "chat_template": [{"name": "default", "template": "T"}]});
        let d = dir_with(&[
            ("tokenizer.json", tok),
            ("tokenizer_config.json", tc),
            ("config.json", json!({"bos_token_id": 0, "eos_token_id": 1})),
        ]);
        let e = HfTokenizerExport::from_hf_dir(&d, 8).unwrap();
        assert_eq!(
            e.vocab.tokens[..6],
            ["a", "b", "ab", "<|end|>", "<think>", "<pad>"]
        );
        assert_eq!(e.vocab.tokens[6..], ["[PAD6]", "[PAD7]"]);
        assert_eq!(e.vocab.token_types, [1, 1, 1, 3, 4, 3, 5, 5]);
        assert_eq!(e.vocab.merges, ["a b", "a\u{120}b c"]);
        // tokenizer_config.json first (eos 3, pad 5), then config.json (bos 0; eos already set).
        assert_eq!(
            e.special_ids,
            [
                ("tokenizer.ggml.eos_token_id", 3),
                ("tokenizer.ggml.padding_token_id", 5),
                ("tokenizer.ggml.bos_token_id", 0)
            ]
        );
        assert_eq!(e.chat_template.as_deref(), Some("T"));
        assert!(!e.vocab.add_bos);
        // A token past the model's vocab size is an error naming it.
        let err = HfTokenizerExport::from_hf_dir(&d, 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("<think>") && err.contains("vocab_size 4"),
            "{err}"
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn refuses_non_bpe_and_missing_tokenizer() {
        let d = dir_with(&[("tokenizer.json", json!({"model": {"type": "Unigram"}}))]);
        let err = HfTokenizerExport::from_hf_dir(&d, 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Unigram") && err.contains("tokenizer.json"),
            "{err}"
        );
        std::fs::remove_file(d.join("tokenizer.json")).unwrap();
        let err = HfTokenizerExport::from_hf_dir(&d, 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no tokenizer.json"), "{err}");
        std::fs::remove_dir_all(&d).ok();
    }
}
