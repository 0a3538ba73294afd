//! GPU memory planning: whether a model's weights fit, and how many KV-cache blocks the rest holds.
//!
//! vLLM's convention: `--gpu-memory-utilization u` lets this process use `u × total` bytes of the GPU.
//! What is in use when the cache is sized (weights, the CUDA context, other processes) comes off that,
//! and so does a reserve for the activations of a prefill chunk; the KV cache gets the remainder.

use kestrel::config::ModelConfig;
use kestrel::engine::generate::PREFILL_CHUNK;
use kestrel::{KestrelError, Result};

use super::CudaBackend;

const GIB: f64 = (1u64 << 30) as f64;
/// cuBLAS workspace, kernel modules, allocator slack.
const FIXED_RESERVE: usize = 512 << 20;

fn gib(bytes: usize) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// Bytes of the model's weights on the GPU: bf16 matrices, f32 norms and biases.
pub fn weight_bytes(c: &ModelConfig) -> usize {
    let (h, q, kv, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let per_layer = 2 * ((q + 2 * kv) * h + h * q + 3 * inter * h)
        + 4 * (2 * h + if c.qk_norm { 2 * c.head_dim } else { 0 })
        + if c.qkv_bias { 4 * (q + 2 * kv) } else { 0 };
    let lm_head = if c.tie_word_embeddings {
        0
    } else {
        2 * c.vocab_size * h
    };
    2 * c.vocab_size * h + c.num_layers * per_layer + 4 * h + lm_head
}

/// Peak activation bytes of a forward over [`PREFILL_CHUNK`] tokens with logits for every one
/// (teacher-forced scoring), with room for two generations of temporaries alive at once, and the
/// bf16 tile quantized weights are dequantized into for prefill.
pub fn activation_bytes(c: &ModelConfig) -> usize {
    let (h, q, kv, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let per_token = 2 * (4 * h + 2 * q + (q + 2 * kv) + 3 * inter) + 4 * (q + 2 * kv);
    PREFILL_CHUNK * (2 * per_token + 2 * c.vocab_size)
        + FIXED_RESERVE
        + 2 * super::quant::DEQUANT_TILE_ELEMS
}

/// Bytes of one KV-cache block over all layers (k and v, bf16).
pub fn kv_block_bytes(c: &ModelConfig, block_size: usize) -> usize {
    2 * 2 * c.num_layers * block_size * c.kv_dim()
}

impl CudaBackend {
    /// Refuses a model whose weights (plus the activation reserve) exceed the free memory, before any
    /// upload starts.
    pub fn check_weights_fit(&self, c: &ModelConfig) -> Result<()> {
        let (free, _) = self.device().memory_info().map_err(super::be)?;
        let need = weight_bytes(c) + activation_bytes(c);
        if need > free {
            return Err(KestrelError::Backend(format!(
                "the model needs {} ({} of weights in bf16, {} for activations), GPU {} has {} free",
                gib(need),
                gib(weight_bytes(c)),
                gib(activation_bytes(c)),
                self.device().name(),
                gib(free)
            )));
        }
        Ok(())
    }

    /// KV-cache blocks of `block_size` tokens that fit in this process's share
    /// (`gpu_memory_utilization` × total) once what is in use now (call it after loading the weights)
    /// and the activation reserve are taken off.
    pub fn kv_cache_blocks(
        &self,
        c: &ModelConfig,
        gpu_memory_utilization: f32,
        block_size: usize,
    ) -> Result<usize> {
        if !(gpu_memory_utilization > 0.0 && gpu_memory_utilization <= 1.0) {
            return Err(KestrelError::param(
                "gpu_memory_utilization",
                format!("{gpu_memory_utilization} is not in (0, 1]"),
            ));
        }
        let (free, total) = self.device().memory_info().map_err(super::be)?;
        let share = (total as f64 * gpu_memory_utilization as f64) as usize;
        let used = total - free;
        let reserve = activation_bytes(c);
        let per_block = kv_block_bytes(c, block_size).max(1);
        let avail = share.saturating_sub(used + reserve);
        let blocks = avail / per_block;
        if blocks == 0 {
            return Err(KestrelError::Backend(format!(
                "no room for a KV cache: with --gpu-memory-utilization {gpu_memory_utilization} this \
                 process may use {} of GPU {}'s {}; {} is in use (weights included) and activations \
                 need {}, leaving less than one {block_size}-token block ({}); raise \
                 --gpu-memory-utilization or use a smaller model",
                gib(share),
                self.device().name(),
                gib(total),
                gib(used),
                gib(reserve),
                gib(per_block)
            )));
        }
        Ok(blocks)
    }
}
