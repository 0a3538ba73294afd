//! The engine on the CUDA backend (the GPU twin of kestrel's `tests/engine_batching.rs`): batching,
//! chunked prefill, prefix-cache hits and preemption must not change a greedy request's output. Each
//! request is checked against itself run alone through a fresh engine on the same GPU, and that alone
//! run against the single-sequence path (`generate`, its own cache) on the same backend. Both tiny
//! checkpoints (Qwen3 with planted k_norm gains, Qwen2 with q/k/v bias).
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1.

mod common;

use common::testdata;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kestrel::engine::engine::{Engine, EngineConfig};
use kestrel::engine::generate::{generate, FinishReason};
use kestrel::engine::loaded::{LoadOptions, LoadedModel};
use kestrel::engine::request::{Output, Prompt};
use kestrel::engine::sampling::SamplingParams;
use kestrel::engine::scheduler::SchedulerConfig;
use kestrel::quant::plan::QuantType;
use kestrel_cuda::backend::CudaBackend;
use kestrel_cuda::CudaDevice;

const MODELS: [&str; 2] = ["tiny-qwen3-bf16", "tiny-qwen2"];

/// An engine owns its backend, so each engine gets a `CudaBackend` of its own over one shared device
/// (kernels compiled once). The backends share the device's one stream and a backend runs one
/// forward at a time (graph capture, staged metadata): the tests take turns, each holding the guard
/// for its whole body.
struct Gpu {
    _turn: MutexGuard<'static, ()>,
    dev: Arc<CudaDevice>,
}

fn gpu() -> Option<Gpu> {
    static TURN: Mutex<()> = Mutex::new(());
    static DEV: OnceLock<Option<Arc<CudaDevice>>> = OnceLock::new();
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dev = DEV.get_or_init(|| {
        common::open_or_skip(CudaDevice::open(0)).map(|d| {
            eprintln!("{}", d.name());
            Arc::new(d)
        })
    });
    dev.clone().map(|dev| Gpu { _turn: turn, dev })
}

fn config(
    block_size: usize,
    num_blocks: usize,
    max_num_seqs: usize,
    budget: usize,
) -> EngineConfig {
    EngineConfig {
        scheduler: SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens: budget,
            block_size,
            num_blocks,
            chunked_prefill: true,
        },
        max_model_len: None,
    }
}

/// A fresh engine (empty prefix cache, new backend) for the checkpoint in `testdata/<dir>`, and the
/// model's stop ids (the single-sequence path needs them; the engine keeps its own).
fn engine(gpu: &Gpu, dir: &str, cfg: EngineConfig) -> (Engine<CudaBackend>, Vec<u32>) {
    engine_with(gpu, dir, cfg, true, None)
}

/// [`engine`] with CUDA graphs on or off (`--eager`), the checkpoint quantized at load or not.
fn engine_with(
    gpu: &Gpu,
    dir: &str,
    cfg: EngineConfig,
    graphs: bool,
    quant: Option<QuantType>,
) -> (Engine<CudaBackend>, Vec<u32>) {
    let backend = CudaBackend::new(gpu.dev.clone());
    backend.set_cuda_graphs(graphs);
    let path = testdata(dir);
    let opts = LoadOptions {
        quant,
        ..Default::default()
    };
    let loaded =
        LoadedModel::load_with(path.to_str().expect("utf-8 testdata path"), &backend, opts)
            .unwrap_or_else(|e| panic!("loading {dir} ({quant:?}): {e}"));
    let eos = loaded.eos_token_ids.clone();
    let e = Engine::from_loaded(backend, loaded, cfg).expect("building the engine");
    (e, eos)
}

fn greedy(max_tokens: usize, ignore_eos: bool) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos,
        ..Default::default()
    }
}

/// `len` ordinary token ids (below 480 in both tiny tokenizers), reproducible from `seed`.
fn prompt(seed: u64, len: usize) -> Vec<u32> {
    let mut r = common::Rng(seed);
    (0..len).map(|_| r.below(480) as u32).collect()
}

type Reqs = Vec<(Vec<u32>, SamplingParams)>;

fn run_all(e: &mut Engine<CudaBackend>, reqs: &Reqs) -> Vec<Output> {
    let outs = e
        .generate(
            reqs.iter()
                .map(|(p, s)| (Prompt::Tokens(p.clone()), s.clone())),
        )
        .expect("engine generate");
    assert_eq!(outs.len(), reqs.len());
    outs
}

/// The request alone through a fresh engine of the same configuration (the same chunking, nothing
/// beside it, no prefix hits), checked against `generate` on that engine's backend and model.
fn alone(gpu: &Gpu, dir: &str, cfg: EngineConfig, p: &[u32], s: &SamplingParams) -> Output {
    let (mut e, eos) = engine(gpu, dir, cfg);
    let out = run_all(&mut e, &vec![(p.to_vec(), s.clone())]).remove(0);
    let mut text = String::new();
    let max_len = e.model().config.max_position_embeddings;
    let single = generate(
        e.backend(),
        e.model(),
        e.tokenizer(),
        p,
        s,
        &eos,
        max_len,
        |t| text.push_str(t),
    )
    .expect("single-sequence generation");
    let tag = format!("{dir}: prompt of {}: engine alone vs generate", p.len());
    assert_eq!(out.token_ids, single.tokens, "{tag}: tokens");
    assert_eq!(out.text, text, "{tag}: text");
    assert_eq!(
        out.finish_reason,
        Some(single.finish_reason),
        "{tag}: finish"
    );
    out
}

/// Every output equals its request run alone, field by field.
fn check_all(gpu: &Gpu, dir: &str, cfg: EngineConfig, reqs: &Reqs, outs: &[Output], tag: &str) {
    for (i, ((p, s), got)) in reqs.iter().zip(outs).enumerate() {
        let want = alone(gpu, dir, cfg, p, s);
        let tag = format!("{dir} {tag} request {i} (prompt {})", p.len());
        assert_eq!(got.token_ids, want.token_ids, "{tag}: tokens");
        assert_eq!(got.text, want.text, "{tag}: text");
        assert_eq!(got.finish_reason, want.finish_reason, "{tag}: finish");
        assert_eq!(got.prompt_tokens, p.len(), "{tag}: prompt tokens");
        assert_eq!(
            got.completion_tokens,
            got.token_ids.len(),
            "{tag}: completion tokens"
        );
    }
}

#[test]
fn batch_with_chunked_prefill_matches_each_request_alone() {
    let Some(gpu) = gpu() else { return };
    let lens = [3usize, 17, 40, 9, 64, 1, 25, 33];
    let maxes = [12usize, 20, 5, 30, 8, 16, 10, 14];
    let reqs: Reqs = lens
        .iter()
        .zip(maxes)
        .enumerate()
        .map(|(i, (&len, max))| (prompt(i as u64, len), greedy(max, i % 2 == 0)))
        .collect();
    // A 16-token budget splits the long prompts over several steps, mixed with other decodes.
    let cfg = config(4, 256, 8, 16);
    for dir in MODELS {
        let (mut e, _) = engine(&gpu, dir, cfg);
        let outs = run_all(&mut e, &reqs);
        check_all(&gpu, dir, cfg, &reqs, &outs, "chunked");
        let st = e.stats();
        eprintln!("{dir}: {st:?}");
        // Once every prompt is in, the steps are pure greedy decode: the decode graph path.
        assert!(
            st.graph_steps > 0,
            "{dir}: no step took the graph path: {st:?}"
        );
        assert!(st.graph_steps < st.steps, "{dir}: {st:?}");
        assert_eq!(
            e.num_free_blocks(),
            e.num_blocks(),
            "{dir}: every block freed"
        );
        // The default is asynchronous scheduling (decode steps fed from the previous step's
        // argmax on the device, read back a step later); synchronous steps give the same tokens.
        assert!(st.pipelined_steps > 0, "{dir}: nothing pipelined: {st:?}");
        let (mut e, _) = engine(&gpu, dir, cfg);
        e.backend().set_async_decode(false);
        let sync_outs = run_all(&mut e, &reqs);
        for (i, (a, b)) in sync_outs.iter().zip(&outs).enumerate() {
            assert_eq!(a.token_ids, b.token_ids, "{dir}: request {i} sync");
            assert_eq!(a.text, b.text, "{dir}: request {i} sync");
            assert_eq!(a.finish_reason, b.finish_reason, "{dir}: request {i} sync");
        }
        let st = e.stats();
        assert_eq!(st.pipelined_steps, 0, "{dir}: sync pipelined: {st:?}");
        assert_eq!(e.num_free_blocks(), e.num_blocks(), "{dir}: sync");
    }
}

#[test]
fn prefix_cache_hits_match_misses_and_a_fully_cached_prompt_works() {
    let Some(gpu) = gpu() else { return };
    let base = prompt(100, 32);
    let with = |tail_seed: u64, tail: usize| {
        let mut p = base.clone();
        p.extend(prompt(tail_seed, tail));
        p
    };
    let cfg = config(4, 256, 8, 64);
    for dir in MODELS {
        let (mut e, _) = engine(&gpu, dir, cfg);
        // Fill the cache with the shared prefix (a miss: nothing cached yet).
        let first = vec![(with(1, 7), greedy(10, true))];
        check_all(&gpu, dir, cfg, &first, &run_all(&mut e, &first), "first");
        assert_eq!(e.stats().cached_tokens, 0, "{dir}");
        // Different tails after the cached prefix, a shorter prefix, and the prefix itself (32
        // tokens: every block of it is cached, the last is recomputed to get logits).
        let second = vec![
            (with(2, 13), greedy(12, true)),
            (base[..30].to_vec(), greedy(9, true)),
            (base.clone(), greedy(11, true)),
        ];
        let hits_outs = run_all(&mut e, &second);
        check_all(&gpu, dir, cfg, &second, &hits_outs, "hits");
        let hits = e.stats().cached_tokens;
        assert!(hits >= 32 + 28 + 28, "{dir}: prefix hits: {hits}");
        // The same prompts again, now all cached: the same outputs as the first time.
        let again = run_all(&mut e, &second);
        for (i, (a, b)) in again.iter().zip(&hits_outs).enumerate() {
            assert_eq!(a.token_ids, b.token_ids, "{dir}: request {i} resubmitted");
            assert_eq!(a.text, b.text, "{dir}: request {i} resubmitted");
        }
        assert!(e.stats().cached_tokens - hits >= 32 + 28 + 28, "{dir}");
        // The entirely cached prompt alone: 7 of its 8 blocks hit.
        let before = e.stats().cached_tokens;
        let full = vec![(base.clone(), greedy(11, true))];
        check_all(
            &gpu,
            dir,
            cfg,
            &full,
            &run_all(&mut e, &full),
            "fully cached",
        );
        assert_eq!(e.stats().cached_tokens - before, 28, "{dir}");
        assert_eq!(e.num_free_blocks(), e.num_blocks(), "{dir}");
    }
}

#[test]
fn preempted_sequences_continue_identically() {
    let Some(gpu) = gpu() else { return };
    // 16 blocks of 4 = 64 tokens of KV for 6 sequences of up to 49 tokens each.
    let reqs: Reqs = (0..6)
        .map(|i| {
            let p = prompt(200 + i, 10 + 2 * i as usize);
            (p, greedy(25 + i as usize, true))
        })
        .collect();
    let cfg = config(4, 16, 6, 32);
    for dir in MODELS {
        let (mut e, _) = engine(&gpu, dir, cfg);
        let outs = run_all(&mut e, &reqs);
        // Each request alone fits the 16 blocks, so the reference runs without preemption.
        check_all(&gpu, dir, cfg, &reqs, &outs, "preempted");
        let st = e.stats();
        eprintln!("{dir}: {st:?}");
        assert!(
            st.preemptions > 0,
            "{dir}: the workload must preempt: {st:?}"
        );
        assert_eq!(e.num_free_blocks(), e.num_blocks(), "{dir}");
    }
}

#[test]
fn many_long_sequences_that_do_not_fit_all_complete() {
    let Some(gpu) = gpu() else { return };
    // Issue #5's case: 256 sequences of 60..119 tokens, all admitted at once, in a cache of 160
    // tokens: preemption by recompute keeps every one progressing to its last token, with
    // asynchronous scheduling (the default) and without; a few checked against running alone.
    let reqs: Reqs = (0..256u64)
        .map(|i| {
            let p = prompt(300 + i, 30 + (i as usize * 37) % 30);
            (p, greedy(30 + (i as usize * 53) % 30, true))
        })
        .collect();
    let cfg = config(8, 20, 256, 256);
    for dir in MODELS {
        for pipelined in [true, false] {
            let (mut e, _) = engine(&gpu, dir, cfg);
            e.backend().set_async_decode(pipelined);
            let outs = run_all(&mut e, &reqs);
            let tag = format!("{dir} pipelined {pipelined}");
            for (i, ((_, s), o)) in reqs.iter().zip(&outs).enumerate() {
                assert_eq!(o.completion_tokens, s.max_tokens, "{tag} request {i}");
                assert_eq!(
                    o.finish_reason,
                    Some(FinishReason::Length),
                    "{tag} request {i}"
                );
            }
            for i in (0..256).step_by(17).chain([7, 128, 255]) {
                let (p, s) = &reqs[i];
                let want = alone(&gpu, dir, cfg, p, &with_top_logprobs(s));
                same_greedy_up_to_a_tie(&outs[i], &want, &format!("{tag} request {i}"));
            }
            let st = e.stats();
            eprintln!("{tag}: {st:?}");
            assert!(
                st.preemptions > 0,
                "{tag}: the workload must preempt: {st:?}"
            );
            assert_eq!(st.pipelined_steps > 0, pipelined, "{tag}: {st:?}");
            assert_eq!(e.num_free_blocks(), e.num_blocks(), "{tag}");
        }
    }
}

/// `s` reporting each token's top-2 alternatives (the reference's margins).
fn with_top_logprobs(s: &SamplingParams) -> SamplingParams {
    SamplingParams {
        logprobs: Some(2),
        ..s.clone()
    }
}

/// A preempted sequence recomputes its KV through the prefill path (GEMMs over many rows) where the
/// reference wrote it one decode row at a time: the same values up to bf16 rounding, so a logit may
/// move by about one bf16 step. Greedy tokens must then be equal up to the first step where the
/// reference's two best logits are that close (measured on H100: tiny-qwen3's request 128 of the
/// 256-sequence workload meets an exact tie at its 18th token, which recompute breaks the other
/// way); after it the sequences legitimately differ. TIE = 1/64: bf16's step for logits of 2 to 4.
fn same_greedy_up_to_a_tie(got: &Output, want: &Output, tag: &str) {
    const TIE: f32 = 1.0 / 64.0;
    let Some(d) = (0..want.token_ids.len()).find(|&d| got.token_ids[d] != want.token_ids[d]) else {
        return;
    };
    let top = &want.logprobs[d].top;
    let theirs = top.iter().find(|&&(t, _)| t == got.token_ids[d]);
    let margin = theirs.map(|&(_, lp)| top[0].1 - lp);
    eprintln!(
        "{tag}: diverges at token {d}: {} for {top:?}",
        got.token_ids[d]
    );
    assert!(
        margin.is_some_and(|m| m <= TIE),
        "{tag}: token {d} is {} where the reference's best are {top:?} (not a tie within {TIE})",
        got.token_ids[d]
    );
}

#[test]
fn sampled_requests_decode_in_graphs_as_eagerly() {
    let Some(gpu) = gpu() else { return };
    // Seeded sampling with every filter, on the device: the decode graph path copies the step's
    // logits out and samples them with the step's draws, so the tokens equal an eager run's (the
    // same kernels, bit for bit). (Not compared with each request alone: a batch's decode kernels
    // depend on its size bucket, and a logit a rounding apart can move a sampled token where it
    // cannot move an argmax.)
    let reqs: Reqs = (0..6)
        .map(|i| {
            let params = SamplingParams {
                temperature: [0.7, 1.0, 1.3][i % 3],
                top_k: [0, 40][i % 2],
                top_p: [1.0, 0.9, 0.95][i % 3],
                min_p: [0.0, 0.05][i % 2],
                seed: Some(1000 + i as u64),
                ..greedy(14, true)
            };
            (prompt(300 + i as u64, 5 + 7 * i), params)
        })
        .collect();
    let cfg = config(4, 256, 8, 64);
    for dir in MODELS {
        let (mut e, _) = engine(&gpu, dir, cfg);
        let outs = run_all(&mut e, &reqs);
        let st = e.stats();
        eprintln!("{dir}: {st:?}");
        assert!(
            st.graph_steps > 0,
            "{dir}: sampled steps took no graph: {st:?}"
        );
        let (mut eager, _) = engine_with(&gpu, dir, cfg, false, None);
        let eager_outs = run_all(&mut eager, &reqs);
        for (i, (a, b)) in outs.iter().zip(&eager_outs).enumerate() {
            assert_eq!(
                a.token_ids, b.token_ids,
                "{dir}: request {i}: graphs vs eager"
            );
        }
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(
                o.token_ids.len(),
                14,
                "{dir}: request {i}: ignore_eos, 14 tokens"
            );
        }
        assert_eq!(
            eager.stats().graph_steps,
            st.graph_steps,
            "{dir}: same steps"
        );
        // `kestrel run`'s path (one sequence, its own cache): sampled through graphs as eagerly
        let (p, params) = &reqs[1];
        let max_len = e.model().config.max_position_embeddings;
        let eos = e.model().config.eos_token_ids.clone();
        let single = |e: &Engine<CudaBackend>| {
            generate(
                e.backend(),
                e.model(),
                e.tokenizer(),
                p,
                params,
                &eos,
                max_len,
                |_| {},
            )
            .expect("single-sequence generation")
            .tokens
        };
        assert_eq!(
            single(&e),
            single(&eager),
            "{dir}: generate, graphs vs eager"
        );
    }
}

/// A quantized model's decode steps past 8 sequences take the prefill path (dequantized tiles,
/// cuBLAS) and look token ids up in a quantized table (kernels/dequant.cu), which under
/// asynchronous scheduling reads ids a kernel of the same stream has just fed from the previous
/// step's argmax: pipelined steps must give the tokens of synchronous ones. (Before the dequant
/// kernels waited under PDL, bench.py with Q4_K_M / Q8_0 hit CUDA_ERROR_ILLEGAL_ADDRESS.)
#[test]
fn quantized_model_pipelined_steps_match_synchronous_ones() {
    let Some(gpu) = gpu() else { return };
    let reqs: Reqs = (0..24u64)
        .map(|i| (prompt(500 + i, 5 + (i as usize * 7) % 40), greedy(24, true)))
        .collect();
    let cfg = config(4, 1024, 32, 128);
    let run = |pipelined: bool| {
        let (mut e, _) = engine_with(&gpu, "tiny-qwen3-bf16", cfg, true, Some(QuantType::Q8_0));
        e.backend().set_async_decode(pipelined);
        let outs = run_all(&mut e, &reqs);
        (outs, e.stats())
    };
    let (outs, st) = run(true);
    assert!(st.pipelined_steps > 0, "nothing pipelined: {st:?}");
    assert!(st.graph_steps > 0, "no graph step: {st:?}");
    let (sync_outs, st) = run(false);
    assert_eq!(st.pipelined_steps, 0, "sync pipelined: {st:?}");
    for (i, (a, b)) in sync_outs.iter().zip(&outs).enumerate() {
        assert_eq!(a.token_ids.len(), 24, "request {i}");
        assert_eq!(
            a.token_ids, b.token_ids,
            "request {i}: pipelined vs synchronous"
        );
    }
}
