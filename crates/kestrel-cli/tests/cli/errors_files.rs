//! Bad model files: truncated or corrupt GGUF and safetensors, unknown tensor types and architectures,
//! missing files and tensors, wrong shapes.

use kestrel::formats::gguf::{GgufFile, GgufValue};
use kestrel::formats::gguf_write::GgufWriter;
use serde_json::json;

use crate::support::*;

const GREEDY: &[&str] = &["--temperature", "0", "-n", "4"];

/// `kestrel run --model <model> ... hi` must fail naming every needle.
fn run_fails(model: &str, needles: &[&str]) -> String {
    let mut args = vec!["run", "--model", model];
    args.extend_from_slice(GREEDY);
    args.push("hi");
    fails(&args, needles)
}

/// Writes a copy of the tiny GGUF with `edit` applied to its bytes.
fn gguf_variant(s: &Scratch, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = std::fs::read(tiny_gguf()).unwrap();
    edit(&mut bytes);
    s.write(name, &bytes)
}

#[test]
fn gguf_truncated_or_bad_magic() {
    let s = Scratch::new("gguf-trunc");
    let len = std::fs::metadata(tiny_gguf()).unwrap().len() as usize;
    let cases: [(&str, usize, &str); 4] = [
        ("header.gguf", 20, "too short for a GGUF header"),
        ("counts.gguf", 300, "truncated"),
        ("metadata.gguf", 3000, "corrupt or truncated"),
        ("data.gguf", len - 1000, "truncated"),
    ];
    for (name, keep, why) in cases {
        let p = gguf_variant(&s, name, |b| b.truncate(keep));
        run_fails(&p, &[&p, why]);
        fails(&["inspect", &p], &[&p, why]);
    }
    let p = gguf_variant(&s, "magic.gguf", |b| b[0] = b'X');
    run_fails(&p, &[&p, "not a GGUF file"]);
}

#[test]
fn gguf_unknown_tensor_type() {
    let s = Scratch::new("gguf-type");
    let g = GgufFile::open(&tiny_gguf()).unwrap();
    let t = &g.tensors[3];
    // A tensor info is: name (u64 length + bytes), n_dims u32, n_dims u64 dims, type u32, offset u64.
    let mut pat = (t.name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(t.name.as_bytes());
    let p = gguf_variant(&s, "type.gguf", |b| {
        let at = b.windows(pat.len()).position(|w| w == pat).unwrap();
        let ty = at + pat.len() + 4 + 8 * t.shape.len();
        b[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    });
    run_fails(&p, &[&p, &t.name, "unsupported tensor type id 99"]);
    fails(&["inspect", &p], &[&t.name, "id 99"]);
}

#[test]
fn gguf_unknown_architecture() {
    let s = Scratch::new("gguf-arch");
    let g = GgufFile::open(&tiny_gguf()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        let v = match k.as_str() {
            "general.architecture" => GgufValue::String("llama".into()),
            _ => v.clone(),
        };
        w.add_kv(k.clone(), v);
    }
    for t in &g.tensors {
        w.add_tensor(t.name.clone(), t.ty, &t.shape, g.tensor_data(t))
            .unwrap();
    }
    let p = s.s("llama.gguf");
    w.write(s.path("llama.gguf").as_path()).unwrap();
    run_fails(&p, &["unsupported architecture 'llama'", &p]);
    fails(&["inspect", &p], &["unsupported architecture 'llama'"]);
}

/// Rewrites `dir/file` (a safetensors file) with `edit` applied to its header and data.
fn edit_safetensors(
    dir: &std::path::Path,
    file: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>, &mut Vec<u8>),
) {
    let path = dir.join(file);
    let (mut header, mut data) = read_safetensors(&path);
    edit(&mut header, &mut data);
    write_safetensors(&path, &header, &data);
}

#[test]
fn safetensors_truncated_or_corrupt_header() {
    let s = Scratch::new("st-corrupt");
    let st = tiny_dir().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let last = last_tensor(&read_safetensors(&st).0);
    let variants: [(Vec<u8>, &[&str]); 4] = [
        (
            bytes[..bytes.len() - 100].to_vec(),
            &[last.as_str(), "truncated?"],
        ),
        (bytes[..5].to_vec(), &["only 5 bytes"]),
        (
            [&u64::MAX.to_le_bytes()[..], &bytes[8..]].concat(),
            &["header of 18446744073709551615 bytes"],
        ),
        ([&bytes[..8], b"#", &bytes[9..]].concat(), &["invalid JSON"]),
    ];
    for (i, (b, why)) in variants.into_iter().enumerate() {
        let dir = s.copy_dir(&tiny_dir(), &format!("v{i}"));
        let file = dir.join("model.safetensors");
        std::fs::write(&file, b).unwrap();
        let f = file.display().to_string();
        run_fails(dir.to_str().unwrap(), &[&[f.as_str()], why].concat());
        fails(&["inspect", dir.to_str().unwrap()], why);
    }
}

#[test]
fn safetensors_offsets_past_the_end() {
    let s = Scratch::new("st-offsets");
    let dir = s.copy_dir(&tiny_dir(), "m");
    let mut last = String::new();
    edit_safetensors(&dir, "model.safetensors", |h, data| {
        // The last tensor claims twice its bytes: shape and offsets agree, the file is too short.
        last = last_tensor(h);
        let t = h.get_mut(&last).unwrap();
        let (a, b) = (
            t["data_offsets"][0].as_u64().unwrap(),
            t["data_offsets"][1].as_u64().unwrap(),
        );
        let rows = t["shape"][0].as_u64().unwrap();
        t["shape"][0] = json!(rows * 2);
        t["data_offsets"] = json!([a, b + (b - a)]);
        assert_eq!(b as usize, data.len());
    });
    let f = dir.join("model.safetensors").display().to_string();
    run_fails(
        dir.to_str().unwrap(),
        &[&f, &last, "bytes follow the header"],
    );
}

#[test]
fn safetensors_unsupported_dtype() {
    let s = Scratch::new("st-dtype");
    let dir = s.copy_dir(&tiny_dir(), "m");
    edit_safetensors(&dir, "model.safetensors", |h, _| {
        // I32 has F32's size, so the file stays valid safetensors.
        h["model.norm.weight"]["dtype"] = json!("I32");
    });
    let f = dir.join("model.safetensors").display().to_string();
    run_fails(
        dir.to_str().unwrap(),
        &["unsupported tensor type I32", "model.norm.weight", &f],
    );

    // A hand-written file: an F64 tensor.
    let dir = s.copy_dir(&tiny_dir(), "f64");
    let mut h = serde_json::Map::new();
    h.insert(
        "model.embed_tokens.weight".into(),
        json!({"dtype": "F64", "shape": [2, 2], "data_offsets": [0, 32]}),
    );
    write_safetensors(&dir.join("model.safetensors"), &h, &[0u8; 32]);
    run_fails(
        dir.to_str().unwrap(),
        &["unsupported tensor type F64", "model.embed_tokens.weight"],
    );
}

#[test]
fn missing_tensor_and_wrong_shape() {
    let s = Scratch::new("st-missing");
    // Drop the last tensor of the last shard of the sharded BF16 checkpoint.
    let dir = s.copy_dir(&testdata("tiny-qwen3-bf16"), "m");
    let mut gone = String::new();
    edit_safetensors(&dir, "model-00003-of-00003.safetensors", |h, data| {
        gone = last_tensor(h);
        let a = h[&gone]["data_offsets"][0].as_u64().unwrap() as usize;
        h.remove(&gone);
        data.truncate(a);
    });
    run_fails(dir.to_str().unwrap(), &[&gone, "not found"]);

    let dir = s.copy_dir(&tiny_dir(), "shape");
    let cfg = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["hidden_size"] = json!(96);
    std::fs::write(&cfg, c.to_string()).unwrap();
    run_fails(
        dir.to_str().unwrap(),
        &[
            "model.embed_tokens.weight",
            "expected shape [512, 96]",
            "[512, 64]",
        ],
    );
}

#[test]
fn config_unknown_architecture_or_missing_files() {
    let s = Scratch::new("hf-files");
    let dir = s.copy_dir(&tiny_dir(), "llama");
    let cfg = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["model_type"] = json!("llama");
    std::fs::write(&cfg, c.to_string()).unwrap();
    let d = dir.display().to_string();
    run_fails(&d, &["unsupported architecture 'llama'", &d]);
    fails(&["inspect", &d], &["unsupported architecture 'llama'"]);

    let dir = s.copy_dir(&tiny_dir(), "notok");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let d = dir.display().to_string();
    run_fails(&d, &["no tokenizer.json", &d]);

    let dir = s.copy_dir(&tiny_dir(), "nocfg");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    run_fails(dir.to_str().unwrap(), &["config.json"]);

    let dir = s.copy_dir(&tiny_dir(), "badjson");
    std::fs::write(dir.join("config.json"), "{\"model_type\": ").unwrap();
    run_fails(dir.to_str().unwrap(), &["config.json", "invalid JSON"]);

    let dir = s.copy_dir(&tiny_dir(), "noweights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    run_fails(dir.to_str().unwrap(), &["no model.safetensors"]);

    let nothing = s.s("does-not-exist.gguf");
    run_fails(&nothing, &[&nothing, "no such file or directory"]);
    fails(&["inspect", &nothing], &[&nothing]);
}
