//! Qwen3's tool calls: content with `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks
//! (as its chat template teaches the model) becomes OpenAI `tool_calls`. [`ToolCallSplit`] takes the
//! content as it streams: text outside the blocks is released at once (less what could still open a
//! block), each block once it closes, as a whole call.

use serde_json::{json, Value};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// What a piece of content gave: plain text, and the tool calls completed in it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Split {
    pub content: String,
    pub calls: Vec<Value>,
}

#[derive(Debug, Clone)]
pub struct ToolCallSplit {
    pending: String,
    inside: bool,
    /// Calls made so far (their `index` in a stream; their ids' suffix).
    count: usize,
    id_prefix: String,
}

impl ToolCallSplit {
    /// `id_prefix` makes the calls' ids unique (the response id).
    pub fn new(id_prefix: &str) -> ToolCallSplit {
        ToolCallSplit {
            pending: String::new(),
            inside: false,
            count: 0,
            id_prefix: id_prefix.to_string(),
        }
    }

    pub fn calls_made(&self) -> usize {
        self.count
    }

    pub fn push(&mut self, text: &str) -> Split {
        self.pending.push_str(text);
        let mut out = Split::default();
        loop {
            if self.inside {
                let Some(i) = self.pending.find(CLOSE) else {
                    return out;
                };
                let body: String = self.pending[..i].to_string();
                self.pending.drain(..i + CLOSE.len());
                self.inside = false;
                match self.call(&body) {
                    Some(c) => out.calls.push(c),
                    // not a call after all: the text stays content, tags included
                    None => out.content.push_str(&format!("{OPEN}{body}{CLOSE}")),
                }
            } else if let Some(i) = self.pending.find(OPEN) {
                out.content.push_str(&self.pending[..i]);
                self.pending.drain(..i + OPEN.len());
                self.inside = true;
            } else {
                let keep = partial_suffix(&self.pending, OPEN);
                let cut = self.pending.len() - keep;
                out.content.push_str(&self.pending[..cut]);
                self.pending.drain(..cut);
                return out;
            }
        }
    }

    /// The end of the content: what is held back is text (an unclosed block is not a call).
    pub fn finish(&mut self) -> Split {
        let rest = std::mem::take(&mut self.pending);
        let content = if self.inside {
            self.inside = false;
            format!("{OPEN}{rest}")
        } else {
            rest
        };
        Split {
            content,
            calls: Vec::new(),
        }
    }

    /// `{"name": ..., "arguments": ...}` as an OpenAI tool call (arguments as a JSON string).
    fn call(&mut self, body: &str) -> Option<Value> {
        let v: Value = serde_json::from_str(body.trim()).ok()?;
        let name = v.get("name")?.as_str()?.to_string();
        let arguments = match v.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(a) => a.to_string(),
            None => "{}".into(),
        };
        let index = self.count;
        self.count += 1;
        Some(json!({
            "index": index,
            "id": format!("call_{}_{index}", self.id_prefix),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }))
    }
}

/// The length of the longest suffix of `s` that is a proper prefix of `tag`.
pub(crate) fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| {
            s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(pieces: &[&str]) -> Split {
        let mut s = ToolCallSplit::new("x");
        let mut all = Split::default();
        let mut parts: Vec<Split> = pieces.iter().map(|p| s.push(p)).collect();
        parts.push(s.finish());
        for p in parts {
            all.content += &p.content;
            all.calls.extend(p.calls);
        }
        all
    }

    const TEXT: &str = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";

    #[test]
    fn blocks_become_calls_whatever_the_pieces() {
        let want = whole(&[TEXT]);
        assert_eq!(want.content, "Let me check.\n\n");
        assert_eq!(want.calls.len(), 2);
        assert_eq!(want.calls[0]["function"]["name"], "get_weather");
        assert_eq!(
            want.calls[0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(want.calls[1]["index"], 1);
        assert_eq!(want.calls[1]["function"]["arguments"], "{}");
        let chars: Vec<String> = TEXT.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(|s| s.as_str()).collect();
        assert_eq!(whole(&refs), want, "one character at a time");
    }

    #[test]
    fn text_that_is_not_a_call_stays_content() {
        assert_eq!(
            whole(&["a <tool_c", "all> not json </tool_call> b"]).content,
            "a <tool_call> not json </tool_call> b"
        );
        assert_eq!(
            whole(&["<tool_call>{\"name\": \"f\""]).content,
            "<tool_call>{\"name\": \"f\""
        );
        assert_eq!(whole(&["x < y"]).content, "x < y");
    }
}
