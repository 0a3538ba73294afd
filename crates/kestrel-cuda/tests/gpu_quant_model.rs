//! Quantized models end to end on the GPU: the tiny checkpoints quantized at load as `--quant` does
//! (Q8_0, Q4_0, Q4_K_M, whose tiny rows make Q4_K_M fall back to Q5_0 / Q8_0 as llama.cpp's does),
//! on the prefill path (dequantized tiles, cuBLAS) and the decode path (quantized GEMVs), held to
//! DESIGN.md's parity criterion on the quantized weights: HF transformers' fp32 and bf16 runs of the
//! same dequantized weights (testdata/quant-golden, scripts/make_quant_golden.py) are the reference
//! and the bar; greedy tokens equal fp32's as far as HF's bf16 run follows them. Also checked: the CPU
//! backend on the exactly dequantized weights (f32) matches HF fp32 (the golden holds the weights we
//! quantize); reported: the CPU backend on the quantized model (8-bit activations, as llama.cpp).
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1.

mod common;

use common::model_run::{greedy, json_ids, read_f32, rel_l2, teacher_forced, Dequantized};
use common::testdata;

use kestrel::backend::cpu::CpuBackend;
use kestrel::config::ModelConfig;
use kestrel::formats::quantizing::QuantizingSource;
use kestrel::formats::source::ModelSource;
use kestrel::model::Qwen3Model;
use kestrel::quant::QuantType;
use kestrel_cuda::backend::CudaBackend;
use serde_json::Value;

fn backend() -> Option<CudaBackend> {
    common::open_or_skip(CudaBackend::open(0))
}

struct Golden {
    prompt: Vec<u32>,
    greedy_prompt: Vec<u32>,
    fp32: Vec<f32>,
    greedy_fp32: Vec<u32>,
    greedy_margins: Vec<f64>,
    hf_bf16_rel_l2: f64,
    hf_bf16_rms_abs: f64,
    hf_bf16_greedy_agree: usize,
}

fn golden(dir: &str, quant: QuantType) -> Golden {
    let d = testdata("quant-golden");
    let path = d.join(format!("{dir}-{}.json", quant.name()));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |k: &str| json_ids(&json, k);
    Golden {
        prompt: ids("prompt_tokens"),
        greedy_prompt: ids("greedy_prompt_tokens"),
        fp32: read_f32(&d.join(json["logits_file"].as_str().unwrap())),
        greedy_fp32: ids("greedy_fp32"),
        greedy_margins: json["greedy_fp32_top1_top2_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect(),
        hf_bf16_rel_l2: json["hf_bf16_rel_l2"].as_f64().unwrap(),
        hf_bf16_rms_abs: json["hf_bf16_rms_abs"].as_f64().unwrap(),
        hf_bf16_greedy_agree: json["hf_bf16_greedy_agree_prefix"].as_u64().unwrap() as usize,
    }
}

fn check(dir: &str, quant: QuantType) {
    let Some(gpu) = backend() else { return };
    let r = golden(dir, quant);
    let src = ModelSource::open(testdata(dir).to_str().unwrap()).unwrap();
    let cfg: ModelConfig = src.config().unwrap();
    let quantized = QuantizingSource::new(&src, &cfg, quant);
    let gpu_model = Qwen3Model::load(&gpu, &cfg, &quantized).unwrap();
    let cpu = CpuBackend::new();
    let exact_model = Qwen3Model::load(&cpu, &cfg, &Dequantized(&quantized)).unwrap();
    let exact = teacher_forced(&cpu, &exact_model, &r.prompt, false);
    let golden_err = rel_l2(&exact, &r.fp32);
    assert!(
        golden_err < 1e-4,
        "{dir} {quant:?}: the CPU on the dequantized weights is {golden_err:e} from HF fp32: the \
         golden was made from other weights (rerun scripts/make_quant_golden.py)"
    );
    let cpu_model = Qwen3Model::load(&cpu, &cfg, &quantized).unwrap();
    let cpu_q = teacher_forced(&cpu, &cpu_model, &r.prompt, false);
    let bound = 1.5 * r.hf_bf16_rel_l2;
    eprintln!(
        "{dir} {quant:?}: HF bf16 {:.4e}; CPU quantized (8-bit activations) {:.4e}",
        r.hf_bf16_rel_l2,
        rel_l2(&cpu_q, &r.fp32)
    );
    for decode in [false, true] {
        let ours = teacher_forced(&gpu, &gpu_model, &r.prompt, decode);
        let (err, vs_cpu) = (rel_l2(&ours, &r.fp32), rel_l2(&ours, &cpu_q));
        let path = if decode { "decode" } else { "prefill" };
        eprintln!(
            "{dir} {quant:?} {path}: GPU vs HF fp32 {err:.4e} (bound {bound:.4e}), vs CPU quantized {vs_cpu:.4e}"
        );
        assert!(
            err <= bound,
            "{dir} {quant:?} {path}: rel L2 {err:e} > 1.5 x HF bf16's {:e}",
            r.hf_bf16_rel_l2
        );
    }
    // As kestrel::parity: greedy tokens follow fp32's as far as HF bf16's do, up to the first step
    // whose top-2 margin is within 2x HF bf16's RMS logit error (a tie either way may break).
    let tie = r
        .greedy_margins
        .iter()
        .position(|&m| m < 2.0 * r.hf_bf16_rms_abs)
        .unwrap_or(r.greedy_margins.len());
    let n = r.hf_bf16_greedy_agree.min(tie);
    let got = greedy(&gpu, &gpu_model, &r.greedy_prompt, n.max(1));
    let cpu_tokens = greedy(&cpu, &cpu_model, &r.greedy_prompt, n.max(1));
    let agree = got
        .iter()
        .zip(&cpu_tokens)
        .take_while(|(a, b)| a == b)
        .count();
    eprintln!(
        "{dir} {quant:?}: greedy GPU vs CPU quantized: {agree} of {} agree",
        n.max(1)
    );
    assert_eq!(
        got[..n],
        r.greedy_fp32[..n],
        "{dir} {quant:?}: greedy tokens leave HF fp32's within the {n} steps before a tie or HF bf16's leaving"
    );
}

#[test]
fn tiny_qwen3_q8_0() {
    check("tiny-qwen3", QuantType::Q8_0);
}

#[test]
fn tiny_qwen3_q4_0() {
    check("tiny-qwen3", QuantType::Q4_0);
}

#[test]
fn tiny_qwen3_q4_k_m() {
    check("tiny-qwen3", QuantType::Q4_K_M);
}

#[test]
fn tiny_qwen2_with_qkv_bias_q8_0() {
    check("tiny-qwen2", QuantType::Q8_0);
}

#[test]
fn tiny_qwen2_with_qkv_bias_q4_k_m() {
    check("tiny-qwen2", QuantType::Q4_K_M);
}
