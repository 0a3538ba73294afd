//! Chat responses: each choice's generated text as a message (Qwen3's reasoning split off, tool-call
//! blocks made calls when tools were offered), whole or as the chunks of a stream.

use kestrel::engine::generate::FinishReason;
use kestrel::engine::request::{Output, RequestOutput};
use serde_json::{json, Value};

use kestrel::tokenizer::Tokenizer;

use crate::logprobs;
use crate::reasoning::{Parts, ReasoningSplit};
use crate::stream::{finish_reason, UsageTally};
use crate::tool_calls::{merge_delta, ToolCallSplit};

/// One choice's text, parsed as it arrives.
pub(crate) struct ChoiceParser {
    split: ReasoningSplit,
    tools: Option<ToolCallSplit>,
}

impl ChoiceParser {
    /// `thinking_tags`: the vocabulary has `<think>`; `tools`: when tools were offered, their calls'
    /// parser.
    pub fn new(thinking_tags: bool, tools: Option<ToolCallSplit>) -> ChoiceParser {
        ChoiceParser {
            split: ReasoningSplit::new(thinking_tags),
            tools,
        }
    }

    /// What `text` releases (everything held back too when `last`): reasoning and content text, and
    /// tool-call deltas.
    pub fn push(&mut self, text: &str, last: bool) -> (Parts, Vec<Value>) {
        let mut parts = self.split.push(text);
        if last {
            let rest = self.split.finish();
            parts.reasoning += &rest.reasoning;
            parts.content += &rest.content;
        }
        let mut calls = Vec::new();
        if let Some(t) = &mut self.tools {
            let mut s = t.push(&parts.content);
            if last {
                let rest = t.finish();
                s.content += &rest.content;
                s.calls.extend(rest.calls);
            }
            parts.content = s.content;
            calls = s.calls;
        }
        (parts, calls)
    }

    /// The finish reason in OpenAI's words: a stop after tool calls is "tool_calls".
    fn finish(&self, f: Option<FinishReason>) -> Option<&'static str> {
        let calls = self.tools.as_ref().map_or(0, ToolCallSplit::calls_made);
        match f {
            Some(FinishReason::Stop) if calls > 0 => Some("tool_calls"),
            f => f.map(finish_reason),
        }
    }
}

/// The whole response of `choices` (each choice's outputs in order).
pub(crate) fn whole_response(
    id: &str,
    model: &str,
    created: u64,
    choices: &[Vec<RequestOutput>],
    mut parser: impl FnMut(usize) -> ChoiceParser,
    tok: &Tokenizer,
) -> Value {
    let mut tally = UsageTally::default();
    let mut out = Vec::new();
    for (i, outs) in choices.iter().enumerate() {
        let mut p = parser(i);
        let mut all = Output::new(0);
        let (mut parts, mut calls) = (Parts::default(), Vec::new());
        for (k, o) in outs.iter().enumerate() {
            all.push(o);
            let (d, c) = p.push(&o.text, k + 1 == outs.len());
            parts.reasoning += &d.reasoning;
            parts.content += &d.content;
            for d in &c {
                merge_delta(&mut calls, d);
            }
        }
        if let Some(last) = outs.last() {
            tally.add(last);
        }
        let mut message = json!({"role": "assistant", "content": parts.content});
        if !parts.reasoning.is_empty() {
            message["reasoning_content"] = json!(parts.reasoning);
        }
        if !calls.is_empty() {
            // the text around calls is usually only the newlines between blocks
            let text = parts.content.trim();
            message["content"] = if text.is_empty() {
                Value::Null
            } else {
                json!(text)
            };
            for c in &mut calls {
                c.as_object_mut().map(|o| o.remove("index"));
            }
            message["tool_calls"] = json!(calls);
        }
        let lp = if all.logprobs.is_empty() {
            Value::Null
        } else {
            logprobs::chat(tok, &all.logprobs)
        };
        out.push(json!({
            "index": i,
            "message": message,
            "finish_reason": p.finish(all.finish_reason),
            "logprobs": lp,
        }));
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": out,
        "usage": tally.usage(),
    })
}

/// A streamed response's chunks: per choice the role first, then reasoning / content / tool-call
/// deltas, then an empty delta with the finish reason; after every choice's end
/// (stream_options.include_usage) the usage with no choices.
pub(crate) struct ChunkMaker {
    pub tokenizer: Tokenizer,
    pub id: String,
    pub model: String,
    pub created: u64,
    pub choices: Vec<ChoiceParser>,
    pub started: Vec<bool>,
    pub include_usage: bool,
    /// The choices done so far.
    pub done: UsageTally,
}

impl ChunkMaker {
    fn chunk(&self, i: usize, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    }

    pub fn chunks(&mut self, i: usize, o: &RequestOutput) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.started[i] {
            self.started[i] = true;
            out.push(self.chunk(i, json!({"role": "assistant", "content": ""}), None));
        }
        let (parts, calls) = self.choices[i].push(&o.text, o.finish_reason.is_some());
        if !parts.reasoning.is_empty() {
            out.push(self.chunk(i, json!({"reasoning_content": parts.reasoning}), None));
        }
        if !parts.content.is_empty() {
            out.push(self.chunk(i, json!({"content": parts.content}), None));
        }
        if !calls.is_empty() {
            out.push(self.chunk(i, json!({ "tool_calls": calls }), None));
        }
        if !o.logprobs.is_empty() {
            // on this output's last delta, or a delta of its own
            if out.is_empty() {
                out.push(self.chunk(i, json!({}), None));
            }
            let lp = logprobs::chat(&self.tokenizer, &o.logprobs);
            if let Some(last) = out.last_mut() {
                last["choices"][0]["logprobs"] = lp;
            }
        }
        if o.finish_reason.is_some() {
            let f = self.choices[i].finish(o.finish_reason);
            out.push(self.chunk(i, json!({}), f));
            self.done.add(o);
            if self.include_usage && self.done.finished() == self.choices.len() {
                let mut u = self.chunk(i, json!({}), None);
                u["choices"] = json!([]);
                u["usage"] = self.done.usage();
                out.push(u);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generation cut into outputs of the given texts, the last with `finish`.
    fn outputs(texts: &[&str], finish: FinishReason) -> Vec<RequestOutput> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| RequestOutput {
                id: 0,
                new_token_ids: vec![i as u32],
                text: t.to_string(),
                finish_reason: (i + 1 == texts.len()).then_some(finish),
                prompt_tokens: 7,
                completion_tokens: i + 1,
                logprobs: Vec::new(),
            })
            .collect()
    }

    fn tokenizer() -> Tokenizer {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/tiny-qwen3/tokenizer.json"
        );
        Tokenizer::from_file(std::path::Path::new(dir)).unwrap()
    }

    fn parser(tools: bool) -> ChoiceParser {
        ChoiceParser::new(
            true,
            tools.then(|| ToolCallSplit::new("c", vec!["get_weather".into()])),
        )
    }

    fn streamed(
        outs: &[RequestOutput],
        tools: bool,
    ) -> (String, String, Vec<Value>, Option<String>) {
        let mut m = ChunkMaker {
            tokenizer: tokenizer(),
            id: "c".into(),
            model: "m".into(),
            created: 0,
            choices: vec![parser(tools)],
            started: vec![false],
            include_usage: false,
            done: UsageTally::default(),
        };
        let (mut r, mut c, mut calls, mut fin) = (String::new(), String::new(), Vec::new(), None);
        for ch in outs.iter().flat_map(|o| m.chunks(0, o)) {
            let choice = &ch["choices"][0];
            r += choice["delta"]["reasoning_content"].as_str().unwrap_or("");
            c += choice["delta"]["content"].as_str().unwrap_or("");
            for d in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                merge_delta(&mut calls, d);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                fin = Some(f.to_string());
            }
        }
        (r, c, calls, fin)
    }

    #[test]
    fn tool_calls_whole_and_streamed() {
        let texts = [
            "<think>\nThe user wants",
            " the weather.\n</think>\n\n",
            "<tool_",
            "call>\n{\"name\": \"get_weather\", ",
            "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        ];
        let outs = outputs(&texts, FinishReason::Stop);
        let whole = whole_response(
            "c",
            "m",
            0,
            std::slice::from_ref(&outs),
            |_| parser(true),
            &tokenizer(),
        );
        let choice = &whole["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        let msg = &choice["message"];
        assert_eq!(msg["reasoning_content"], "The user wants the weather.\n");
        assert_eq!(msg["content"], Value::Null);
        let call = &msg["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"], "{\"city\": \"Paris\"}");
        assert!(call.get("index").is_none(), "index is for stream deltas");

        let (r, c, calls, fin) = streamed(&outs, true);
        assert_eq!(r, "The user wants the weather.\n");
        assert_eq!(c, "");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[0]["id"], call["id"]);
        assert_eq!(calls[0]["function"], call["function"]);
        assert_eq!(fin.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn without_tools_the_blocks_are_text() {
        let text = "<tool_call>{\"name\": \"f\"}</tool_call>";
        let outs = outputs(&[text], FinishReason::Length);
        let whole = whole_response(
            "c",
            "m",
            0,
            std::slice::from_ref(&outs),
            |_| parser(false),
            &tokenizer(),
        );
        assert_eq!(whole["choices"][0]["message"]["content"], text);
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        let (_, c, calls, _) = streamed(&outs, false);
        assert_eq!((c.as_str(), calls.len()), (text, 0));
    }

    #[test]
    fn choices_are_indexed_and_usage_summed() {
        let a = outputs(&["x", "y"], FinishReason::Length);
        let b = outputs(&["z"], FinishReason::Stop);
        let whole = whole_response("c", "m", 0, &[a, b], |_| parser(false), &tokenizer());
        assert_eq!(whole["choices"][1]["index"], 1);
        assert_eq!(whole["choices"][1]["message"]["content"], "z");
        assert_eq!(whole["usage"]["prompt_tokens"], 7);
        assert_eq!(whole["usage"]["completion_tokens"], 3);
    }
}
