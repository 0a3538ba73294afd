//! The engine's flags, shared by `kestrel serve` and `kestrel bench --throughput / --sweep`: batch
//! limits and the KV cache's size.

use anyhow::Result;
use clap::Args;
use kestrel::config::ModelConfig;
use kestrel::engine::engine::EngineConfig;
use kestrel::engine::generate::BLOCK_SIZE;
use kestrel::engine::scheduler::SchedulerConfig;

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Most sequences running at once
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    pub max_num_seqs: usize,
    /// Most tokens in one forward pass (prefill chunks plus decodes) [default: 8192 for `serve`,
    /// where shorter steps keep every stream's tokens coming; 16384 for `bench --throughput`, as
    /// nano-vllm's offline engine]
    #[arg(long, allow_negative_numbers = true)]
    pub max_num_batched_tokens: Option<usize>,
    /// Tokens of KV cache [default: what --gpu-memory-utilization leaves on a GPU; on the CPU what
    /// the work needs, at most 4 GiB]
    #[arg(long, allow_negative_numbers = true)]
    pub kv_tokens: Option<usize>,
}

/// The token budget of a step where `--max-num-batched-tokens` is not given: online serving (short
/// steps: a long prefill chunk delays every running stream's next token) and offline batches (bigger
/// chunks, fewer steps: measured on H100, Qwen3-0.6B, nano-vllm's bench.py workload, 16,045 -> 16,562
/// output tok/s at 8192 -> 16384).
pub const SERVE_BATCHED_TOKENS: usize = 8192;
pub const OFFLINE_BATCHED_TOKENS: usize = 16384;

impl EngineArgs {
    /// The step's token budget: `--max-num-batched-tokens`, else `default`.
    pub fn batched_tokens(&self, default: usize) -> usize {
        self.max_num_batched_tokens.unwrap_or(default)
    }

    /// Checks the flags; `default` is the token budget where none is given.
    pub fn check(&self, default: usize) -> Result<()> {
        anyhow::ensure!(
            self.max_num_seqs > 0,
            "invalid value for --max-num-seqs: must be at least 1"
        );
        anyhow::ensure!(
            self.batched_tokens(default) >= self.max_num_seqs,
            "invalid value for --max-num-batched-tokens: must be at least --max-num-seqs"
        );
        anyhow::ensure!(
            self.kv_tokens != Some(0),
            "invalid value for --kv-tokens: must be at least 1"
        );
        Ok(())
    }

    /// The KV cache's tokens: --kv-tokens (checked against what the GPU holds), else the GPU's
    /// share, else on the CPU `wanted` capped at 4 GiB of f32 KV, but at least `floor`.
    pub fn kv_tokens(
        &self,
        gpu_fits: Option<usize>,
        c: &ModelConfig,
        (wanted, floor): (usize, usize),
    ) -> Result<usize> {
        let cpu_cap = (4usize << 30) / (c.num_layers * c.num_kv_heads * c.head_dim * 2 * 4).max(1);
        Ok(match (self.kv_tokens, gpu_fits) {
            (Some(k), Some(fits)) => {
                anyhow::ensure!(
                    k <= fits,
                    "invalid value for --kv-tokens: {k} tokens don't fit the GPU, which holds {fits}"
                );
                k
            }
            (Some(k), None) => k,
            (None, Some(fits)) => fits,
            (None, None) => wanted.min(cpu_cap).max(floor),
        })
    }

    /// The engine over a KV cache of `tokens`, chunked prefill on; `default` as in [`Self::check`].
    pub fn config(
        &self,
        tokens: usize,
        max_model_len: Option<usize>,
        default: usize,
    ) -> EngineConfig {
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: self.max_num_seqs,
                max_num_batched_tokens: self.batched_tokens(default),
                block_size: BLOCK_SIZE,
                num_blocks: tokens / BLOCK_SIZE,
                chunked_prefill: true,
            },
            max_model_len,
        }
    }
}
