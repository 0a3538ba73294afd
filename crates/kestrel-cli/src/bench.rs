//! `kestrel bench`: llama-bench-style speeds. pp = one forward pass over `-p` prompt tokens into an empty
//! cache; tg = `-n` single-token decode steps from an empty cache. Each is repeated `-r` times after a
//! warm-up; the table shows mean ± standard deviation of tokens per second.
//!
//! With `--batch N` (N > 1), llama-batched-bench style: N sequences, each with its own `-p` prompt
//! tokens, in one shared KV cache. pp = prefilling all N prompts (several per forward, at most
//! [`PREFILL_BATCH_TOKENS`] tokens each), aggregate prompt tokens per second; tg = `-n` decode steps
//! after that prefill, each ONE forward over all N sequences (through `Backend::decode_argmax`, so a
//! GPU replays the graph of the batch's bucket), aggregate generated tokens per second (N × n / time).

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use kestrel::engine::batch::{SequenceBatch, PREFILL_BATCH_TOKENS};
use kestrel::engine::generate::SingleSequence;
use serde_json::json;

use kestrel::backend::{Backend, DecodePick};
use kestrel::engine::row_sampling::RowSampling;

use crate::common::{ModelArgs, Ready, WithModel};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens per pp test (0 skips it)
    #[arg(
        short = 'p',
        long,
        default_value_t = 512,
        allow_negative_numbers = true
    )]
    pub n_prompt: usize,
    /// Generated tokens per tg test (0 skips it)
    #[arg(
        short = 'n',
        long,
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    pub n_gen: usize,
    /// Repetitions of each test
    #[arg(short = 'r', long, default_value_t = 5, allow_negative_numbers = true)]
    pub repetitions: usize,
    /// Sequences decoded together (aggregate throughput over one shared KV cache)
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub batch: usize,
    /// Print JSON instead of the table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: crate::bench_throughput::ThroughputArgs,
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

pub fn bench(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.repetitions > 0,
        "invalid value for --repetitions: must be at least 1"
    );
    anyhow::ensure!(
        args.n_prompt > 0 || args.n_gen > 0,
        "nothing to measure: -p (prompt tokens) and -n (generated tokens) are both 0"
    );
    anyhow::ensure!(
        args.batch > 0,
        "invalid value for --batch: must be at least 1"
    );
    args.model.clone().dispatch(args)
}

impl WithModel for BenchArgs {
    fn run<B: Backend>(self, ready: Ready<B>) -> Result<()> {
        bench_with(self, ready)
    }
}

fn bench_with<B: Backend>(args: BenchArgs, ready: Ready<B>) -> Result<()> {
    if args.engine.enabled() {
        let (p, n) = (args.n_prompt, args.n_gen);
        return crate::bench_throughput::run(&args.engine, p, n, args.json, ready);
    }
    let Ready {
        backend, loaded, ..
    } = ready;
    let vocab = loaded.config.vocab_size as u32;
    // Fixed pseudo-random prompt tokens, different per sequence (llama-bench uses random tokens too).
    let prompt = |seq: u64| -> Vec<u32> {
        (0..args.n_prompt.max(1) as u64)
            .map(|i| {
                ((seq * 1_000_003 + i).wrapping_mul(2654435761) >> 7) % vocab.min(10_000) as u64
            })
            .map(|t| t as u32)
            .collect()
    };
    let tokens = prompt(0);
    let mut results = Vec::new();
    let model = &loaded.model;
    if args.batch > 1 {
        let prompts: Vec<Vec<u32>> = (0..args.batch as u64).map(prompt).collect();
        results = bench_batch(&args, &backend, model, &prompts)?;
    } else if args.n_prompt > 0 {
        let mut speeds = Vec::new();
        for rep in 0..=args.repetitions {
            let mut seq = SingleSequence::new(&backend, model, args.n_prompt)?;
            let t = Instant::now();
            seq.feed_argmax(&backend, model, &tokens[..args.n_prompt])?;
            if rep > 0 {
                speeds.push(args.n_prompt as f64 / t.elapsed().as_secs_f64());
            }
        }
        results.push((format!("pp{}", args.n_prompt), mean_sd(&speeds)));
    }
    if args.batch == 1 && args.n_gen > 0 {
        // --temperature T > 0: each token sampled at T (no other filter) on the backend, as
        // `kestrel run` does, instead of the argmax
        let temperature = args.engine.temperature;
        let mut draws = 0x9e37_79b9_7f4a_7c15u64;
        let mut speeds = Vec::new();
        for rep in 0..=args.repetitions {
            let mut seq = SingleSequence::new(&backend, model, args.n_gen)?;
            let t = Instant::now();
            for i in 0..args.n_gen {
                let token = &tokens[i % tokens.len()..][..1];
                if temperature > 0.0 {
                    draws = draws
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let row = [RowSampling {
                        temperature,
                        top_k: 0,
                        top_p: 1.0,
                        min_p: 0.0,
                        u: (draws >> 40) as f32 / (1u64 << 24) as f32,
                    }];
                    seq.feed_pick(&backend, model, token, DecodePick::Sample(&row, &[]))?;
                } else {
                    seq.feed_argmax(&backend, model, token)?;
                }
            }
            if rep > 0 {
                speeds.push(args.n_gen as f64 / t.elapsed().as_secs_f64());
            }
        }
        let label = if temperature > 0.0 {
            format!("tg{} (T={temperature})", args.n_gen)
        } else {
            format!("tg{}", args.n_gen)
        };
        results.push((label, mean_sd(&speeds)));
    }
    let model_name = crate::common::model_label(&loaded);
    let backend_name = backend.name();
    // Kernels per decode step, where the backend counts them (after a tg run: a step of the batch).
    let kernels = if args.n_gen > 0 {
        backend.decode_step_kernels()
    } else {
        None
    };
    if args.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(test, (m, sd))| json!({"model": model_name, "backend": backend_name, "test": test, "batch": args.batch, "tok_s": m, "tok_s_sd": sd, "repetitions": args.repetitions, "kernels_per_token": kernels}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("| model | backend | test | t/s |");
        println!("| --- | --- | ---: | ---: |");
        for (test, (m, sd)) in &results {
            println!("| {model_name} | {backend_name} | {test} | {m:.2} ± {sd:.2} |");
        }
        if let Some(k) = kernels {
            if args.batch == 1 {
                println!("\nkernels/token (batch-1 decode step): {k}");
            } else {
                println!("\nkernels/step (batch-{} decode step): {k}", args.batch);
            }
        }
        if let Some((_, (tg, _))) = results.iter().find(|(t, _)| t.starts_with("tg")) {
            // Bandwidth floor: the weights are read once per decode step (one token per sequence).
            let bytes = model.decode_weight_bytes(&backend) as f64;
            let reached = bytes * tg / args.batch as f64;
            let per = if args.batch == 1 { "token" } else { "step" };
            print!(
                "decode reads {:.2} GB of weights per {per}: {:.1} GB/s",
                bytes / 1e9,
                reached / 1e9
            );
            match backend.memory_bandwidth() {
                Some(bw) => println!(
                    " = {:.0}% of the measured copy bandwidth ({:.0} GB/s)",
                    100.0 * reached / bw,
                    bw / 1e9
                ),
                None => println!(),
            }
        }
    }
    Ok(())
}

type Rows = Vec<(String, (f64, f64))>;

/// `--batch N`: per repetition, the emptied cache; pp = prefilling every prompt, then tg = `-n` decode steps
/// of all sequences together (after the prompts, or from an empty cache with `-p 0`).
fn bench_batch<B: Backend>(
    args: &BenchArgs,
    backend: &B,
    model: &kestrel::model::Qwen3Model<B>,
    prompts: &[Vec<u32>],
) -> Result<Rows> {
    let n = prompts.len();
    let (p, g) = (args.n_prompt, args.n_gen);
    let caps = vec![p + g; n];
    let refs: Vec<&[u32]> = prompts.iter().map(|t| &t[..p]).collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    // One cache for every repetition (a GPU keeps its decode graphs).
    let mut batch = SequenceBatch::new(backend, model, &caps)?;
    for rep in 0..=args.repetitions {
        batch.reset();
        let mut next: Vec<u32> = prompts.iter().map(|t| t[0]).collect();
        if p > 0 {
            let t = Instant::now();
            next = batch.prefill(&refs, PREFILL_BATCH_TOKENS)?;
            if rep > 0 {
                pp.push((n * p) as f64 / t.elapsed().as_secs_f64());
            }
        }
        if g > 0 {
            let t = Instant::now();
            for _ in 0..g {
                next = batch.decode_argmax(&next)?;
            }
            if rep > 0 {
                tg.push((n * g) as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    let mut rows = Vec::new();
    if p > 0 {
        rows.push((format!("pp{p} x{n}"), mean_sd(&pp)));
    }
    if g > 0 {
        rows.push((format!("tg{g} x{n}"), mean_sd(&tg)));
    }
    Ok(rows)
}
