//! Tiny random-weight Qwen3 / Qwen2 checkpoints (planted k_norm gains near 100, outlier activations)
//! against HF transformers' float32 logits and greedy tokens (scripts/make_tiny_golden.py made them).
//! Every source format of the same weights must agree: safetensors f32, sharded bf16, GGUF.

use std::path::PathBuf;

use kestrel::backend::cpu::CpuBackend;
use kestrel::backend::{AttnMetadata, Backend, KvCacheSpec, SeqSlice};
use kestrel::engine::generate::SingleSequence;
use kestrel::engine::sampling::argmax;
use kestrel::formats::source::ModelSource;
use kestrel::model::Qwen3Model;
use serde_json::Value;

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata")).join(rel)
}

struct Reference {
    prompt: Vec<u32>,
    greedy_prompt: Vec<u32>,
    greedy: Vec<u32>,
    logits: Vec<f32>,
    vocab: usize,
    json: Value,
}

fn reference(dir: &str) -> Reference {
    let d = testdata(dir);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        json[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let bytes = std::fs::read(d.join(json["logits_file"].as_str().unwrap())).unwrap();
    let logits: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let vocab = json["logits_shape"][1].as_u64().unwrap() as usize;
    Reference {
        prompt: ids("prompt_tokens"),
        greedy_prompt: ids("greedy_prompt_tokens"),
        greedy: ids("greedy_tokens"),
        logits,
        vocab,
        json,
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn load(path: &str) -> (CpuBackend, Qwen3Model<CpuBackend>) {
    let backend = CpuBackend::new();
    let src = ModelSource::open(testdata(path).to_str().unwrap()).unwrap();
    let cfg = src.config().unwrap();
    let model = Qwen3Model::load(&backend, &cfg, &src).unwrap();
    (backend, model)
}

/// Teacher-forced logits at every prompt position, fed in two chunks (so the second chunk attends to a
/// cached prefix), then greedy decoding.
fn check(model_path: &str, ref_dir: &str, max_rel_l2: f64) {
    let r = reference(ref_dir);
    let (backend, model) = load(model_path);
    let mut seq = SingleSequence::new(&backend, &model, 128).unwrap();
    let split = r.prompt.len() / 3;
    let mut rows = seq
        .feed(&backend, &model, &r.prompt[..split], true)
        .unwrap();
    rows.extend(
        seq.feed(&backend, &model, &r.prompt[split..], true)
            .unwrap(),
    );
    let ours: Vec<f32> = rows.concat();
    assert_eq!(ours.len(), r.prompt.len() * r.vocab);
    let err = rel_l2(&ours, &r.logits);
    eprintln!("{model_path}: logits rel L2 vs HF fp32 = {err:.3e} (bound {max_rel_l2:.1e})");
    assert!(
        err < max_rel_l2,
        "{model_path}: logits rel L2 {err:e} >= {max_rel_l2:e}"
    );

    let mut seq = SingleSequence::new(&backend, &model, 128).unwrap();
    let mut logits = seq
        .feed(&backend, &model, &r.greedy_prompt, false)
        .unwrap()
        .pop()
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..r.greedy.len() {
        let t = argmax(&logits);
        out.push(t);
        logits = seq
            .feed(&backend, &model, &[t], false)
            .unwrap()
            .pop()
            .unwrap();
    }
    assert_eq!(out, r.greedy, "{model_path}: greedy tokens differ from HF");
}

#[test]
fn qwen3_safetensors_f32_matches_hf() {
    check("tiny-qwen3", "tiny-qwen3", 1e-4);
}

#[test]
fn qwen3_gguf_f32_matches_hf() {
    check("tiny-qwen3/tiny-qwen3-f32.gguf", "tiny-qwen3", 1e-4);
}

#[test]
fn qwen2_safetensors_f32_matches_hf() {
    check("tiny-qwen2", "tiny-qwen2", 1e-4);
}

#[test]
fn qwen2_gguf_f32_matches_hf() {
    check("tiny-qwen2/tiny-qwen2-f32.gguf", "tiny-qwen2", 1e-4);
}

/// The sharded bf16 copy: our bf16-weights / f32-activations path must be at least as close to HF fp32
/// as HF's own bf16 run (parity criterion, margin 1.5x).
#[test]
fn qwen3_sharded_bf16_meets_parity_criterion() {
    let r = reference("tiny-qwen3");
    let hf_bf16 = r.json["hf_bf16_rel_l2"]
        .as_f64()
        .expect("hf_bf16_rel_l2 in reference.json");
    let (backend, model) = load("tiny-qwen3-bf16");
    let mut seq = SingleSequence::new(&backend, &model, 128).unwrap();
    let ours = seq
        .feed(&backend, &model, &r.prompt, true)
        .unwrap()
        .concat();
    let err = rel_l2(&ours, &r.logits);
    eprintln!("bf16: ours {err:.3e}, HF bf16 {hf_bf16:.3e}");
    assert!(
        err <= 1.5 * hf_bf16,
        "bf16 rel L2 {err:e} > 1.5 x HF bf16's {hf_bf16:e}"
    );
}

/// Rule 3: two sequences of different lengths in one batch, with blocks interleaved in the cache, give
/// the same logits as each run alone.
#[test]
fn mixed_batch_equals_sequences_alone() {
    let r = reference("tiny-qwen3");
    let (backend, model) = load("tiny-qwen3");
    let c = &model.config;
    let bs = 4;
    let mut cache = backend
        .alloc_kv_cache(&KvCacheSpec {
            num_layers: c.num_layers,
            num_blocks: 32,
            block_size: bs,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })
        .unwrap();
    let a = &r.prompt[..13];
    let b = &r.prompt[20..27];
    // Prefill both in one batch: a gets even blocks, b odd ones.
    let ta: Vec<u32> = (0..8).map(|i| 2 * i).collect();
    let tb: Vec<u32> = (0..8).map(|i| 2 * i + 1).collect();
    let meta = AttnMetadata::new(
        bs,
        vec![
            SeqSlice {
                query_start: 0,
                query_len: a.len(),
                context_len: a.len(),
                block_table: ta.clone(),
            },
            SeqSlice {
                query_start: a.len(),
                query_len: b.len(),
                context_len: b.len(),
                block_table: tb.clone(),
            },
        ],
    )
    .unwrap();
    let tokens: Vec<u32> = a.iter().chain(b).copied().collect();
    let logits = model
        .forward(
            &backend,
            &tokens,
            &meta,
            &mut cache,
            &meta.last_token_rows(),
        )
        .unwrap();
    let (_, vocab, both) = backend.to_host(&logits).unwrap();
    // Then one decode step for both (a chunk of 1 each, different context lengths).
    let meta2 = AttnMetadata::new(
        bs,
        vec![
            SeqSlice {
                query_start: 0,
                query_len: 1,
                context_len: a.len() + 1,
                block_table: ta,
            },
            SeqSlice {
                query_start: 1,
                query_len: 1,
                context_len: b.len() + 1,
                block_table: tb,
            },
        ],
    )
    .unwrap();
    let step = model
        .forward(&backend, &[5, 9], &meta2, &mut cache, &[0, 1])
        .unwrap();
    let (_, _, step) = backend.to_host(&step).unwrap();

    for (i, (seq, next)) in [(a, 5u32), (b, 9u32)].into_iter().enumerate() {
        let mut alone = SingleSequence::new(&backend, &model, 64).unwrap();
        let l1 = alone
            .feed(&backend, &model, seq, false)
            .unwrap()
            .pop()
            .unwrap();
        let l2 = alone
            .feed(&backend, &model, &[next], false)
            .unwrap()
            .pop()
            .unwrap();
        let e1 = rel_l2(&both[i * vocab..(i + 1) * vocab], &l1);
        let e2 = rel_l2(&step[i * vocab..(i + 1) * vocab], &l2);
        assert!(
            e1 < 1e-5 && e2 < 1e-5,
            "sequence {i}: batched vs alone rel L2 {e1:e} / {e2:e}"
        );
    }
}
