//! The engine tests' model and their independent reference: the single-sequence `generate` path
//! (its own KV cache, chunks and sampler), run on a separately loaded copy of the tiny model.

use kestrel::backend::cpu::CpuBackend;
use kestrel::engine::engine::{Engine, EngineConfig};
use kestrel::engine::generate::{generate, FinishReason};
use kestrel::engine::loaded::LoadedModel;
use kestrel::engine::request::Output;
use kestrel::engine::sampling::SamplingParams;
use kestrel::engine::scheduler::SchedulerConfig;

pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tiny-qwen3");

pub fn load() -> (CpuBackend, LoadedModel<CpuBackend>) {
    let backend = CpuBackend::new();
    let loaded = LoadedModel::load(TINY, &backend).expect("loading the tiny model");
    (backend, loaded)
}

pub fn config(
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

pub fn engine(cfg: EngineConfig) -> Engine<CpuBackend> {
    let (backend, loaded) = load();
    Engine::from_loaded(backend, loaded, cfg).expect("building the engine")
}

/// As [`engine`], with decode steps' sequences listed longest context first.
pub fn engine_longest_first(cfg: EngineConfig) -> Engine<CpuBackend> {
    let (backend, loaded) = load();
    let backend = backend.with_decode_longest_first(true);
    Engine::from_loaded(backend, loaded, cfg).expect("building the engine")
}

/// As [`engine`], with asynchronous scheduling: pure-decode steps launched before the previous
/// step's tokens are read back (each output then comes one step later).
pub fn engine_async(cfg: EngineConfig) -> Engine<CpuBackend> {
    let (backend, loaded) = load();
    let backend = backend.with_async_decode(true);
    Engine::from_loaded(backend, loaded, cfg).expect("building the engine")
}

/// The engine both ways: steps run one at a time, and asynchronously scheduled.
pub fn engines(cfg: EngineConfig) -> [(&'static str, Engine<CpuBackend>); 2] {
    [("sync", engine(cfg)), ("async", engine_async(cfg))]
}

/// What a request gives run alone through `generate`.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
}

pub struct Reference {
    backend: CpuBackend,
    loaded: LoadedModel<CpuBackend>,
}

impl Reference {
    pub fn new() -> Reference {
        let (backend, loaded) = load();
        Reference { backend, loaded }
    }

    pub fn run(&self, prompt: &[u32], params: &SamplingParams) -> Expected {
        let l = &self.loaded;
        let mut text = String::new();
        let stats = generate(
            &self.backend,
            &l.model,
            &l.tokenizer,
            prompt,
            params,
            &l.eos_token_ids,
            l.config.max_position_embeddings,
            |t| text.push_str(t),
        )
        .expect("reference generation");
        Expected {
            token_ids: stats.tokens,
            text,
            finish_reason: stats.finish_reason,
        }
    }

    pub fn tokenizer(&self) -> &kestrel::tokenizer::Tokenizer {
        &self.loaded.tokenizer
    }
}

/// Asserts an engine output is what the request gives alone.
pub fn assert_same(got: &Output, want: &Expected, prompt_len: usize, tag: &str) {
    assert_eq!(got.token_ids, want.token_ids, "{tag}: tokens");
    assert_eq!(got.text, want.text, "{tag}: text");
    assert_eq!(got.finish_reason, Some(want.finish_reason), "{tag}: finish");
    assert_eq!(got.prompt_tokens, prompt_len, "{tag}: prompt tokens");
    assert_eq!(
        got.completion_tokens,
        want.token_ids.len(),
        "{tag}: completion tokens"
    );
}

pub fn greedy(max_tokens: usize, ignore_eos: bool) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos,
        ..Default::default()
    }
}

/// `len` token ids below 480 (the tiny tokenizer's ordinary tokens), reproducible from `seed`.
pub fn prompt(seed: u64, len: usize) -> Vec<u32> {
    let mut r = super::Rng(seed);
    (0..len).map(|_| r.below(480) as u32).collect()
}
