//! GGUF files quantized by llama.cpp itself, on the GPU: Q8_0, Q4_0 (with a Q6_K token_embd / tied
//! lm_head) and Q4_K_M (Q4_K, and Q6_K for token_embd and the last layer's attn_v / ffn_down) of a
//! random Qwen3 with 256-wide rows and k_norm gains up to 96.5 (testdata/llama-cpp-quant/, made by
//! scripts/make_llama_cpp_quant_models.py with llama-cpp-python 0.3.36). For each file, on the prefill
//! path (dequantized tiles, cuBLAS) and the decode path (quantized GEMVs), against:
//! (a) the file's weights dequantized exactly to f32, run by the CPU backend in f32: the GPU then
//!     differs only by its bf16 activations (and, in prefill, bf16-rounded weight tiles), so DESIGN.md's
//!     parity bound applies: teacher-forced logits of 16 sequences within 1.5x the distance of HF's own
//!     bf16 run of the same dequantized weights to its f32 run, both pooled over the 16 (reference.json:
//!     hf_bf16_rel_l2_probes; HF's bf16 run rounds the weights too), and greedy tokens equal for 4
//!     tokens (a prompt whose path has clear margins, which HF's bf16 run follows for 8);
//! (b) llama.cpp's logits on the same file (F32 KV cache), first sequence: reported; the argmax
//!     checked loosely, since llama.cpp's 8-bit activations put it 7-13% from the exact logits.
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1.

mod common;

use common::model_run::{greedy, rel_l2, teacher_forced, Dequantized};
use common::testdata;

use kestrel::backend::cpu::CpuBackend;
use kestrel::formats::source::ModelSource;
use kestrel::model::Qwen3Model;
use kestrel_cuda::backend::CudaBackend;
use serde_json::Value;

const GREEDY_TOKENS: usize = 4;

fn backend() -> Option<CudaBackend> {
    common::open_or_skip(CudaBackend::open(0))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn read_f32(rel: &str) -> Vec<f32> {
    std::fs::read(testdata(rel))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Indices of `row`'s `k` largest values, largest first.
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(k);
    idx
}

/// (positions where `ours`' argmax is `theirs`', positions where `theirs`' argmax is in `ours`' top 3).
fn agreement(ours: &[f32], theirs: &[f32], vocab: usize) -> (usize, usize) {
    let (mut top1, mut top3) = (0, 0);
    for (a, b) in ours.chunks_exact(vocab).zip(theirs.chunks_exact(vocab)) {
        let (want, got) = (top_k(b, 1)[0], top_k(a, 3));
        top1 += usize::from(got[0] == want);
        top3 += usize::from(got.contains(&want));
    }
    (top1, top3)
}

/// `(Σ |a - b|², Σ |b|²)`: the terms of a relative L2 error pooled over several sequences.
fn sq_terms(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (d, b.iter().map(|y| (*y as f64).powi(2)).sum())
}

fn check(quant: &str) {
    let Some(gpu) = backend() else { return };
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("llama-cpp-quant/reference.json")).unwrap(),
    )
    .unwrap();
    let r = &reference["files"][quant];
    let tokens = ids(&reference["tokens"]);
    let probes: Vec<Vec<u32>> = reference["probe_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    assert_eq!(
        probes[0], tokens,
        "the first probe sequence is the llama.cpp one"
    );
    let n = tokens.len();
    let vocab = r["logits_shape"][1].as_u64().unwrap() as usize;
    let file = |k: &str| format!("llama-cpp-quant/{}", r[k].as_str().unwrap());
    let src = ModelSource::open(testdata(&file("gguf")).to_str().unwrap()).unwrap();
    let cfg = src.config().unwrap();
    let gpu_model = Qwen3Model::load(&gpu, &cfg, &src).unwrap();
    let cpu = CpuBackend::new();
    let exact_model = Qwen3Model::load(&cpu, &cfg, &Dequantized(&src)).unwrap();
    let exact: Vec<Vec<f32>> = probes
        .iter()
        .map(|p| teacher_forced(&cpu, &exact_model, p, false))
        .collect();
    let llama = read_f32(&file("llama_cpp_logits_file"));
    assert_eq!(llama.len(), n * vocab);
    // HF's bf16 error pooled over the probe sequences: one sequence's ranges over a factor 3 here (the
    // k_norm gains make attention nearly hard, so a rounding flips which key wins at a few positions),
    // 16 pooled vary by ~10%; the GPU's error is pooled over the same sequences. Measured on an H200
    // (prefill / decode): Q8_0 4.0e-2 / 3.9e-2, Q4_0 5.0e-2 / 4.2e-2, Q4_K_M 3.6e-2 / 3.7e-2, against
    // HF bf16's 5.2e-2, 5.5e-2, 4.7e-2 (bounds 7.8e-2, 8.2e-2, 7.1e-2).
    let bound = 1.5 * r["hf_bf16_rel_l2_probes"]["pooled"].as_f64().unwrap();
    for decode in [false, true] {
        let path = if decode { "decode" } else { "prefill" };
        let (mut num, mut den, mut worst) = (0.0, 0.0, 0f64);
        let mut first = Vec::new();
        for (i, (p, want)) in probes.iter().zip(&exact).enumerate() {
            let ours = teacher_forced(&gpu, &gpu_model, p, decode);
            let (d, s) = sq_terms(&ours, want);
            (num, den, worst) = (num + d, den + s, worst.max((d / s).sqrt()));
            if i == 0 {
                first = ours;
            }
        }
        let err = (num / den).sqrt();
        let (top1, top3) = agreement(&first, &llama, vocab);
        eprintln!(
            "{quant} {path}: GPU vs exact {err:.4e} over {} sequences (bound {bound:.4e}; worst one \
             {worst:.4e}, first {:.4e}); vs llama.cpp {:.4e}, argmax {top1}/{n}, llama.cpp's argmax in \
             our top 3 {top3}/{n} (exact vs llama.cpp {:.4e})",
            probes.len(),
            rel_l2(&first, &exact[0]),
            rel_l2(&first, &llama),
            rel_l2(&exact[0], &llama),
        );
        assert!(
            err <= bound,
            "{quant} {path}: rel L2 {err:e} against the exactly dequantized model > {bound:e}"
        );
        // llama.cpp's rounding of the activations to 8 bits moves its logits 6-13% from the exact ones
        // here (the k_norm gains amplify it), enough to flip near ties: at writing, the exact logits'
        // argmax agreed with llama.cpp's at 24, 21 and 19 of 24 positions (Q8_0, Q4_0, Q4_K_M), HF's
        // bf16 run's at 21, 22 and 20, and the GPU's (H200) at 21, 21 and 19, so 80% would fail a
        // perfect engine; llama.cpp's argmax was in the top 3 of all of them at 24/24. A misread
        // tensor agrees at chance (1/512).
        assert!(
            top1 * 3 >= n * 2,
            "{quant} {path}: argmax agrees with llama.cpp at only {top1} of {n} positions"
        );
        assert!(
            top3 * 10 >= n * 9,
            "{quant} {path}: llama.cpp's argmax is in our top 3 at only {top3} of {n} positions"
        );
    }

    // Greedy from the file's recorded prompt, whose fp32 path has top1-top2 margins >= 0.5 (a quarter
    // of the logits' spread) over these tokens and which HF's bf16 run follows.
    let held = r["hf_bf16_greedy_agree_prefix"].as_u64().unwrap() as usize;
    let steps = GREEDY_TOKENS.min(held);
    let prompt = ids(&r["greedy_prompt_tokens"]);
    let want = greedy(&cpu, &exact_model, &prompt, steps);
    assert_eq!(
        want,
        ids(&r["greedy_tokens"])[..steps],
        "{quant}: the CPU's exact model leaves HF fp32's greedy tokens"
    );
    let got = greedy(&gpu, &gpu_model, &prompt, steps);
    assert_eq!(
        got, want,
        "{quant}: greedy tokens leave the exactly dequantized model's"
    );
}

#[test]
fn llama_cpp_q8_0_file() {
    check("q8_0");
}

#[test]
fn llama_cpp_q4_0_file() {
    check("q4_0");
}

#[test]
fn llama_cpp_q4_k_m_file() {
    check("q4_k_m");
}
