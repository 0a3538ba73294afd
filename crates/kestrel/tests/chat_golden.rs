//! The real Qwen3 chat template rendered by Kestrel against transformers' `apply_chat_template`
//! (testdata/chat/*.json, from scripts/gen_tokenizer_golden.py): byte-identical prompts.

use std::path::{Path, PathBuf};

use kestrel::tokenizer::ChatTemplate;
use serde_json::Value;

fn tokenizer_dir() -> PathBuf {
    let cache = std::env::var_os("KESTREL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kestrel")))
        .expect("neither KESTREL_CACHE nor HOME is set");
    let dir = cache.join("qwen3-tokenizer");
    if !dir.join("tokenizer_config.json").is_file() {
        panic!(
            "{} lacks tokenizer_config.json: run scripts/fetch-assets.sh",
            dir.display()
        );
    }
    dir
}

#[test]
fn qwen3_template_matches_transformers() {
    let template =
        ChatTemplate::from_tokenizer_config(&tokenizer_dir().join("tokenizer_config.json"))
            .unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/chat");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 8,
        "only {} golden conversations",
        paths.len()
    );
    let mut failures = Vec::new();
    for path in &paths {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let tools = Some(&case["tools"]).filter(|t| !t.is_null());
        let got = template
            .render(
                &case["messages"],
                tools,
                case["add_generation_prompt"].as_bool().unwrap(),
                case["enable_thinking"].as_bool(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if got != case["expected"].as_str().unwrap() {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- got\n{got}",
                path.display(),
                case["expected"].as_str().unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
