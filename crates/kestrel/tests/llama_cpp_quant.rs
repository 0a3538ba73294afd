//! GGUF files quantized by llama.cpp itself (Q8_0, Q4_0, Q4_K_M of a random Qwen3 whose rows are whole
//! 256-weight super-blocks, planted k_norm gains up to 96.5: testdata/llama-cpp-quant/, made by
//! scripts/make_llama_cpp_quant_models.py with llama-cpp-python 0.3.36) on the CPU backend:
//! - Kestrel reads every tensor with the type llama.cpp wrote (Q8_0, Q4_0, Q4_K, Q6_K, F32);
//! - over the weights dequantized to f32, Kestrel computes what HF transformers computes in f32 on the
//!   same dequantized weights (the file is read right: block layouts, shapes, names, metadata);
//! - on the quantized weights (8-bit activations), Kestrel's logits are llama.cpp's own on the file;
//! - the dequantized weights' greedy tokens are HF's (the path the GPU test follows).

use std::path::{Path, PathBuf};

use kestrel::backend::cpu::CpuBackend;
use kestrel::engine::generate::SingleSequence;
use kestrel::formats::gguf::GgufFile;
use kestrel::formats::source::{ModelSource, TensorSource};
use kestrel::formats::HostTensor;
use kestrel::model::Qwen3Model;
use kestrel::quant;
use serde_json::Value;

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/llama-cpp-quant"
    ))
    .join(rel)
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(testdata("reference.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Positions (rows of `vocab` logits) whose argmax is the same in `a` and `b`.
fn argmax_agree(a: &[f32], b: &[f32], vocab: usize) -> usize {
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap();
    a.chunks_exact(vocab)
        .zip(b.chunks_exact(vocab))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count()
}

/// The file's tensors with every quantized one decoded exactly to f32.
struct Dequantized(ModelSource);

impl TensorSource for Dequantized {
    fn tensor(&self, hf_name: &str) -> kestrel::Result<HostTensor> {
        let t = self.0.tensor(hf_name)?;
        if !t.ty.is_quantized() {
            return Ok(t);
        }
        let values = quant::dequantize_tensor(t.ty, t.bytes(), t.cols())?;
        Ok(HostTensor::from_f32(t.name, t.shape, &values))
    }
    fn has_tensor(&self, hf_name: &str) -> bool {
        self.0.has_tensor(hf_name)
    }
    fn path(&self) -> PathBuf {
        self.0.path()
    }
}

/// Teacher-forced logits at every position, all tokens in one batch (as llama.cpp ran them).
fn logits(backend: &CpuBackend, model: &Qwen3Model<CpuBackend>, tokens: &[u32]) -> Vec<f32> {
    let mut seq = SingleSequence::new(backend, model, 64).unwrap();
    seq.feed(backend, model, tokens, true).unwrap().concat()
}

/// `max_vs_llama`: the bound on the relative L2 distance of Kestrel's logits (quantized weights, 8-bit
/// activations) to llama.cpp's, per file (see the note above the tests).
fn check(quant: &str, max_vs_llama: f64) {
    let reference = reference();
    let r = &reference["files"][quant];
    let tokens = ids(&reference["tokens"]);
    let vocab = r["logits_shape"][1].as_u64().unwrap() as usize;
    let path = testdata(r["gguf"].as_str().unwrap());

    // Every tensor has the type llama.cpp chose (the script read them back with gguf-py).
    let file = GgufFile::open(&path).unwrap();
    let types = r["tensor_types"].as_object().unwrap();
    assert_eq!(file.tensors.len(), types.len(), "{quant}: tensor count");
    for t in &file.tensors {
        assert_eq!(
            Some(t.ty.name()),
            types[&t.name].as_str(),
            "{quant}: type of {}",
            t.name
        );
    }

    let backend = CpuBackend::new();
    let src = ModelSource::open(path.to_str().unwrap()).unwrap();
    let cfg = src.config().unwrap();
    assert!(cfg.tie_word_embeddings, "{quant}: the test model is tied");
    let model = Qwen3Model::load(&backend, &cfg, &src).unwrap();
    let ours = logits(&backend, &model, &tokens);
    let exact_model = Qwen3Model::load(&backend, &cfg, &Dequantized(src)).unwrap();
    let exact = logits(&backend, &exact_model, &tokens);
    let hf = read_f32(&testdata(r["hf_fp32_logits_file"].as_str().unwrap()));
    let llama = read_f32(&testdata(r["llama_cpp_logits_file"].as_str().unwrap()));
    assert_eq!(ours.len(), tokens.len() * vocab);

    let e_exact = rel_l2(&exact, &hf);
    let e_llama = rel_l2(&ours, &llama);
    let agree = argmax_agree(&ours, &llama, vocab);
    eprintln!(
        "{quant}: dequantized f32 vs HF fp32 {e_exact:.3e}; quantized vs llama.cpp {e_llama:.3e} \
         (bound {max_vs_llama:.1e}), argmax {agree}/{}; vs exact: Kestrel {:.3e}, llama.cpp {:.3e}",
        tokens.len(),
        rel_l2(&ours, &exact),
        rel_l2(&llama, &exact),
    );
    // f32 on both sides over identical weights: only summation order differs, amplified by the planted
    // k_norm gains (96.5) to a few 1e-6 (measured 2.5e-6 .. 4.3e-6); a misread block, scale or shape
    // is O(1), and an 8-bit rounding of the activations alone is 1e-1.
    assert!(
        e_exact < 1e-5,
        "{quant}: dequantized weights in f32: rel L2 {e_exact:e} vs HF fp32 on the same weights"
    );
    assert!(
        e_llama <= max_vs_llama,
        "{quant}: rel L2 {e_llama:e} vs llama.cpp > {max_vs_llama:e}"
    );
    assert!(
        agree * 10 >= tokens.len() * 9,
        "{quant}: argmax agrees with llama.cpp at only {agree} of {} positions",
        tokens.len()
    );

    // The greedy path the GPU test compares against (HF fp32's; top1-top2 margins >= 0.05).
    let want = ids(&r["greedy_tokens"]);
    let mut seq = SingleSequence::new(&backend, &exact_model, 64).unwrap();
    let mut got = vec![seq
        .feed_argmax(&backend, &exact_model, &ids(&r["greedy_prompt_tokens"]))
        .unwrap()];
    while got.len() < want.len() {
        let next = seq
            .feed_argmax(&backend, &exact_model, &[*got.last().unwrap()])
            .unwrap();
        got.push(next);
    }
    assert_eq!(
        got, want,
        "{quant}: greedy tokens of the dequantized weights"
    );
}

// Why the bounds differ by format. Both engines round the activations to 8 bits per block before an
// integer dot product with quantized weights, and the k_norm gains near 100 turn a rounding of the
// input to k_proj into attention scores off by a tenth or more (HF's own bf16 run of these weights is
// 3-5% from its f32 run; an f32 run of the dequantized weights is 7-13% from these 8-bit runs).
// - Q4_K_M: every quantized tensor is a K-quant (Q4_K, Q6_K), whose activations both engines round
//   to Q8_K alike (f32 scale, same rounding): the logits agree to f32 summation order. Measured
//   8.4e-7 (AVX-512 VNNI kernels); the bound 1e-5 leaves room for the AVX2 or scalar kernels'
//   summation order on other CPUs (x100 through the gains, as in the f32 check above) and is still
//   four orders below a different activation rounding.
// - Q8_0 and Q4_0 (its token_embd, the tied lm_head, is Q6_K): 32-element activation blocks whose
//   scale ggml stores as f16 and Kestrel keeps in f32: a perturbation of ~2e-4 per block, which the
//   gains amplify as they do llama.cpp's own F16 KV cache (~5%). Measured 6.1e-2 (Q8_0) and 3.5e-2
//   (Q4_0), about as far as each engine is from the exact run; bounds 2x that. The argmax agrees at
//   23/24 and 22/24 positions (asserted: >= 90%).
// llama.cpp ran with an F32 KV cache (its default F16 cache alone moves its logits by ~5%, recorded
// in reference.json as llama_cpp_f16_kv_rel_l2), flash attention off, all tokens in one batch.

#[test]
fn llama_cpp_q8_0_file() {
    check("q8_0", 0.12);
}

#[test]
fn llama_cpp_q4_0_file() {
    check("q4_0", 0.07);
}

#[test]
fn llama_cpp_q4_k_m_file() {
    check("q4_k_m", 1e-5);
}
