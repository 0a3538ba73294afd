//! Hugging Face hub downloads (`--model Qwen/Qwen3-0.6B`) into the standard HF cache
//! (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), with a progress bar per file. Files already in
//! the cache are used without touching the network, so a downloaded model works offline.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

use crate::{KestrelError, Result};

/// True when `s` looks like `owner/name` and is not a path on disk.
pub fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        && !Path::new(s).exists()
}

const SMALL_FILES: [&str; 4] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// Downloads (or finds in the cache) an HF model repo's config, tokenizer and safetensors weights, and
/// returns the snapshot directory that holds them.
pub fn fetch_model(repo_id: &str) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1");
    let cache = Cache::from_env();
    let cached = cache.repo(Repo::model(repo_id.to_string()));
    let get = |file: &str, required: bool| -> Result<Option<PathBuf>> {
        if let Some(p) = cached.get(file) {
            return Ok(Some(p));
        }
        if offline {
            return if required {
                Err(KestrelError::Download(format!(
                    "{repo_id}/{file} is not in the HF cache and HF_HUB_OFFLINE=1; unset it, or pass a local directory or .gguf file to --model"
                )))
            } else {
                Ok(None)
            };
        }
        let api = ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(|e| KestrelError::Download(format!("cannot set up the HF hub client: {e}")))?;
        match api.model(repo_id.to_string()).get(file) {
            Ok(p) => Ok(Some(p)),
            Err(_) if !required => Ok(None),
            Err(e) => Err(KestrelError::Download(format!(
                "could not download {file} from Hugging Face repo '{repo_id}': {e}. \
                 Are you offline, or is the repo id wrong? Pass a local model directory or .gguf file to --model instead."
            ))),
        }
    };
    let config =
        get("config.json", true)?.ok_or_else(|| KestrelError::Download("config.json".into()))?;
    for f in SMALL_FILES.iter().skip(1) {
        get(f, false)?;
    }
    if let Some(index) = get("model.safetensors.index.json", false)? {
        let text = std::fs::read_to_string(&index).map_err(|e| KestrelError::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| KestrelError::format(&index, format!("invalid JSON: {e}")))?;
        let mut shards: Vec<String> = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for s in shards {
            get(&s, true)?;
        }
    } else {
        get("model.safetensors", true)?;
    }
    Ok(config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_recognised() {
        assert!(looks_like_repo_id("Qwen/Qwen3-0.6B"));
        assert!(looks_like_repo_id("Qwen/Qwen2.5-Coder-0.5B-Instruct"));
        assert!(!looks_like_repo_id("model.gguf"));
        assert!(!looks_like_repo_id("/abs/path/model"));
        assert!(!looks_like_repo_id("a/b/c"));
    }

    #[test]
    fn offline_miss_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("kestrel-hf-{}", std::process::id()));
        std::env::set_var("HF_HOME", &dir);
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let err = fetch_model("nobody/not-a-model").unwrap_err().to_string();
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
        assert!(err.contains("nobody/not-a-model"), "{err}");
    }
}
