//! The tokenizer stored in a GGUF file (`tokenizer.ggml.*`), turned into the `tokenizers` pipeline
//! that HF's tokenizer.json describes for the same model, following llama.cpp's reading of the arrays.

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::{KestrelError, Result};

/// The `tokenizer.ggml.*` keys of a GGUF file.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: only "gpt2" (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: names the pre-tokenizer split regex; only "qwen2" is supported.
    pub pre: String,
    /// Token strings in id order, in byte-level form.
    pub tokens: Vec<String>,
    /// llama.cpp token types (see [`GgufTokenType`]); empty means all NORMAL.
    pub token_types: Vec<i32>,
    /// BPE merges in priority order, each "left right".
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: prepend BOS when encoding.
    pub add_bos: bool,
}

/// llama.cpp's `llama_token_type` values, as stored in `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTokenType {
    Normal = 1,
    Unknown = 2,
    /// A special token: matched in text only when special tokens are parsed, skipped by
    /// `decode(skip_special)`.
    Control = 3,
    /// An added token that is always matched in text and always decoded (Qwen's `<think>`).
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl GgufTokenType {
    fn from_i32(v: i32) -> Option<GgufTokenType> {
        use GgufTokenType::*;
        [Normal, Unknown, Control, UserDefined, Unused, Byte]
            .into_iter()
            .find(|t| *t as i32 == v)
    }
}

/// llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2 split, written as HF's Qwen2/Qwen3 tokenizer.json writes
/// it (the same expression; onig accepts the `(?i:...)` form), so both paths share one regex.
const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn err(msg: impl Into<String>) -> KestrelError {
    KestrelError::Tokenizer(format!("GGUF vocabulary: {}", msg.into()))
}

pub(super) fn build(vocab: &GgufVocab) -> Result<tokenizers::Tokenizer> {
    if vocab.model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model '{}' is not supported (Kestrel reads byte-level BPE, 'gpt2')",
            vocab.model
        )));
    }
    let split_regex = match vocab.pre.as_str() {
        "qwen2" => QWEN2_SPLIT_REGEX,
        other => {
            return Err(err(format!(
                "tokenizer.ggml.pre '{other}' is not supported (Kestrel knows 'qwen2')"
            )))
        }
    };
    let n = vocab.tokens.len();
    if !vocab.token_types.is_empty() && vocab.token_types.len() != n {
        return Err(err(format!(
            "{} tokens but {} token types",
            n,
            vocab.token_types.len()
        )));
    }
    let ty = |id: usize| -> Result<GgufTokenType> {
        let raw = vocab.token_types.get(id).copied().unwrap_or(1);
        GgufTokenType::from_i32(raw)
            .ok_or_else(|| err(format!("token {id} has unknown token type {raw}")))
    };

    // Every token goes into the BPE vocabulary, added ones too, so that the added-token registry
    // below finds each one at its GGUF id instead of numbering them after the model's vocabulary.
    // An added token can never come out of BPE itself: no merge produces it.
    let mut bpe_vocab = Vocab::default();
    let (mut control, mut user_defined) = (Vec::new(), Vec::new());
    for (id, token) in vocab.tokens.iter().enumerate() {
        let id32 = u32::try_from(id).map_err(|_| err("more than 2^32 tokens"))?;
        if let Some(first) = bpe_vocab.insert(token.clone(), id32) {
            return Err(err(format!(
                "token {token:?} appears twice (ids {first} and {id})"
            )));
        }
        // Added tokens are stored pre-normalized (convert_hf_to_gguf does this), so they are
        // matched against the raw text.
        match ty(id)? {
            GgufTokenType::Control => control.push(AddedToken::from(token, true).normalized(false)),
            GgufTokenType::UserDefined => {
                user_defined.push(AddedToken::from(token, false).normalized(false))
            }
            _ => {}
        }
    }
    let merges = vocab
        .merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(err(format!(
                "merge {i} {m:?} is not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Merges>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges)
        .build()
        .map_err(|e| err(e.to_string()))?;

    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_normalizer(Some(NFC))
        .map_err(|e| err(e.to_string()))?;
    let split = Split::new(
        SplitPattern::Regex(split_regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| err(e.to_string()))?;
    // The regex already split the text, so ByteLevel only maps bytes to its alphabet.
    let byte_level = ByteLevel::new(false, false, false);
    tok.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    match (vocab.add_bos, vocab.bos_token_id) {
        (true, Some(bos)) => {
            let bos_token = vocab
                .tokens
                .get(bos as usize)
                .ok_or_else(|| err(format!("BOS id {bos} is outside the vocabulary ({n})")))?;
            // "bos" names the special token inside the template; its content may be any string.
            let processor = TemplateProcessing::builder()
                .try_single(vec!["bos", "$A"])
                .map_err(err)?
                .special_tokens(vec![SpecialToken::new(
                    "bos".to_string(),
                    vec![bos],
                    vec![bos_token.clone()],
                )
                .map_err(|e| err(e.to_string()))?])
                .build()
                .map_err(|e| err(e.to_string()))?;
            tok.with_post_processor(Some(processor));
        }
        (true, None) => return Err(err("add_bos_token is set but there is no BOS token id")),
        (false, _) => {
            tok.with_post_processor(Some(byte_level));
        }
    }
    tok.add_special_tokens(control)
        .map_err(|e| err(e.to_string()))?;
    tok.add_tokens(user_defined)
        .map_err(|e| err(e.to_string()))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GgufVocab {
        // Byte-level tokens: "Ġ" is a space.
        let tokens = ["h", "i", "Ġ", "hi", "Ġhi", "<|end|>", "<x>"];
        GgufVocab {
            model: "gpt2".into(),
            pre: "qwen2".into(),
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            token_types: vec![1, 1, 1, 1, 1, 3, 4],
            merges: vec!["h i".into(), "Ġ hi".into()],
            ..Default::default()
        }
    }

    #[test]
    fn tiny_vocab_encodes_and_parses_added_tokens() {
        let tok = crate::tokenizer::Tokenizer::from_gguf_vocab(&tiny()).unwrap();
        assert_eq!(tok.encode("hi hi<|end|>", true).unwrap(), vec![3, 4, 5]);
        assert_eq!(tok.encode("hi<x>", false).unwrap(), vec![3, 6]);
        assert_eq!(tok.decode(&[3, 4, 5], true).unwrap(), "hi hi");
        assert_eq!(tok.decode(&[3, 6, 5], false).unwrap(), "hi<x><|end|>");
        assert!(tok.is_special(5) && !tok.is_special(6));
    }

    #[test]
    fn add_bos_prepends_bos() {
        let mut v = tiny();
        v.add_bos = true;
        v.bos_token_id = Some(5);
        let tok = crate::tokenizer::Tokenizer::from_gguf_vocab(&v).unwrap();
        assert_eq!(tok.encode("hi", true).unwrap(), vec![5, 3]);
    }

    #[test]
    fn unsupported_and_malformed_vocabularies_are_errors() {
        let check = |v: GgufVocab, needle: &str| {
            let e = crate::tokenizer::Tokenizer::from_gguf_vocab(&v)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        };
        check(
            GgufVocab {
                model: "llama".into(),
                ..tiny()
            },
            "'llama' is not supported",
        );
        check(
            GgufVocab {
                pre: "gpt-4o".into(),
                ..tiny()
            },
            "'gpt-4o' is not supported",
        );
        check(
            GgufVocab {
                token_types: vec![1],
                ..tiny()
            },
            "7 tokens but 1 token types",
        );
        check(
            GgufVocab {
                token_types: vec![9; 7],
                ..tiny()
            },
            "unknown token type 9",
        );
        check(
            GgufVocab {
                merges: vec!["hi".into()],
                ..tiny()
            },
            "merge 0",
        );
        check(
            GgufVocab {
                merges: vec!["h q".into()],
                ..tiny()
            },
            "GGUF vocabulary",
        );
        let mut dup = tiny();
        dup.tokens[4] = "hi".into();
        check(dup, "appears twice");
        check(
            GgufVocab {
                add_bos: true,
                ..tiny()
            },
            "no BOS token id",
        );
    }
}
