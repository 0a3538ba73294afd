//! The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (fetched by scripts/fetch-assets.sh) against
//! llama.cpp (llama-cpp-python 0.3.36; scripts/llama_cpp_reference.py made testdata/real/).

use std::path::PathBuf;

use kestrel::backend::cpu::CpuBackend;
use kestrel::engine::generate::{generate, SingleSequence};
use kestrel::engine::loaded::LoadedModel;
use kestrel::engine::sampling::SamplingParams;
use serde_json::Value;

fn model_path() -> PathBuf {
    let cache = std::env::var_os("KESTREL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/kestrel")
        });
    let p = cache.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets.sh",
        p.display()
    );
    p
}

fn golden(name: &str) -> Value {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/real")).join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load() -> (CpuBackend, LoadedModel<CpuBackend>) {
    let backend = CpuBackend::new();
    let loaded = LoadedModel::load(model_path().to_str().unwrap(), &backend).unwrap();
    (backend, loaded)
}

fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    idx.truncate(k);
    idx
}

/// One test loads the model once and checks tokenizer, template, logits and generation, so CI pays
/// for one load.
#[test]
fn real_qwen25_coder_q4_k_m_matches_llama_cpp() {
    let (backend, loaded) = load();
    assert_eq!(loaded.config.arch, kestrel::config::Arch::Qwen2);

    // Tokenizer from the GGUF vocab vs llama.cpp's tokenizer. llama.cpp skips the NFC normalisation that
    // the model's own tokenizer.json applies; we follow tokenizer.json, so decomposed text is left out.
    let tok = golden("qwen25_tokenize.json");
    let mut checked = 0;
    for case in tok["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        if text.nfc_differs() {
            continue;
        }
        let ours = loaded
            .tokenizer
            .encode(text, case["parse_special"].as_bool().unwrap())
            .unwrap();
        assert_eq!(ours, ids(&case["ids"]), "tokens of {text:?}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} tokenizer cases checked");

    // Chat template from the GGUF, rendered as llama.cpp renders it (its default system prompt).
    let logit_ref = golden("qwen25_coder_logits.json");
    let template = loaded
        .chat_template
        .as_ref()
        .expect("the GGUF carries a chat template");
    let text = template
        .render(&logit_ref["messages"], None, true, None)
        .unwrap();
    assert_eq!(text, logit_ref["prompt_text"].as_str().unwrap());
    let prompt = loaded.tokenizer.encode(&text, true).unwrap();
    assert_eq!(prompt, ids(&logit_ref["prompt_tokens"]));

    // Last-position logits. llama.cpp quantizes activations to 8 bits for its dot products and keeps
    // an f16 KV cache, so the two engines can't agree bit for bit; llama.cpp itself moves by relative L2
    // 2.3e-2 (max abs 0.48) between feeding this prompt in one batch and token by token. We allow 3e-2.
    let bytes = std::fs::read(
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/real"))
            .join("qwen25_coder_last_logits.f32"),
    )
    .unwrap();
    let reference: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut seq = SingleSequence::new(&backend, &loaded.model, 64).unwrap();
    let ours = seq
        .feed(&backend, &loaded.model, &prompt, false)
        .unwrap()
        .pop()
        .unwrap();
    let num: f64 = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    let rel = (num / den).sqrt();
    let max_abs = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("last logits vs llama.cpp: rel L2 {rel:.3e}, max abs {max_abs:.3}");
    assert!(rel < 3e-2, "rel L2 {rel}");
    assert_eq!(top_k(&ours, 1), top_k(&reference, 1));
    let mut a = top_k(&ours, 5);
    let mut b = top_k(&reference, 5);
    a.sort();
    b.sort();
    assert_eq!(a, b, "top-5 sets differ");

    // The coding question, greedy, through the model's own template: a Python function comes out.
    let chat = golden("qwen25_chat.json");
    let text = template
        .render(&chat["messages"], None, true, None)
        .unwrap();
    let prompt = loaded.tokenizer.encode(&text, true).unwrap();
    assert_eq!(prompt, ids(&chat["prompt_tokens"]));
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 48,
        ..Default::default()
    };
    let mut answer = String::new();
    let stats = generate(
        &backend,
        &loaded.model,
        &loaded.tokenizer,
        &prompt,
        &params,
        &loaded.eos_token_ids,
        512,
        |t| answer.push_str(t),
    )
    .unwrap();
    eprintln!("answer: {answer}");
    assert!(answer.contains("def "), "no Python def in: {answer}");
    // Greedy paths of two engines may part at a near-tie; the first tokens must agree.
    let llama = ids(&chat["greedy_tokens"]);
    assert_eq!(
        stats.tokens[..8],
        llama[..8],
        "first greedy tokens differ from llama.cpp"
    );
}

trait NfcDiffers {
    fn nfc_differs(&self) -> bool;
}

impl NfcDiffers for str {
    /// True for text with combining marks (U+0300..U+036F), which NFC would compose.
    fn nfc_differs(&self) -> bool {
        self.chars().any(|c| ('\u{300}'..='\u{36f}').contains(&c))
    }
}

/// `kestrel perplexity`'s method against llama.cpp's (scripts/llama_cpp_perplexity.py made the golden:
/// llama-cpp-python 0.3.36, 4 chunks of 512 tokens of the GPL-3 text as Debian ships it, a text we did
/// not write). llama.cpp quantizes activations to 8 bits and keeps an f16 KV cache, so the two differ
/// (measured: 6.1905 vs 6.2387, -0.8%; llama.cpp's own number does not move with its batch size); the
/// issue's bound is 1%.
#[test]
fn real_qwen25_perplexity_is_within_one_percent_of_llama_cpp() {
    let (backend, loaded) = load();
    let want = golden("qwen25_perplexity.json");
    let text = std::fs::read_to_string(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/text/gpl-3.0.txt"
    )))
    .unwrap();
    let tokens = loaded.tokenizer.encode(&text, true).unwrap();
    assert_eq!(tokens.len() as u64, want["tokens"].as_u64().unwrap());
    let n_ctx = want["n_ctx"].as_u64().unwrap() as usize;
    let chunks = want["chunks"].as_u64().unwrap() as usize;
    let bos = loaded.tokenizer.encode("", true).unwrap().first().copied();
    assert_eq!(bos.is_some(), want["add_bos"].as_bool().unwrap());
    let ours = kestrel::engine::perplexity::perplexity(
        &backend,
        &loaded.model,
        &tokens,
        n_ctx,
        bos,
        Some(chunks),
        |_| {},
    )
    .unwrap();
    assert_eq!(ours.count as u64, want["scored"].as_u64().unwrap());
    let theirs = want["ppl"].as_f64().unwrap();
    eprintln!(
        "perplexity {:.4} (llama.cpp {theirs:.4}), per chunk {:?}",
        ours.ppl(),
        ours.running
    );
    assert!(
        (ours.ppl() / theirs - 1.0).abs() < 0.01,
        "perplexity {} vs llama.cpp {theirs}",
        ours.ppl()
    );
}
