//! `kestrel`: run, chat with, inspect and benchmark Qwen3 / Qwen2 models from HF safetensors or GGUF.

mod bench;
mod bench_throughput;
mod chat;
mod common;
mod engine_args;
mod inspect;
mod perplexity;
mod quantize;
mod run;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kestrel",
    version,
    about = "Fast, exact inference for Qwen3 and Qwen2 models",
    long_about = "Kestrel runs Qwen3 / Qwen2 / Qwen2.5 language models from Hugging Face safetensors \
directories, GGUF files (F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, ...) or Hugging Face repo ids.\n\n\
Examples:\n  kestrel run --model Qwen/Qwen3-0.6B \"Why is the sky blue?\"\n  \
kestrel chat --model ~/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf\n  \
kestrel bench --model model.gguf -p 512 -n 128\n  kestrel inspect model.gguf\n  \
kestrel quantize Qwen/Qwen3-0.6B qwen3-0.6b-q4_k_m.gguf --type q4_k_m\n  \
kestrel run --model Qwen/Qwen3-0.6B --quant q8_0 \"Hello\"\n  \
kestrel serve --model Qwen/Qwen3-0.6B --port 8080"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a reply to one prompt, streamed to stdout (chat template applied unless --raw).
    Run(run::RunArgs),
    /// Interactive multi-turn chat (/reset clears the history, /exit quits).
    Chat(chat::ChatArgs),
    /// Show a model's architecture, tensors, tokenizer and chat template.
    Inspect(inspect::InspectArgs),
    /// Measure prompt processing (pp) and text generation (tg) speed, llama-bench style; with
    /// --throughput or --sweep, the batching engine's throughput.
    Bench(bench::BenchArgs),
    /// A text's perplexity under the model, llama-perplexity's method (-f FILE, -c chunk size)
    Perplexity(perplexity::PerplexityArgs),
    /// Serve the model over HTTP with OpenAI's API (chat completions, completions, models), with
    /// continuous batching
    Serve(serve::ServeArgs),
    /// Write an HF safetensors checkpoint as a Q8_0, Q4_0 or Q4_K_M GGUF file (llama.cpp's type per
    /// tensor) that Kestrel and llama.cpp load
    Quantize(quantize::QuantizeArgs),
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `kestrel inspect m --tensors | head` made println! panic once the reader
    // left; take the default action (exit quietly), as other Unix command-line tools do.
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::chat(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Bench(a) => bench::bench(a),
        Command::Perplexity(a) => perplexity::perplexity_cmd(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Serve(a) => serve::serve(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
