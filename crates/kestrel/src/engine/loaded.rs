//! Everything `kestrel run / chat / bench` needs, loaded from one `--model` argument: config, weights on
//! the backend, tokenizer, chat template and the tokens that end generation.

use std::time::Instant;

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::formats::gguf::GgufFile;
use crate::formats::quantizing::{OnTensor, QuantizingSource};
use crate::formats::source::ModelSource;
use crate::model::Qwen3Model;
use crate::quant::QuantType;
use crate::tokenizer::{ChatTemplate, GgufVocab, Tokenizer};
use crate::{KestrelError, Result};

pub struct LoadedModel<B: Backend> {
    pub source: ModelSource,
    pub config: ModelConfig,
    pub model: Qwen3Model<B>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Generation stops at any of these (config/generation_config or GGUF eos, plus the template's end-of-turn).
    pub eos_token_ids: Vec<u32>,
    pub load_seconds: f64,
    /// The quantization applied at load, if any.
    pub quant: Option<QuantType>,
}

/// How to load: as the files are, or quantized on the way.
#[derive(Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// Quantize the float weights to this type as they load (llama.cpp's mixture for it, see
    /// [`crate::quant::plan`]); a file whose weights are already quantized is refused.
    pub quant: Option<QuantType>,
    /// Called with each weight as it is handed to the backend (quantization progress).
    pub on_tensor: Option<OnTensor<'a>>,
}

impl<B: Backend> LoadedModel<B> {
    pub fn load(spec: &str, backend: &B) -> Result<LoadedModel<B>> {
        Self::load_with(spec, backend, LoadOptions::default())
    }

    pub fn load_with(spec: &str, backend: &B, opts: LoadOptions) -> Result<LoadedModel<B>> {
        let t0 = Instant::now();
        let source = ModelSource::open(spec)?;
        let config = source.config()?;
        let (tokenizer, chat_template) = load_text_side(&source)?;
        let model = match opts.quant {
            None => Qwen3Model::load(backend, &config, &source)?,
            Some(q) => {
                let mut qs = QuantizingSource::new(&source, &config, q);
                if let Some(f) = opts.on_tensor {
                    qs = qs.with_progress(f);
                }
                Qwen3Model::load(backend, &config, &qs)?
            }
        };
        let mut eos_token_ids = config.eos_token_ids.clone();
        // Chat models end a turn with <|im_end|> even where the config names only <|endoftext|>.
        if let Some(id) = tokenizer.token_to_id("<|im_end|>") {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        Ok(LoadedModel {
            source,
            config,
            model,
            tokenizer,
            chat_template,
            eos_token_ids,
            load_seconds: t0.elapsed().as_secs_f64(),
            quant: opts.quant,
        })
    }
}

/// The tokenizer and chat template of a model source.
pub fn load_text_side(source: &ModelSource) -> Result<(Tokenizer, Option<ChatTemplate>)> {
    match source {
        ModelSource::HfDir(d) => {
            let tok_path = d.dir.join("tokenizer.json");
            if !tok_path.exists() {
                return Err(KestrelError::Tokenizer(format!(
                    "no tokenizer.json in {} (Kestrel needs the model's tokenizer.json next to config.json)",
                    d.dir.display()
                )));
            }
            let tokenizer = Tokenizer::from_file(&tok_path)?;
            let cfg = d.dir.join("tokenizer_config.json");
            let template = if cfg.exists() {
                Some(ChatTemplate::from_tokenizer_config(&cfg)?)
            } else {
                None
            };
            Ok((tokenizer, template))
        }
        ModelSource::Gguf(g) => {
            let vocab = gguf_vocab(g)?;
            let tokenizer = Tokenizer::from_gguf_vocab(&vocab)?;
            let template = match g.get_str("tokenizer.chat_template") {
                Ok(src) => {
                    let name =
                        |id: Option<u32>| id.and_then(|i| vocab.tokens.get(i as usize).cloned());
                    Some(ChatTemplate::new(
                        src,
                        name(vocab.bos_token_id),
                        name(vocab.eos_token_id),
                    )?)
                }
                Err(_) => None,
            };
            Ok((tokenizer, template))
        }
    }
}

/// The `tokenizer.ggml.*` keys of a GGUF file.
pub fn gguf_vocab(g: &GgufFile) -> Result<GgufVocab> {
    let missing = |what: &str| {
        KestrelError::Tokenizer(format!(
            "{} has no {what}: it carries no tokenizer Kestrel can use",
            g.path.display()
        ))
    };
    let id = |key: &str| g.get_u64(key).ok().map(|v| v as u32);
    Ok(GgufVocab {
        model: g
            .get_str("tokenizer.ggml.model")
            .map_err(|_| missing("tokenizer.ggml.model"))?
            .to_string(),
        pre: g
            .get_str("tokenizer.ggml.pre")
            .unwrap_or("default")
            .to_string(),
        tokens: g
            .get_str_array("tokenizer.ggml.tokens")
            .map_err(|_| missing("tokenizer.ggml.tokens"))?,
        token_types: g
            .get_i32_array("tokenizer.ggml.token_type")
            .unwrap_or_default(),
        merges: g.get_str_array("tokenizer.ggml.merges").unwrap_or_default(),
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_id: id("tokenizer.ggml.eos_token_id"),
        padding_token_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: matches!(
            g.get("tokenizer.ggml.add_bos_token"),
            Some(crate::formats::gguf::GgufValue::Bool(true))
        ),
    })
}
