//! Text in and out of the model: the tokenizer (from tokenizer.json or a GGUF vocab), the streaming
//! detokenizer, and the chat template that turns messages into the prompt the model was trained on.
//!
//! Golden tests (`tests/tokenizer_golden.rs`, `tests/chat_golden.rs`) hold all of this byte for byte
//! to HF transformers on the real Qwen3 tokenizer; `scripts/gen_tokenizer_golden.py` makes their files.

mod chat;
mod gguf_vocab;
mod hf_export;
mod pyjson;
mod stream;
// DESIGN.md's layout names the file after the concept; the module name repeating its parent is deliberate.
#[allow(clippy::module_inception)]
mod tokenizer;

pub use chat::ChatTemplate;
pub use gguf_vocab::{GgufTokenType, GgufVocab};
pub use hf_export::HfTokenizerExport;
pub use stream::TokenStream;
pub use tokenizer::Tokenizer;
