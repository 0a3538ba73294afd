//! Token log-probabilities in OpenAI's two shapes: chat's `{"content": [{token, logprob, bytes,
//! top_logprobs}]}` and completions' `{tokens, token_logprobs, top_logprobs, text_offset}`. A token's
//! text is its own decoding (a piece of a multi-byte character shows as U+FFFD; `bytes` has the
//! UTF-8 of that text).

use kestrel::engine::logprobs::TokenLogprob;
use kestrel::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

fn text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

fn entry(tok: &Tokenizer, id: u32, logprob: f32) -> Value {
    let t = text(tok, id);
    json!({"token": t, "logprob": logprob, "bytes": t.as_bytes()})
}

/// Chat: `{"content": [...]}` for these tokens.
pub(crate) fn chat(tok: &Tokenizer, lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let mut e = entry(tok, lp.token, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(tok, id, l)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

/// Completions: the legacy shape; `offset` is the text length before these tokens (text_offset
/// counts characters of the completion), advanced past them.
pub(crate) fn completion(tok: &Tokenizer, lps: &[TokenLogprob], offset: &mut usize) -> Value {
    let (mut tokens, mut values, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for lp in lps {
        let t = text(tok, lp.token);
        offsets.push(*offset);
        *offset += t.chars().count();
        tokens.push(t);
        values.push(lp.logprob);
        let top: Map<String, Value> = lp
            .top
            .iter()
            .map(|&(id, l)| (text(tok, id), json!(l)))
            .collect();
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets})
}
