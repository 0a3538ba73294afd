//! GPU memory planning: whether a model's weights fit, and how many KV-cache blocks the rest holds.
//!
//! vLLM's convention: `--gpu-memory-utilization u` lets this process use `u × total` bytes of the GPU.
//! What is in use when the cache is sized (weights, the CUDA context, other processes) comes off that,
//! and so does a reserve for the activations of a prefill chunk; the KV cache gets the remainder.

use kestrel::config::ModelConfig;
use kestrel::engine::generate::PREFILL_CHUNK;
use kestrel::formats::source::ModelSource;
use kestrel::quant::QuantType;
use kestrel::{KestrelError, Result};

use super::CudaBackend;

const GIB: f64 = (1u64 << 30) as f64;
/// cuBLAS workspace, kernel modules, allocator slack.
const FIXED_RESERVE: usize = 512 << 20;

fn gib(bytes: usize) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// Bytes of the weights of `source` on the GPU, before loading it (`quant`: as `--quant` will make
/// them): a GGUF's tensors as the backend keeps them (quantized ones at their file size, which the
/// repacked planes match within 3%; float ones as bf16), a float checkpoint as bf16 ([`weight_bytes`])
/// or, quantized at load, scaled by the type's bits per weight (Q4_K_M: its Q4_K / Q6_K mixture,
/// roughly).
pub fn source_weight_bytes(
    source: &ModelSource,
    c: &ModelConfig,
    quant: Option<QuantType>,
) -> usize {
    let bf16 = weight_bytes(c);
    match (source, quant) {
        (_, Some(q)) => {
            let bits = match q {
                QuantType::Q8_0 => 8.5,
                QuantType::Q4_0 => 4.5,
                QuantType::Q4_K_M => 5.0,
            };
            (bf16 as f64 * bits / 16.0) as usize
        }
        (ModelSource::Gguf(g), None) => g
            .tensors
            .iter()
            .map(|t| {
                let numel: usize = t.shape.iter().product();
                if t.ty.is_quantized() {
                    t.n_bytes + t.n_bytes / 32
                } else if t.shape.len() == 1 {
                    4 * numel
                } else {
                    2 * numel
                }
            })
            .sum(),
        (ModelSource::HfDir(_), None) => bf16,
    }
}

/// Bytes of the model's weights on the GPU in bf16: bf16 matrices, f32 norms and biases.
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
    /// Refuses a model whose weights (`weights` bytes: [`source_weight_bytes`] or [`weight_bytes`])
    /// plus the activation reserve exceed the free memory, before any upload starts.
    pub fn check_weights_fit(&self, c: &ModelConfig, weights: usize) -> Result<()> {
        let (free, _) = self.device().memory_info().map_err(super::be)?;
        let need = weights + activation_bytes(c);
        if need > free {
            return Err(KestrelError::Backend(format!(
                "the model needs {} ({} of weights, {} for activations), GPU {} has {} free",
                gib(need),
                gib(weights),
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
        // Memory freed while loading (staging, repacking) stays in the allocator's pool: hand it
        // back first, or it would count as in use.
        self.device().trim_memory_pool().map_err(super::be)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(rel: &str) -> String {
        format!("{}/../../testdata/{rel}", env!("CARGO_MANIFEST_DIR"))
    }

    /// The estimate before loading against the bytes the GGUF's tensors hold (what the GPU keeps,
    /// give or take the repacking's few percent and bf16 for float matrices).
    #[test]
    fn weight_estimates_follow_the_storage() {
        for file in ["q8_0", "q4_0", "q4_k_m"] {
            let src =
                ModelSource::open(&testdata(&format!("llama-cpp-quant/{file}.gguf"))).unwrap();
            let c = src.config().unwrap();
            let ModelSource::Gguf(g) = &src else {
                panic!("not a GGUF")
            };
            let file_bytes: usize = g.tensors.iter().map(|t| t.n_bytes).sum();
            let est = source_weight_bytes(&src, &c, None);
            assert!(
                est >= file_bytes && est <= file_bytes + file_bytes / 16,
                "{file}: estimate {est} for {file_bytes} bytes of tensors"
            );
            assert!(est < weight_bytes(&c), "{file}: not below bf16's");
        }
        let src = ModelSource::open(&testdata("tiny-qwen3-256")).unwrap();
        let c = src.config().unwrap();
        let bf16 = weight_bytes(&c);
        assert_eq!(source_weight_bytes(&src, &c, None), bf16);
        let q8 = source_weight_bytes(&src, &c, Some(QuantType::Q8_0));
        let q4 = source_weight_bytes(&src, &c, Some(QuantType::Q4_0));
        assert!(q4 < q8 && q8 < bf16 * 9 / 16, "{q4} {q8} {bf16}");
    }
}
