//! [`TokenStream`]: turns generated token ids into text as they arrive.
//!
//! Byte-level BPE tokens are byte strings, and one character (an emoji, most CJK) is often split
//! over several tokens. Decoding each token alone would print U+FFFD halves; re-decoding the whole
//! sequence each step costs O(n^2). Instead the stream keeps the bytes of an unfinished character
//! (at most 3) and releases text only in whole characters.
//!
//! Invariant: the concatenation of everything `push` and `flush` return equals
//! `Tokenizer::decode(all ids)`, because bytes that can never become valid UTF-8 are replaced by
//! U+FFFD exactly where `String::from_utf8_lossy` would replace them.

use super::Tokenizer;
use crate::Result;

pub struct TokenStream {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// Bytes received but not yet returned: the start of a character whose remaining bytes may
    /// come with the next token.
    pending: Vec<u8>,
}

impl TokenStream {
    pub fn new(tokenizer: Tokenizer, skip_special: bool) -> TokenStream {
        TokenStream {
            tokenizer,
            skip_special,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text it completes, or `None` while a character is unfinished
    /// (or the token was a skipped special token). Errors only on an id outside the vocabulary.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        if self.skip_special && self.tokenizer.is_special(id) {
            return Ok(None);
        }
        self.tokenizer.token_bytes(id, &mut self.pending)?;
        let mut text = String::new();
        let mut rest = 0;
        loop {
            match std::str::from_utf8(&self.pending[rest..]) {
                Ok(s) => {
                    text.push_str(s);
                    rest = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = &self.pending[rest..rest + e.valid_up_to()];
                    // Checked valid by from_utf8 just above.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    rest += e.valid_up_to();
                    match e.error_len() {
                        // Bytes that no continuation can repair: one U+FFFD, as from_utf8_lossy.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest += bad;
                        }
                        // The start of a character cut off by the end of the buffer: wait.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..rest);
        Ok((!text.is_empty()).then_some(text))
    }

    /// Ends the stream: an unfinished character left over becomes U+FFFD.
    pub fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tokenizer::byte_level_char_to_byte;
    use super::super::GgufVocab;
    use super::*;

    const IM_END: u32 = 256;
    const THINK: u32 = 257;

    /// The byte-level form of `bytes` (GPT-2's alphabet).
    fn byte_level(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|&b| {
                (0u32..0x200)
                    .filter_map(char::from_u32)
                    .find(|&c| byte_level_char_to_byte(c) == Some(b))
                    .unwrap()
            })
            .collect()
    }

    /// Ids 0..256 are the single bytes, 256 a special token, 257 a non-special added token, and
    /// after them one token per distinct byte segment in `segments`, so a text can be cut anywhere.
    fn tokenizer_with(segments: &[Vec<u8>]) -> Tokenizer {
        let mut tokens: Vec<String> = (0u8..=255).map(|b| byte_level(&[b])).collect();
        tokens.push("<|im_end|>".into());
        tokens.push("<think>".into());
        for seg in segments.iter().map(|s| byte_level(s)) {
            if !tokens.contains(&seg) {
                tokens.push(seg);
            }
        }
        let mut token_types = vec![1; tokens.len()];
        token_types[IM_END as usize] = 3;
        token_types[THINK as usize] = 4;
        let v = GgufVocab {
            model: "gpt2".into(),
            pre: "qwen2".into(),
            tokens,
            token_types,
            ..Default::default()
        };
        Tokenizer::from_gguf_vocab(&v).unwrap()
    }

    /// xorshift: deterministic random cuts without depending on a particular rand API.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Cuts `bytes` into 1..=5-byte segments at random points: the tokens of one random split.
    fn random_split(bytes: &[u8], seed: &mut u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let len = (1 + next(seed) % 5) as usize;
            let end = (i + len).min(bytes.len());
            out.push(bytes[i..end].to_vec());
            i = end;
        }
        out
    }

    /// Streams `ids`, checking after each push that all complete characters so far came out.
    fn stream_checked(tok: &Tokenizer, ids: &[u32], bytes_after: &[usize], all: &[u8]) -> String {
        let mut stream = tok.stream(false);
        let mut out = String::new();
        for (&id, &n) in ids.iter().zip(bytes_after) {
            out.extend(stream.push(id).unwrap());
            let complete = match std::str::from_utf8(&all[..n]) {
                Ok(_) => n,
                Err(e) => e.valid_up_to(),
            };
            assert_eq!(out.len(), complete, "text held back after {n} bytes");
        }
        out.extend(stream.flush());
        out
    }

    #[test]
    fn random_splits_of_emoji_and_cjk_never_emit_halves() {
        let texts = [
            "👨\u{200d}👩\u{200d}👧\u{200d}👦 family, 🇯🇵 flag, 👍🏽 ok",
            "量子计算是一种技术。日本語のテキスト、한국어",
            "mixed é ñ \u{10FFFF} 🦀 end",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for text in texts {
            for _ in 0..40 {
                let segments = random_split(text.as_bytes(), &mut seed);
                let tok = tokenizer_with(&segments);
                let ids: Vec<u32> = segments
                    .iter()
                    .map(|s| tok.token_to_id(&byte_level(s)).unwrap())
                    .collect();
                let bytes_after: Vec<usize> = segments
                    .iter()
                    .scan(0, |n, s| {
                        *n += s.len();
                        Some(*n)
                    })
                    .collect();
                let out = stream_checked(&tok, &ids, &bytes_after, text.as_bytes());
                assert_eq!(out, text);
                assert_eq!(tok.decode(&ids, false).unwrap(), text);
            }
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_chars_like_decode() {
        let tok = tokenizer_with(&[]);
        let mut seed = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..200 {
            // Random bytes biased toward UTF-8 lead and continuation bytes.
            let len = (next(&mut seed) % 12) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    [0x41, 0x80, 0xBF, 0xC3, 0xE2, 0xF0, 0xF4, 0xFF][(next(&mut seed) % 8) as usize]
                })
                .collect();
            let ids: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
            let mut stream = tok.stream(false);
            let mut out = String::new();
            for &id in &ids {
                out.extend(stream.push(id).unwrap());
            }
            out.extend(stream.flush());
            assert_eq!(out, String::from_utf8_lossy(&bytes), "{bytes:x?}");
            assert_eq!(out, tok.decode(&ids, false).unwrap());
        }
    }

    #[test]
    fn special_tokens_are_skipped_only_when_asked() {
        let tok = tokenizer_with(&[]);
        let ids = [b'a' as u32, THINK, IM_END, b'b' as u32];
        let collect = |skip: bool| {
            let mut s = tok.stream(skip);
            let mut out: String = ids.iter().flat_map(|&id| s.push(id).unwrap()).collect();
            out.extend(s.flush());
            out
        };
        assert_eq!(collect(false), "a<think><|im_end|>b");
        assert_eq!(collect(true), "a<think>b");
        assert_eq!(tok.decode(&ids, true).unwrap(), "a<think>b");
    }

    #[test]
    fn unknown_id_is_an_error() {
        let tok = tokenizer_with(&[]);
        let mut s = tok.stream(false);
        let e = s.push(999_999).err().unwrap().to_string();
        assert!(e.contains("999999"), "{e}");
        assert!(tok.decode(&[1, 999_999], false).is_err());
    }
}
