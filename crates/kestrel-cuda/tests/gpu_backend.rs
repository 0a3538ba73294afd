//! `Qwen3Model<CudaBackend>` end to end on the tiny checkpoints (random weights, planted k_norm gains
//! near 100, outlier activations) against HF transformers' float32 logits: DESIGN.md's parity
//! criterion (relative L2 of the logits no worse than 1.5× HF's own bf16 run), on the prefill path
//! (cuBLAS, prefill attention over a cached prefix) and on the decode path (GEMV, split-K decode
//! attention), greedy tokens as far as HF's bf16 run follows its fp32 run, a mixed batch against each
//! sequence alone, and the argmax kernel against the CPU's.
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1.

mod common;

use common::model_run::{json_ids, read_f32, rel_l2, teacher_forced};
use common::testdata;

use std::sync::{Mutex, MutexGuard, OnceLock};

use kestrel::backend::cpu::CpuBackend;
use kestrel::backend::{AttnMetadata, Backend, KvCacheSpec, SeqSlice};
use kestrel::engine::generate::{SingleSequence, BLOCK_SIZE};
use kestrel::engine::sampling::argmax;
use kestrel::formats::source::ModelSource;
use kestrel::formats::HostTensor;
use kestrel::model::Qwen3Model;
use kestrel::quant::GgmlType;
use kestrel::KestrelError;
use kestrel_cuda::backend::memory::weight_bytes;
use kestrel_cuda::backend::tensor::{matrix_for_device, matrix_to_bf16, HostMatrix};
use kestrel_cuda::backend::{CudaBackend, CudaTensor};
use kestrel_cuda::dtype::to_bf16;
use serde_json::Value;

/// A CudaBackend runs one forward at a time (one stream, graph capture, staged metadata): the tests
/// share one and take turns, each holding the guard for its whole body.
struct Gpu {
    _turn: MutexGuard<'static, ()>,
    backend: &'static CudaBackend,
}

fn backend() -> Option<Gpu> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    shared_backend().map(|backend| Gpu {
        _turn: turn,
        backend,
    })
}

fn shared_backend() -> Option<&'static CudaBackend> {
    static B: OnceLock<Option<CudaBackend>> = OnceLock::new();
    B.get_or_init(|| {
        common::open_or_skip(CudaBackend::open(0)).inspect(|b| {
            eprintln!("{}", b.name());
        })
    })
    .as_ref()
}

struct Reference {
    prompt: Vec<u32>,
    greedy_prompt: Vec<u32>,
    greedy: Vec<u32>,
    logits: Vec<f32>,
    hf_bf16_rel_l2: f64,
    hf_bf16_greedy_agree: usize,
}

fn reference(dir: &str) -> Reference {
    let d = testdata(dir);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let ids = |k: &str| json_ids(&json, k);
    Reference {
        prompt: ids("prompt_tokens"),
        greedy_prompt: ids("greedy_prompt_tokens"),
        greedy: ids("greedy_tokens"),
        logits: read_f32(&d.join(json["logits_file"].as_str().unwrap())),
        hf_bf16_rel_l2: json["hf_bf16_rel_l2"].as_f64().unwrap(),
        hf_bf16_greedy_agree: json["hf_bf16_greedy_agree_prefix"].as_u64().unwrap() as usize,
    }
}

fn load<B: Backend>(backend: &B, path: &str) -> Qwen3Model<B> {
    let src = ModelSource::open(testdata(path).to_str().unwrap()).unwrap();
    let cfg = src.config().unwrap();
    Qwen3Model::load(backend, &cfg, &src).unwrap()
}

fn check_parity(model_dir: &str, ref_dir: &str) {
    let Some(turn) = backend() else { return };
    let gpu = turn.backend;
    let r = reference(ref_dir);
    let model = load(gpu, model_dir);
    let cpu = CpuBackend::new();
    let cpu_model = load(&cpu, model_dir);
    let cpu_logits = teacher_forced(&cpu, &cpu_model, &r.prompt, false);
    let bound = 1.5 * r.hf_bf16_rel_l2;
    for decode in [false, true] {
        let ours = teacher_forced(gpu, &model, &r.prompt, decode);
        let err = rel_l2(&ours, &r.logits);
        let vs_cpu = rel_l2(&ours, &cpu_logits);
        let path = if decode { "decode" } else { "prefill" };
        eprintln!(
            "{model_dir} {path}: rel L2 vs HF fp32 {err:.4e} (vs CPU {vs_cpu:.4e}; HF bf16 {:.4e}, bound {bound:.4e})",
            r.hf_bf16_rel_l2
        );
        assert!(
            err <= bound,
            "{model_dir} {path}: rel L2 {err:e} > 1.5 x HF bf16's {:e}",
            r.hf_bf16_rel_l2
        );
    }
    // Greedy, through the GPU argmax, as far as HF's own bf16 run follows its fp32 run.
    let mut seq = SingleSequence::new(gpu, &model, 128).unwrap();
    let mut next = seq.feed_argmax(gpu, &model, &r.greedy_prompt).unwrap();
    let mut out = vec![next];
    while out.len() < r.hf_bf16_greedy_agree {
        next = seq.feed_argmax(gpu, &model, &[next]).unwrap();
        out.push(next);
    }
    let n = r.hf_bf16_greedy_agree;
    assert_eq!(
        out[..n],
        r.greedy[..n],
        "{model_dir}: greedy tokens leave HF fp32's within the {n} tokens HF bf16 follows"
    );
}

#[test]
fn tiny_qwen3_bf16_meets_the_parity_criterion() {
    check_parity("tiny-qwen3-bf16", "tiny-qwen3");
}

#[test]
fn tiny_qwen3_f32_weights_meet_the_parity_criterion() {
    check_parity("tiny-qwen3", "tiny-qwen3");
}

#[test]
fn tiny_qwen2_with_qkv_bias_meets_the_parity_criterion() {
    check_parity("tiny-qwen2", "tiny-qwen2");
}

/// Two sequences of different lengths in one batch (blocks interleaved in the cache), prefill then a
/// decode step, against each run alone: equal within bf16 noise (the paths differ: a batch of 20
/// tokens goes through cuBLAS, a sequence of 7 alone through the GEMV).
#[test]
fn mixed_batch_equals_sequences_alone() {
    let Some(turn) = backend() else { return };
    let gpu = turn.backend;
    let r = reference("tiny-qwen3");
    let model = load(gpu, "tiny-qwen3-bf16");
    let c = &model.config;
    let bs = 4;
    let mut cache = gpu
        .alloc_kv_cache(&KvCacheSpec {
            num_layers: c.num_layers,
            num_blocks: 32,
            block_size: bs,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })
        .unwrap();
    let (a, b) = (&r.prompt[..13], &r.prompt[20..27]);
    let ta: Vec<u32> = (0..8).map(|i| 2 * i).collect();
    let tb: Vec<u32> = (0..8).map(|i| 2 * i + 1).collect();
    let slice = |start, q, ctx, t: &Vec<u32>| SeqSlice {
        query_start: start,
        query_len: q,
        context_len: ctx,
        block_table: t.clone(),
    };
    let meta = AttnMetadata::new(
        bs,
        vec![
            slice(0, a.len(), a.len(), &ta),
            slice(a.len(), b.len(), b.len(), &tb),
        ],
    )
    .unwrap();
    let tokens: Vec<u32> = a.iter().chain(b).copied().collect();
    let logits = model
        .forward(gpu, &tokens, &meta, &mut cache, &meta.last_token_rows())
        .unwrap();
    let (_, vocab, both) = gpu.to_host(&logits).unwrap();
    let meta2 = AttnMetadata::new(
        bs,
        vec![slice(0, 1, a.len() + 1, &ta), slice(1, 1, b.len() + 1, &tb)],
    )
    .unwrap();
    let step = model
        .forward(gpu, &[5, 9], &meta2, &mut cache, &[0, 1])
        .unwrap();
    let (_, _, step) = gpu.to_host(&step).unwrap();
    let bound = r.hf_bf16_rel_l2;
    for (i, (seq, next)) in [(a, 5u32), (b, 9u32)].into_iter().enumerate() {
        let mut alone = SingleSequence::new(gpu, &model, 64).unwrap();
        let l1 = alone.feed(gpu, &model, seq, false).unwrap().pop().unwrap();
        let l2 = alone
            .feed(gpu, &model, &[next], false)
            .unwrap()
            .pop()
            .unwrap();
        let e1 = rel_l2(&both[i * vocab..(i + 1) * vocab], &l1);
        let e2 = rel_l2(&step[i * vocab..(i + 1) * vocab], &l2);
        eprintln!("sequence {i}: batched vs alone rel L2 {e1:.3e} (prefill) / {e2:.3e} (decode)");
        assert!(
            e1 <= bound && e2 <= bound,
            "sequence {i}: batched vs alone rel L2 {e1:e} / {e2:e} > HF's bf16 noise {bound:e}"
        );
    }
}

#[test]
fn argmax_kernel_matches_the_cpu_argmax() {
    let Some(turn) = backend() else { return };
    let gpu = turn.backend;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (rows, cols) in [(1, 151_936), (3, 512), (7, 1000), (2, 17), (5, 32_000)] {
        let mut host: Vec<f32> = (0..rows * cols)
            .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 20.0)
            .collect();
        for r in 0..rows {
            let row = &mut host[r * cols..(r + 1) * cols];
            match r % 3 {
                // a tie for the maximum: the lower index must win
                0 => {
                    let (i, j) = ((next() as usize) % cols, (next() as usize) % cols);
                    row[i] = 100.0;
                    row[j] = 100.0;
                }
                // every value the same: index 0
                1 => row.fill(-3.0),
                _ => {}
            }
        }
        let bf16 = to_bf16(&host);
        let rounded: Vec<f32> = bf16.iter().map(|v| v.to_f32()).collect();
        let want: Vec<u32> = rounded.chunks(cols).map(argmax).collect();
        let t = CudaTensor {
            rows,
            cols,
            data: gpu.device().stream().clone_htod(&bf16).unwrap(),
        };
        assert_eq!(gpu.argmax(&t).unwrap(), want, "rows {rows} cols {cols}");
    }
}

#[test]
fn kv_cache_sizing_and_clear_memory_errors() {
    let Some(turn) = backend() else { return };
    let gpu = turn.backend;
    let src = ModelSource::open(testdata("tiny-qwen3-bf16").to_str().unwrap()).unwrap();
    let cfg = src.config().unwrap();
    gpu.check_weights_fit(&cfg, weight_bytes(&cfg)).unwrap();
    let blocks = gpu.kv_cache_blocks(&cfg, 0.9, BLOCK_SIZE).unwrap();
    assert!(blocks > 1000, "{blocks} blocks for a tiny model");
    let err = gpu.kv_cache_blocks(&cfg, 0.001, BLOCK_SIZE).unwrap_err();
    assert!(err.to_string().contains("no room for a KV cache"), "{err}");
    assert!(gpu.kv_cache_blocks(&cfg, 1.5, BLOCK_SIZE).is_err());
    // a model far larger than the GPU is refused before anything is uploaded
    let mut huge = cfg.clone();
    huge.hidden_size = 65_536;
    huge.intermediate_size = 262_144;
    huge.num_layers = 64;
    let err = gpu
        .check_weights_fit(&huge, weight_bytes(&huge))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the model needs") && err.contains("free"),
        "{err}"
    );
}

/// Runs without a GPU: quantized types without a GPU kernel, and merged matrices mixing float and
/// quantized parts, are refused naming the tensor; formats with kernels are kept as blocks.
#[test]
fn quantized_weights_are_kept_or_refused_by_name() {
    let q = |name: &str, ty: GgmlType| {
        let bytes = ty.row_bytes(32).unwrap() * 2;
        HostTensor::from_bytes(name, ty, vec![2, 32], vec![0; bytes])
    };
    let down = "model.layers.0.mlp.down_proj.weight";
    let err = matrix_for_device(&[q(down, GgmlType::Q4_1)]).unwrap_err();
    assert!(
        matches!(err, KestrelError::UnsupportedTensorType { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("down_proj") && msg.contains("Q4_1") && msg.contains("--device cpu"),
        "{msg}"
    );
    let mixed = [
        q("model.layers.0.self_attn.q_proj.weight", GgmlType::Q8_0),
        HostTensor::from_f32(
            "model.layers.0.self_attn.k_proj.weight",
            vec![1, 32],
            &[0.5; 32],
        ),
    ];
    let msg = matrix_for_device(&mixed).unwrap_err().to_string();
    assert!(msg.contains("k_proj") && msg.contains("quantized"), "{msg}");
    // a Q8_0 part and a Q4_0 part stacked: two runs of planes, 4 rows in all
    let parts = [q("a", GgmlType::Q8_0), q("b", GgmlType::Q4_0)];
    match matrix_for_device(&parts).unwrap() {
        (4, 32, HostMatrix::Quant(runs)) => assert_eq!(runs.len(), 2),
        _ => panic!("expected two quantized runs"),
    }
    // bf16 source bytes pass through exactly; f32 rounds to nearest even
    let f = HostTensor::from_f32("w", vec![1, 2], &[1.0, 1.0 + 1.0 / 256.0]);
    let (rows, cols, v) = matrix_to_bf16(&[f]).unwrap();
    assert_eq!((rows, cols), (1, 2));
    assert_eq!(v[0].to_f32(), 1.0);
    assert_eq!(v[1].to_f32(), 1.0); // halfway between 1 and 1.0078125: rounds to even
}
