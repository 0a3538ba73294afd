//! The Qwen3 tokenizer against HF transformers: ids and decoded text for a corpus of hard cases
//! (testdata/tokenizer/qwen3_corpus.json, from scripts/gen_tokenizer_golden.py), through both the
//! tokenizer.json path and the GGUF-vocab path (testdata/tokenizer/qwen3_gguf_vocab.json holds the
//! arrays convert_hf_to_gguf.py writes for this tokenizer).

use std::path::{Path, PathBuf};

use kestrel::tokenizer::{GgufVocab, Tokenizer};
use serde_json::Value;

fn tokenizer_dir() -> PathBuf {
    let cache = std::env::var_os("KESTREL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kestrel")))
        .expect("neither KESTREL_CACHE nor HOME is set");
    let dir = cache.join("qwen3-tokenizer");
    if !dir.join("tokenizer.json").is_file() {
        panic!(
            "{} lacks tokenizer.json: run scripts/fetch-assets.sh",
            dir.display()
        );
    }
    dir
}

fn testdata(rel: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

struct Case {
    text: String,
    ids: Vec<u32>,
    ids_no_special: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
    /// llama.cpp types `<|fim_prefix|>` and the like as CONTROL although HF calls them non-special,
    /// so the GGUF path must differ from HF there; these are set only where it does.
    gguf_ids_no_special: Option<Vec<u32>>,
    gguf_decoded_skip_special: Option<String>,
}

fn corpus() -> Vec<Case> {
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let s = |v: &Value| v.as_str().unwrap().to_string();
    testdata("tokenizer/qwen3_corpus.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: s(&c["text"]),
            ids: ids(&c["ids"]),
            ids_no_special: ids(&c["ids_no_special"]),
            decoded: s(&c["decoded"]),
            decoded_skip_special: s(&c["decoded_skip_special"]),
            gguf_ids_no_special: c.get("gguf_ids_no_special").map(ids),
            gguf_decoded_skip_special: c.get("gguf_decoded_skip_special").map(s),
        })
        .collect()
}

fn gguf_vocab() -> GgufVocab {
    let v = testdata("tokenizer/qwen3_gguf_vocab.json");
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let id = |k: &str| v[k].as_u64().map(|x| x as u32);
    GgufVocab {
        model: v["model"].as_str().unwrap().into(),
        pre: v["pre"].as_str().unwrap().into(),
        tokens: strings("tokens"),
        token_types: v["token_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect(),
        merges: strings("merges"),
        bos_token_id: id("bos_token_id"),
        eos_token_id: id("eos_token_id"),
        padding_token_id: id("padding_token_id"),
        add_bos: v["add_bos"].as_bool().unwrap(),
    }
}

fn check_corpus(tok: &Tokenizer, what: &str, gguf: bool) {
    let mut cases = corpus();
    assert!(cases.len() >= 25);
    assert_eq!(
        cases
            .iter()
            .filter(|c| c.gguf_ids_no_special.is_some())
            .count(),
        1
    );
    if gguf {
        for c in &mut cases {
            c.ids_no_special = c
                .gguf_ids_no_special
                .take()
                .unwrap_or(c.ids_no_special.clone());
            c.decoded_skip_special = c
                .gguf_decoded_skip_special
                .take()
                .unwrap_or(c.decoded_skip_special.clone());
        }
    }
    for c in &cases {
        assert_eq!(
            tok.encode(&c.text, true).unwrap(),
            c.ids,
            "{what}, parse_special: {:?}",
            c.text
        );
        assert_eq!(
            tok.encode(&c.text, false).unwrap(),
            c.ids_no_special,
            "{what}, no parse_special: {:?}",
            c.text
        );
        assert_eq!(
            tok.decode(&c.ids, false).unwrap(),
            c.decoded,
            "{what}: {:?}",
            c.text
        );
        assert_eq!(
            tok.decode(&c.ids, true).unwrap(),
            c.decoded_skip_special,
            "{what}, skip_special: {:?}",
            c.text
        );
        assert_eq!(
            tok.decode(&c.ids_no_special, false).unwrap(),
            c.decoded,
            "{what}: {:?}",
            c.text
        );
    }
    // Decoding gives the text back except where NFC normalization changed it.
    let round_trips = cases.iter().filter(|c| c.decoded == c.text).count();
    assert!(
        round_trips >= cases.len() - 2,
        "{round_trips} of {} round-trip",
        cases.len()
    );
}

#[test]
fn tokenizer_json_matches_transformers() {
    let tok = Tokenizer::from_file(&tokenizer_dir().join("tokenizer.json")).unwrap();
    check_corpus(&tok, "tokenizer.json", false);
    assert_eq!(tok.vocab_size(), 151669);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(151644));
    assert_eq!(tok.token_to_id("<think>"), Some(151667));
    assert_eq!(tok.id_to_token(151645).as_deref(), Some("<|im_end|>"));
    assert!(tok.is_special(151645) && !tok.is_special(151667));
    assert!(tok.decode(&[151669], false).is_err());
}

#[test]
fn gguf_vocab_matches_tokenizer_json() {
    let vocab = gguf_vocab();
    assert_eq!((vocab.tokens.len(), vocab.merges.len()), (151936, 151387));
    let gguf = Tokenizer::from_gguf_vocab(&vocab).unwrap();
    check_corpus(&gguf, "GGUF vocab", true);
    let hf = Tokenizer::from_file(&tokenizer_dir().join("tokenizer.json")).unwrap();
    assert_eq!(gguf.vocab_size(), 151936);
    for id in 0..hf.vocab_size() as u32 {
        assert_eq!(gguf.id_to_token(id), hf.id_to_token(id), "id {id}");
        let token = hf.id_to_token(id).unwrap();
        let looks_special = token.starts_with("<|") && token.ends_with("|>");
        assert_eq!(
            gguf.is_special(id),
            hf.is_special(id) || looks_special,
            "id {id}"
        );
    }
    assert_eq!(gguf.id_to_token(151935).as_deref(), Some("[PAD151935]"));
    // Whole rendered chat prompts (special tokens, tool JSON, CJK, emoji) tokenize the same too.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/chat");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        let prompt = case["expected"].as_str().unwrap();
        for parse_special in [true, false] {
            assert_eq!(
                gguf.encode(prompt, parse_special).unwrap(),
                hf.encode(prompt, parse_special).unwrap()
            );
        }
    }
}

#[test]
fn streaming_reproduces_decode() {
    let tok = Tokenizer::from_file(&tokenizer_dir().join("tokenizer.json")).unwrap();
    for c in corpus() {
        for skip in [false, true] {
            let mut stream = tok.stream(skip);
            let mut pieces: Vec<String> = Vec::new();
            for &id in &c.ids {
                pieces.extend(stream.push(id).unwrap());
            }
            pieces.extend(stream.flush());
            let want = if skip {
                &c.decoded_skip_special
            } else {
                &c.decoded
            };
            assert_eq!(&pieces.concat(), want, "{:?}", c.text);
            let fffd_in_text = c.text.matches('\u{FFFD}').count();
            let fffd_out: usize = pieces.iter().map(|p| p.matches('\u{FFFD}').count()).sum();
            assert_eq!(
                fffd_out, fffd_in_text,
                "U+FFFD halves streaming {:?}: {pieces:?}",
                c.text
            );
        }
    }
}
