//! Options shared by the subcommands: the model, the threads, and the sampler.

use anyhow::{Context, Result};
use clap::Args;
use kestrel::backend::cpu::CpuBackend;
use kestrel::engine::loaded::LoadedModel;
use kestrel::engine::sampling::SamplingParams;
use kestrel::KestrelError;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: an HF directory (config.json + safetensors), a .gguf file, or an HF repo id such as Qwen/Qwen3-0.6B
    #[arg(short, long)]
    pub model: String,
    /// CPU threads (default: all cores)
    #[arg(short, long, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Context size in tokens (prompt + generated); default: the model's maximum, capped at 8192
    #[arg(short = 'c', long, allow_negative_numbers = true)]
    pub ctx_size: Option<usize>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<(CpuBackend, LoadedModel<CpuBackend>)> {
        if let Some(n) = self.threads {
            anyhow::ensure!(n > 0, "invalid value for --threads: must be at least 1");
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("setting up the thread pool")?;
        }
        let backend = CpuBackend::new();
        let loaded = LoadedModel::load(&self.model, &backend)
            .with_context(|| format!("loading model '{}'", self.model))?;
        Ok((backend, loaded))
    }

    pub fn context(&self, loaded: &LoadedModel<CpuBackend>) -> Result<usize> {
        let max = loaded.config.max_position_embeddings;
        match self.ctx_size {
            Some(0) => anyhow::bail!("invalid value for --ctx-size: must be at least 1"),
            Some(c) if c > max => anyhow::bail!(
                "invalid value for --ctx-size: {c} is more than the model's maximum of {max} positions"
            ),
            Some(c) => Ok(c),
            None => Ok(max.min(8192)),
        }
    }
}

// Numeric flags accept values that start with '-', so `--temperature -1` reaches the range checks
// below and is refused naming the flag, not by clap as an unknown argument '-1'.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off)
    #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off)
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalise tokens already in the prompt or output (1 = off)
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Subtract P from the logits of tokens already generated
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub presence_penalty: f32,
    /// Subtract F times the count of each token already generated
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed gives the same text
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Most tokens to generate
    #[arg(
        short = 'n',
        long,
        default_value_t = 512,
        allow_negative_numbers = true
    )]
    pub max_tokens: usize,
    /// Stop when this string is generated (repeatable)
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            stop_token_ids: vec![],
            ignore_eos: self.ignore_eos,
        };
        match p.validate() {
            Err(KestrelError::InvalidParameter { name, msg }) => {
                let flag = match name.as_str() {
                    "repetition_penalty" => "repeat-penalty".to_string(),
                    other => other.replace('_', "-"),
                };
                anyhow::bail!("invalid value for --{flag}: {msg}")
            }
            Err(e) => Err(e.into()),
            Ok(()) => Ok(p),
        }
    }
}
