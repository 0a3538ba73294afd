//! Options shared by the subcommands: the model and the device it runs on, the threads, and the
//! sampler; and the dispatch that runs a subcommand's generic body on the chosen backend.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use kestrel::backend::cpu::CpuBackend;
use kestrel::backend::Backend;
use kestrel::engine::loaded::{LoadOptions, LoadedModel};
use kestrel::engine::sampling::SamplingParams;
use kestrel::formats::HostTensor;
use kestrel::quant::QuantType;
use kestrel::KestrelError;

/// What --quant and `kestrel quantize --type` take, for clap.
pub fn parse_quant(s: &str) -> std::result::Result<QuantType, String> {
    QuantType::parse(s).map_err(|e| match e {
        KestrelError::InvalidParameter { msg, .. } => msg,
        other => other.to_string(),
    })
}

/// The long help of --quant and `kestrel quantize --type`: what each type is and costs.
pub const QUANT_TYPES_HELP: &str = concat!(
    "q8_0    8-bit integers, one f16 scale per 32 weights: 8.5 bits (1.06 bytes) per weight;\n",
    "        close to lossless\n",
    "q4_0    4-bit integers, one f16 scale per 32 weights: 4.5 bits (0.56 bytes) per weight\n",
    "q4_k_m  llama.cpp's Q4_K_M mixture: Q4_K (4.5 bits per weight; 256-weight super-blocks)\n",
    "        for most weights; Q6_K (6.56 bits) for the lm_head (or the tied embeddings) and\n",
    "        for attn_v / ffn_down in the first and last eighth of the layers and every third\n",
    "        layer between; Q5_0 / Q8_0 where rows aren't a multiple of 256. About 5 bits\n",
    "        (0.6 bytes) per weight\n",
    "Norms and biases stay F32. Each tensor gets the type llama.cpp's llama-quantize gives it."
);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// An NVIDIA GPU (BF16 weights)
    Cuda,
    /// The CPU reference backend (every weight format)
    Cpu,
}

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: an HF directory (config.json + safetensors), a .gguf file, or an HF repo id such as Qwen/Qwen3-0.6B
    #[arg(short, long)]
    pub model: String,
    /// CPU threads (default: all cores)
    #[arg(short, long, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Context size in tokens (prompt + generated); default: the model's maximum, capped at 8192 (and,
    /// on a GPU, at what the KV cache holds)
    #[arg(short = 'c', long, allow_negative_numbers = true)]
    pub ctx_size: Option<usize>,
    /// Where to run: cuda or cpu [default: cuda when this binary has CUDA support and a GPU is found, else cpu]
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Fraction of the GPU's memory this process may use (weights, activations, KV cache) (vLLM's meaning)
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub gpu_memory_utilization: f32,
    /// Run the GPU without CUDA graphs (decode steps are captured per batch-size bucket and replayed
    /// by default)
    #[arg(long)]
    pub eager: bool,
    /// Quantize the weights while loading: q8_0 (8.5 bits per weight), q4_0 (4.5) or q4_k_m (about 5),
    /// for float checkpoints (HF safetensors, F32/F16/BF16 GGUF)
    #[arg(long, value_name = "TYPE", value_parser = parse_quant, long_help = quant_flag_help())]
    pub quant: Option<QuantType>,
}

fn quant_flag_help() -> String {
    format!(
        "Quantize the weights while loading, as `kestrel quantize` would write them to a GGUF\n\
file. For float checkpoints: HF safetensors directories (BF16/F16/F32) and F32/F16/BF16\n\
GGUF files; a GGUF that is already quantized is refused (run it as it is).\n\n{QUANT_TYPES_HELP}"
    )
}

/// How benchmark tables name a loaded model: its path, and the quantization applied at load.
pub fn model_label<B: Backend>(loaded: &LoadedModel<B>) -> String {
    let path = loaded.source.path().display().to_string();
    match loaded.quant {
        Some(q) => format!("{path} --quant {}", q.name()),
        None => path,
    }
}

/// A loaded model on its backend, ready for a subcommand.
pub struct Ready<B: Backend> {
    pub backend: B,
    pub loaded: LoadedModel<B>,
    /// Tokens the device's KV cache can hold (None on the CPU: host memory, not planned).
    pub kv_tokens: Option<usize>,
}

/// A subcommand's body, written once for every backend.
pub trait WithModel {
    fn run<B: Backend>(self, ready: Ready<B>) -> Result<()>;
}

impl ModelArgs {
    /// Loads the model on the chosen device and runs `task` with it.
    pub fn dispatch(&self, task: impl WithModel) -> Result<()> {
        if let Some(n) = self.threads {
            anyhow::ensure!(n > 0, "invalid value for --threads: must be at least 1");
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("setting up the thread pool")?;
        }
        anyhow::ensure!(
            self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0,
            "invalid value for --gpu-memory-utilization: {} is not in (0, 1]",
            self.gpu_memory_utilization
        );
        match self.device {
            Some(Device::Cpu) => task.run(self.load_cpu()?),
            Some(Device::Cuda) => self.run_cuda(task, true),
            None => self.run_cuda(task, false),
        }
    }

    fn load_cpu(&self) -> Result<Ready<CpuBackend>> {
        let backend = CpuBackend::new();
        let loaded = self
            .load_model(&backend)
            .with_context(|| format!("loading model '{}'", self.model))?;
        Ok(Ready {
            backend,
            loaded,
            kv_tokens: None,
        })
    }

    /// Loads the model on `backend`; with --quant, quantizing as it loads, with a progress line.
    fn load_model<B: Backend>(&self, backend: &B) -> kestrel::Result<LoadedModel<B>> {
        let Some(quant) = self.quant else {
            return LoadedModel::load(&self.model, backend);
        };
        let bar = indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{spinner}} quantizing to {quant} while loading: {{pos}} tensors, {{msg}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let tick = |t: &HostTensor| {
            bar.set_message(format!("{} {}", t.name, t.ty));
            bar.inc(1);
        };
        let opts = LoadOptions {
            quant: Some(quant),
            on_tensor: Some(&tick),
        };
        let loaded = LoadedModel::load_with(&self.model, backend, opts);
        bar.finish_and_clear();
        if let Ok(l) = &loaded {
            let bytes: usize = l
                .model
                .layers
                .iter()
                .flat_map(|w| [&w.qkv, &w.o_proj, &w.gate_up, &w.down])
                .chain([&l.model.embed])
                .chain(&l.model.lm_head)
                .map(|m| backend.matrix_bytes(m))
                .sum();
            eprintln!(
                "quantized {} to {quant} while loading: {:.1} MiB of weight matrices on {}, {:.1} s",
                self.model,
                bytes as f64 / (1 << 20) as f64,
                backend.name(),
                l.load_seconds
            );
        }
        loaded
    }

    #[cfg(not(feature = "cuda"))]
    fn run_cuda(&self, task: impl WithModel, asked: bool) -> Result<()> {
        anyhow::ensure!(
            !asked,
            "--device cuda: this kestrel was built without CUDA support (build it with \
             `cargo build --release --features kestrel-cli/cuda`), or use --device cpu"
        );
        task.run(self.load_cpu()?)
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(&self, task: impl WithModel, asked: bool) -> Result<()> {
        use kestrel::engine::generate::BLOCK_SIZE;
        use kestrel_cuda::backend::CudaBackend;
        let backend = match CudaBackend::open(0) {
            Ok(Some(b)) => b,
            Ok(None) if asked => anyhow::bail!(
                "--device cuda: no NVIDIA GPU found (no driver, or the driver sees no GPU); use --device cpu"
            ),
            Err(e) if asked => return Err(e).context("--device cuda: opening GPU 0"),
            Ok(None) | Err(_) => return task.run(self.load_cpu()?),
        };
        backend.set_cuda_graphs(!self.eager);
        // every kernel compiled (or read from the disk cache) on other cores while the weights load
        let (loaded, kernels) = std::thread::scope(|s| {
            let kernels = s.spawn(|| backend.device().load_all_kernels());
            let loaded = (|| {
                let source = kestrel::formats::source::ModelSource::open(&self.model)?;
                let config = source.config()?;
                let weights = kestrel_cuda::backend::memory::source_weight_bytes(
                    &source, &config, self.quant,
                );
                backend.check_weights_fit(&config, weights)?;
                self.load_model(&backend)
            })();
            (loaded, kernels.join())
        });
        let loaded = loaded
            .with_context(|| format!("loading model '{}' on {}", self.model, backend.name()))?;
        kernels
            .map_err(|_| anyhow::anyhow!("compiling the CUDA kernels: the thread panicked"))?
            .context("compiling the CUDA kernels")?;
        let blocks =
            backend.kv_cache_blocks(&loaded.config, self.gpu_memory_utilization, BLOCK_SIZE)?;
        task.run(Ready {
            backend,
            loaded,
            kv_tokens: Some(blocks * BLOCK_SIZE),
        })
    }

    /// The context size: --ctx-size, or the model's maximum capped at 8192; never more than the KV
    /// cache holds.
    pub fn context<B: Backend>(&self, ready: &Ready<B>) -> Result<usize> {
        let max = ready.loaded.config.max_position_embeddings;
        let fits = ready.kv_tokens.unwrap_or(usize::MAX);
        match self.ctx_size {
            Some(0) => anyhow::bail!("invalid value for --ctx-size: must be at least 1"),
            Some(c) if c > max => anyhow::bail!(
                "invalid value for --ctx-size: {c} is more than the model's maximum of {max} positions"
            ),
            Some(c) if c > fits => anyhow::bail!(
                "invalid value for --ctx-size: {c} tokens don't fit the KV cache, which holds {fits} \
                 with --gpu-memory-utilization {}",
                self.gpu_memory_utilization
            ),
            Some(c) => Ok(c),
            None => Ok(max.min(8192).min(fits)),
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
            logprobs: None,
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
