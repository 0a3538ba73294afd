//! [`Tokenizer`]: a byte-level BPE tokenizer (Qwen2/Qwen3), loaded from tokenizer.json or built from
//! a GGUF vocab, over the `tokenizers` crate so ids match HF transformers exactly.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use tokenizers::decoders::DecoderWrapper;

use super::gguf_vocab::{self, GgufVocab};
use super::stream::TokenStream;
use crate::{KestrelError, Result};

/// Cheap to clone: the vocabulary is shared, so every sequence's [`TokenStream`] can own a handle.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Splits out every added token, special or not (HF `encode`, llama.cpp `parse_special=true`).
    hf: tokenizers::Tokenizer,
    /// The same tokenizer with special tokens treated as plain text (HF `split_special_tokens=True`,
    /// llama.cpp `parse_special=false`). A second copy because the flag lives on the tokenizer and
    /// `encode` must stay `&self`; built on first use since most callers never need it.
    plain: OnceLock<tokenizers::Tokenizer>,
    special_ids: HashSet<u32>,
    /// Every id's bytes (see [`Tokenizer::token_bytes`]), built at the first use: streaming text
    /// takes one lookup per generated token instead of a String from the vocabulary and its decoding.
    bytes: OnceLock<Vec<Option<Box<[u8]>>>>,
}

impl Tokenizer {
    /// Loads a HF `tokenizer.json`. Only byte-level BPE tokenizers are accepted: the streaming
    /// detokenizer relies on every token being a byte string.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| KestrelError::io(path, e))?;
        let hf = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| KestrelError::format(path, format!("not a valid tokenizer.json: {e}")))?;
        if !matches!(hf.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err(KestrelError::format(
                path,
                "Kestrel supports byte-level BPE tokenizers (Qwen2/Qwen3); this one has another decoder",
            ));
        }
        Ok(Tokenizer::from_hf(hf))
    }

    /// Builds the tokenizer llama.cpp would use for a GGUF file's `tokenizer.ggml.*` arrays.
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Tokenizer> {
        Ok(Tokenizer::from_hf(gguf_vocab::build(vocab)?))
    }

    fn from_hf(hf: tokenizers::Tokenizer) -> Tokenizer {
        let special_ids = hf
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Tokenizer {
            inner: Arc::new(Inner {
                hf,
                plain: OnceLock::new(),
                special_ids,
                bytes: OnceLock::new(),
            }),
        }
    }

    /// Token ids of `text`. With `parse_special`, special tokens written in the text (`<|im_start|>`)
    /// become their ids; without it they are tokenized as the characters they are, so user-supplied
    /// text cannot forge control tokens. Non-special added tokens (`<think>`) are always matched,
    /// as in both transformers and llama.cpp. Adds a BOS token only if the tokenizer is set up to.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let hf = if parse_special {
            &self.inner.hf
        } else {
            self.inner.plain.get_or_init(|| {
                let mut plain = self.inner.hf.clone();
                plain.set_encode_special_tokens(true);
                plain
            })
        };
        let encoding = hf
            .encode(text, true)
            .map_err(|e| KestrelError::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; invalid UTF-8 (a character cut in half) becomes U+FFFD. An id outside the
    /// vocabulary is an error rather than being dropped silently.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| !self.knows(id)) {
            return Err(self.unknown_id(bad));
        }
        self.inner
            .hf
            .decode(ids, skip_special)
            .map_err(|e| KestrelError::Tokenizer(format!("decoding failed: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.hf.token_to_id(token)
    }

    /// The token's string as stored in the vocabulary (byte-level form: a leading space is `Ġ`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.hf.id_to_token(id)
    }

    /// Number of ids, added tokens included (151669 for Qwen3's tokenizer.json; a GGUF vocab also
    /// counts the `[PAD]` rows up to the embedding size).
    pub fn vocab_size(&self) -> usize {
        self.inner.hf.get_vocab_size(true)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special_ids.contains(&id)
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream(&self, skip_special: bool) -> TokenStream {
        TokenStream::new(self.clone(), skip_special)
    }

    /// The raw bytes a token stands for, as the ByteLevel decoder computes them: each character
    /// maps back to one byte, and a token with any character outside that alphabet (an added token
    /// such as `<|im_start|>` is plain text) is taken as its UTF-8 bytes.
    pub(crate) fn token_bytes(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        let bytes = self
            .byte_table()
            .get(id as usize)
            .and_then(Option::as_deref)
            .ok_or_else(|| self.unknown_id(id))?;
        out.extend_from_slice(bytes);
        Ok(())
    }

    /// Whether `id` is in the vocabulary.
    pub fn knows(&self, id: u32) -> bool {
        self.byte_table()
            .get(id as usize)
            .is_some_and(Option::is_some)
    }

    fn byte_table(&self) -> &[Option<Box<[u8]>>] {
        self.inner.bytes.get_or_init(|| {
            // ids may have holes: up to the largest one
            let end = self.inner.hf.get_vocab(true).into_values().max();
            let end = end.map_or(0, |m| m as usize + 1).max(self.vocab_size());
            (0..end as u32)
                .map(|id| {
                    let token = self.inner.hf.id_to_token(id)?;
                    let mut out = Vec::with_capacity(token.len());
                    for c in token.chars() {
                        match byte_level_char_to_byte(c) {
                            Some(b) => out.push(b),
                            None => return Some(token.into_bytes().into_boxed_slice()),
                        }
                    }
                    Some(out.into_boxed_slice())
                })
                .collect()
        })
    }

    fn unknown_id(&self, id: u32) -> KestrelError {
        KestrelError::Tokenizer(format!(
            "token id {id} is not in the vocabulary (size {})",
            self.vocab_size()
        ))
    }
}

/// Inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, and the 68
/// others were shifted, in order, to U+0100..U+0143.
pub(super) fn byte_level_char_to_byte(c: char) -> Option<u8> {
    let v = *CHAR_TO_BYTE.get(c as usize)?;
    (v >= 0).then_some(v as u8)
}

const CHAR_TO_BYTE: [i16; 256 + 68] = {
    let mut table = [-1i16; 256 + 68];
    let (mut b, mut shifted) = (0usize, 0usize);
    while b < 256 {
        let printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        if printable {
            table[b] = b as i16;
        } else {
            table[256 + shifted] = b as i16;
            shifted += 1;
        }
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_is_a_bijection() {
        let mut seen = [false; 256];
        for c in (0u32..0x200).filter_map(char::from_u32) {
            if let Some(b) = byte_level_char_to_byte(c) {
                assert!(!seen[b as usize], "byte {b} mapped twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_level_char_to_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_char_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_char_to_byte('a'), Some(b'a'));
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = Path::new("/nonexistent/kestrel/tokenizer.json");
        let err = Tokenizer::from_file(path).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/kestrel/tokenizer.json"), "{err}");
    }

    #[test]
    fn malformed_json_names_the_path() {
        let dir = std::env::temp_dir().join(format!("kestrel-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, "{\"model\": [1, 2").unwrap();
        let err = Tokenizer::from_file(&path).err().unwrap().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("tokenizer.json") && err.contains("not a valid"),
            "{err}"
        );
    }
}
