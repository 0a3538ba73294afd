//! `kestrel bench --throughput`: the engine end to end (scheduler, paged KV cache, chunked prefill,
//! preemption, batched sampling), as a server would drive it.
//!
//! - Default: nano-vllm's bench.py workload. `--num-seqs` (256) requests, prompt lengths uniform in
//!   `--min-input-len..=--max-input-len` (100..=1024) of random token ids below 10,000, output
//!   lengths uniform in `--min-output-len..=--max-output-len` (100..=1024), ignore_eos, a fixed
//!   `--seed`; all submitted at once, timed from the first step to the last output. Prints total
//!   output tokens, time and output tok/s, then where the time went: decode-only steps and steps with
//!   prompt tokens, and on a GPU the host time outside result downloads (what the device may have
//!   waited for: an upper bound, as asynchronous steps run on the device meanwhile). Greedy by
//!   default (the device argmax); nano-vllm samples at temperature 0.6, which `--temperature 0.6`
//!   reproduces (sampled on the device too, inside the decode graphs). The step budget defaults to 16384 tokens here
//!   (nano-vllm's), 8192 in `serve`.
//! - `--sweep`: llama-batched-bench's shape. For each concurrency in `--sweep-concurrency`
//!   (1,16,64,256), that many requests of `-p` (512) prompt tokens and `-n` (128) output tokens at
//!   once. Prefill tok/s = prompt tokens / time until every request has its first token; decode
//!   tok/s = the later tokens / the rest of the time. With chunked prefill the first phase also
//!   holds the decodes of requests whose prefill finished early (one token per request per step).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use kestrel::backend::Backend;
use kestrel::engine::engine::Engine;
use kestrel::engine::generate::BLOCK_SIZE;
use kestrel::engine::request::Prompt;
use kestrel::engine::sampling::SamplingParams;
use serde_json::json;

use crate::common::Ready;
use crate::engine_args::{EngineArgs, OFFLINE_BATCHED_TOKENS};

#[derive(Args, Debug, Clone)]
pub struct ThroughputArgs {
    /// Engine throughput on nano-vllm's bench.py workload (see --num-seqs and the length flags)
    #[arg(long)]
    pub throughput: bool,
    /// Engine prefill and decode speed at several concurrencies (-p prompt, -n output tokens each)
    #[arg(long)]
    pub sweep: bool,
    /// --throughput: number of requests
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    pub num_seqs: usize,
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub min_input_len: usize,
    #[arg(long, default_value_t = 1024, allow_negative_numbers = true)]
    pub max_input_len: usize,
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub min_output_len: usize,
    #[arg(long, default_value_t = 1024, allow_negative_numbers = true)]
    pub max_output_len: usize,
    /// Seed of the workload's lengths and token ids (and of the sampler)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Sampling temperature of every request (0 = greedy); also batch-1 tg: each token sampled at T
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// --sweep: concurrencies, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub sweep_concurrency: Vec<usize>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ThroughputArgs {
    pub fn enabled(&self) -> bool {
        self.throughput || self.sweep
    }

    fn check(&self) -> Result<()> {
        let flag = |ok: bool, msg: &str| -> Result<()> {
            anyhow::ensure!(ok, "invalid value for {msg}");
            Ok(())
        };
        flag(self.num_seqs > 0, "--num-seqs: must be at least 1")?;
        flag(
            self.min_input_len > 0 && self.min_input_len <= self.max_input_len,
            "--min-input-len/--max-input-len: need 1 <= min <= max",
        )?;
        flag(
            self.min_output_len > 0 && self.min_output_len <= self.max_output_len,
            "--min-output-len/--max-output-len: need 1 <= min <= max",
        )?;
        flag(
            !self.sweep_concurrency.is_empty() && !self.sweep_concurrency.contains(&0),
            "--sweep-concurrency: every value must be at least 1",
        )?;
        self.engine.check(OFFLINE_BATCHED_TOKENS)
    }
}

/// splitmix64: the workload is reproducible from `--seed` on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

struct Request {
    prompt: Vec<u32>,
    max_tokens: usize,
}

pub fn run<B: Backend>(
    t: &ThroughputArgs,
    n_prompt: usize,
    n_gen: usize,
    json_out: bool,
    ready: Ready<B>,
) -> Result<()> {
    t.check()?;
    let Ready {
        backend,
        loaded,
        kv_tokens,
    } = ready;
    let vocab = loaded.config.vocab_size.min(10_000) as u64;
    let mut rng = Rng(t.seed);
    let random_prompt = |rng: &mut Rng, len: usize| -> Vec<u32> {
        (0..len).map(|_| (rng.next() % vocab) as u32).collect()
    };
    let workload: Vec<Vec<Request>> = if t.sweep {
        anyhow::ensure!(
            n_prompt > 0 && n_gen > 0,
            "--sweep needs -p and -n of at least 1"
        );
        t.sweep_concurrency
            .iter()
            .map(|&c| {
                (0..c)
                    .map(|_| Request {
                        prompt: random_prompt(&mut rng, n_prompt),
                        max_tokens: n_gen,
                    })
                    .collect()
            })
            .collect()
    } else {
        vec![(0..t.num_seqs)
            .map(|_| {
                let len = rng.range(t.min_input_len, t.max_input_len);
                Request {
                    prompt: random_prompt(&mut rng, len),
                    max_tokens: rng.range(t.min_output_len, t.max_output_len),
                }
            })
            .collect()]
    };

    // KV: the GPU's planned share, else what the largest run needs (CPU memory is not planned).
    let c = &loaded.config;
    let longest = workload
        .iter()
        .flatten()
        .map(|r| r.prompt.len() + r.max_tokens)
        .max()
        .unwrap_or(1);
    // Whole blocks per request: every request of the largest run fits at once.
    let needed: usize = workload
        .iter()
        .map(|w| {
            w.iter()
                .map(|r| (r.prompt.len() + r.max_tokens).div_ceil(BLOCK_SIZE) * BLOCK_SIZE)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(1);
    let tokens = t.engine.kv_tokens(kv_tokens, c, (needed, longest))?;
    anyhow::ensure!(
        tokens >= longest,
        "the KV cache holds {tokens} tokens but one request needs {longest}: raise --kv-tokens"
    );
    let cfg = t.engine.config(tokens, None, OFFLINE_BATCHED_TOKENS);
    let model_name = crate::common::model_label(&loaded);
    let backend_name = backend.name();
    let mut engine = Engine::from_loaded(backend, loaded, cfg).context("setting up the engine")?;
    let params = |max_tokens| SamplingParams {
        temperature: t.temperature,
        seed: Some(t.seed),
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    // Warm-up (nano-vllm's too): first-use costs (kernel compiles, allocations, cuBLAS loading the
    // GEMM kernels of a prefill-sized step) stay out of the time, as vLLM's start-up profiling run
    // keeps them out: a short prompt, then one as long as the workload's longest (within the step's
    // token budget). (Without the second, the 1-sequence sweep row read 29.7k prefill tok/s against
    // 108k for the same prompt in `kestrel bench` on H200: first use is the likely cause, to confirm.)
    let longest_prompt = workload
        .iter()
        .flatten()
        .map(|r| r.prompt.len())
        .max()
        .unwrap_or(16)
        .clamp(16, t.engine.batched_tokens(OFFLINE_BATCHED_TOKENS).max(16));
    engine.generate([(Prompt::Tokens(vec![1; 16]), params(4))])?;
    engine.generate([(Prompt::Tokens(vec![1; longest_prompt]), params(2))])?;

    let mut rows = Vec::new();
    for reqs in &workload {
        let s0 = engine.stats();
        let mut first = vec![false; reqs.len()];
        let mut ids = std::collections::HashMap::new();
        for (i, r) in reqs.iter().enumerate() {
            ids.insert(
                engine.add_request(r.prompt.clone(), params(r.max_tokens))?,
                i,
            );
        }
        let start = Instant::now();
        let run_timing0 = engine.backend().host_timing();
        let mut split = StepSplit::default();
        let mut prefill_done = None;
        let mut generated = 0usize;
        let mut after_prefill = 0usize;
        while engine.has_unfinished() {
            let step_start = Instant::now();
            let timing0 = engine.backend().host_timing().unwrap_or_default();
            let stats0 = engine.stats();
            for o in engine.step()? {
                generated += o.new_token_ids.len();
                if prefill_done.is_some() {
                    after_prefill += o.new_token_ids.len();
                }
                if let Some(&i) = ids.get(&o.id) {
                    first[i] = true;
                }
            }
            let (timing, stats) = (
                engine.backend().host_timing().unwrap_or_default(),
                engine.stats(),
            );
            let secs = |ns: u64| ns as f64 * 1e-9;
            split.add(StepSample {
                seconds: step_start.elapsed().as_secs_f64(),
                waited: timing.waited_s - timing0.waited_s,
                prep: timing.decode_prep_s - timing0.decode_prep_s,
                plan: secs(stats.plan_ns - stats0.plan_ns),
                output: secs(stats.output_ns - stats0.output_ns),
                computed: stats.computed_tokens - stats0.computed_tokens,
                seqs: stats.scheduled_seqs - stats0.scheduled_seqs,
            });
            if prefill_done.is_none() && first.iter().all(|&f| f) {
                prefill_done = Some(start.elapsed());
            }
        }
        let total = start.elapsed().as_secs_f64();
        let host_s = match (run_timing0, engine.backend().host_timing()) {
            (Some(t0), Some(t1)) => Some(total - (t1.waited_s - t0.waited_s)),
            _ => None,
        };
        let st = engine.stats();
        let preemptions = st.preemptions - s0.preemptions;
        let prompt_tokens: usize = reqs.iter().map(|r| r.prompt.len()).sum();
        if t.sweep {
            let pp = prefill_done.map_or(total, |d| d.as_secs_f64());
            let pp_tok_s = prompt_tokens as f64 / pp.max(1e-9);
            let tg_tok_s = after_prefill as f64 / (total - pp).max(1e-9);
            rows.push(
                json!({"model": model_name, "backend": backend_name, "test": "sweep",
                "concurrency": reqs.len(), "prompt_tokens": n_prompt, "output_tokens": n_gen,
                "prefill_tok_s": pp_tok_s, "decode_tok_s": tg_tok_s, "seconds": total,
                "preemptions": preemptions}),
            );
        } else {
            rows.push(
                json!({"model": model_name, "backend": backend_name, "test": "throughput",
                "num_seqs": reqs.len(), "prompt_tokens": prompt_tokens, "output_tokens": generated,
                "seconds": total, "output_tok_s": generated as f64 / total.max(1e-9),
                "total_tok_s": (prompt_tokens + generated) as f64 / total.max(1e-9),
                "steps": st.steps - s0.steps, "pipelined_steps": st.pipelined_steps - s0.pipelined_steps,
                "preemptions": preemptions, "kv_tokens": tokens,
                "decode_steps": split.decode_steps, "decode_seconds": split.decode_s,
                "decode_step_rows": split.decode_rows, "decode_waited_seconds": split.decode_waited_s,
                "decode_prep_seconds": split.decode_prep_s, "decode_plan_seconds": split.decode_plan_s,
                "decode_output_seconds": split.decode_output_s, "prefill_steps": split.prefill_steps,
                "prefill_seconds": split.prefill_s, "host_seconds": host_s}),
            );
        }
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if t.sweep {
        println!("| model | backend | concurrency | pp | tg | prefill t/s | decode t/s |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
        for r in &rows {
            println!(
                "| {model_name} | {backend_name} | {} | {n_prompt} | {n_gen} | {:.2} | {:.2} |",
                r["concurrency"],
                r["prefill_tok_s"].as_f64().unwrap_or(0.0),
                r["decode_tok_s"].as_f64().unwrap_or(0.0)
            );
        }
    } else if let Some(r) = rows.first() {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        println!(
            "Total: {}tok, Time: {:.2}s, Throughput: {:.2}tok/s",
            r["output_tokens"],
            f("seconds"),
            f("output_tok_s")
        );
        println!(
            "({} requests, {} prompt tokens, {:.2} total tok/s, {} steps, {} preemptions, \
             KV cache {} tokens; {model_name} on {backend_name})",
            r["num_seqs"],
            r["prompt_tokens"],
            f("total_tok_s"),
            r["steps"],
            r["preemptions"],
            tokens
        );
        println!("{}", split_line(r));
    }
    Ok(())
}

/// Where a throughput run's time went, step by step: steps that only decode (one token per sequence)
/// and steps with prompt tokens (chunked prefill, alone or mixed with decodes).
#[derive(Default)]
struct StepSplit {
    decode_steps: u64,
    decode_s: f64,
    /// Sequences summed over the decode-only steps (their mean batch is this / decode_steps).
    decode_rows: u64,
    /// Of decode_s: blocked on the device's results, preparing the launch (backend's count), and
    /// the engine's planning and output work (its counts).
    decode_waited_s: f64,
    decode_prep_s: f64,
    decode_plan_s: f64,
    decode_output_s: f64,
    prefill_steps: u64,
    prefill_s: f64,
}

/// One step as the bench saw it (seconds), and the tokens it fed to the model and produced.
struct StepSample {
    seconds: f64,
    waited: f64,
    prep: f64,
    plan: f64,
    output: f64,
    computed: u64,
    /// Sequences the step ran (one token each in a decode-only step).
    seqs: u64,
}

impl StepSplit {
    fn add(&mut self, s: StepSample) {
        // By what the step fed, not by what it returned: with asynchronous scheduling a step's
        // outputs are those of the step before.
        if s.computed > 0 && s.computed == s.seqs {
            self.decode_steps += 1;
            self.decode_s += s.seconds;
            self.decode_waited_s += s.waited;
            self.decode_prep_s += s.prep;
            self.decode_plan_s += s.plan;
            self.decode_output_s += s.output;
            self.decode_rows += s.computed;
        } else {
            self.prefill_steps += 1;
            self.prefill_s += s.seconds;
        }
    }
}

/// The run's split as one line: decode-only and prefill steps, and the host time outside downloads
/// (wall time minus time blocked on the device's results): an upper bound on what the device waited
/// for, as a step that samples nothing does not wait and a step launched ahead runs meanwhile.
fn split_line(r: &serde_json::Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let decode_steps = f("decode_steps");
    let mut line = format!(
        "steps: {} decode-only ({:.2} s, {:.1} sequences each on average), {} with prompt tokens ({:.2} s)",
        r["decode_steps"],
        f("decode_seconds"),
        f("decode_step_rows") / decode_steps.max(1.0),
        r["prefill_steps"],
        f("prefill_seconds"),
    );
    if let Some(p) = r["pipelined_steps"].as_u64().filter(|&p| p > 0) {
        line += &format!(", {p} launched before the previous step was read back");
    }
    if let Some(host) = r["host_seconds"].as_f64() {
        line += &format!(
            "; host time outside downloads: {host:.2} s ({:.0}% of the run; what the device may \
             have waited for, less where steps were launched ahead; in decode-only steps {:.2} s: \
             planning {:.2}, outputs {:.2}, launch preparation {:.2})",
            100.0 * host / f("seconds").max(1e-9),
            f("decode_seconds") - f("decode_waited_seconds"),
            f("decode_plan_seconds"),
            f("decode_output_seconds"),
            f("decode_prep_seconds"),
        );
    }
    line
}
