//! Qwen3's tool calls: content with `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks
//! (as its chat template teaches the model) becomes OpenAI `tool_calls`. [`ToolCallSplit`] takes the
//! content as it streams: text outside the blocks is released at once (less what could still open a
//! block); inside a block, the call starts (id, name) as soon as its head is read and its arguments
//! follow as the model writes them, as OpenAI's stream deltas. A whole response is the same deltas
//! merged ([`merge_delta`]), so streamed and whole calls are equal.
//! Small models (Qwen2.5-Coder-0.5B) often answer a tool request with the call's JSON alone, without
//! the tags: output that starts with `{"name": TOOL, "arguments": ...` naming an offered tool is a call
//! too (held back while it could still be one).

use serde_json::{json, Value};

use crate::tool_call_header::{final_args, head, value_end, Head};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// What a piece of content gave: plain text, and tool-call deltas (each with its call's `index`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Split {
    pub content: String,
    pub calls: Vec<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Outside,
    /// Inside a block whose head is not read yet; `other`: it is not the streamable shape.
    Head {
        other: bool,
    },
    /// Inside a call that has started: its arguments start at `args_start` of the pending text and
    /// `sent` bytes of them are out; `bare`: a call without tags, which ends with its object.
    Args {
        args_start: usize,
        sent: usize,
        bare: bool,
    },
    /// The output so far is whitespace and the start of what may be a bare (untagged) call.
    Bare,
    /// Inside a block past the call limit (parallel_tool_calls: false): dropped whole.
    Skip,
}

#[derive(Debug, Clone)]
pub struct ToolCallSplit {
    pending: String,
    block: Block,
    /// Calls made so far (their `index` in a stream; their ids' suffix).
    count: usize,
    id_prefix: String,
    /// The offered tools' names (a bare call must name one).
    names: Vec<String>,
    /// Calls kept at most; later blocks are dropped.
    limit: usize,
}

impl ToolCallSplit {
    /// `id_prefix` makes the calls' ids unique (the response id); `names`: the offered tools.
    pub fn new(id_prefix: &str, names: Vec<String>) -> ToolCallSplit {
        ToolCallSplit {
            pending: String::new(),
            block: Block::Bare,
            count: 0,
            id_prefix: id_prefix.to_string(),
            names,
            limit: usize::MAX,
        }
    }

    /// Keeps only the first `n` calls (OpenAI's parallel_tool_calls: false is 1).
    pub fn at_most(mut self, n: usize) -> ToolCallSplit {
        self.limit = n;
        self
    }

    pub fn calls_made(&self) -> usize {
        self.count
    }

    pub fn push(&mut self, text: &str) -> Split {
        self.pending.push_str(text);
        let mut out = Split::default();
        loop {
            match self.block {
                Block::Bare => {
                    let t = self.pending.trim_start();
                    if t.is_empty() {
                        return out; // whitespace so far
                    }
                    self.block = Block::Outside;
                    if t.starts_with('{') {
                        match head(&self.pending) {
                            Head::Incomplete => self.block = Block::Bare,
                            Head::Call { name, args_start } if self.names.contains(&name) => {
                                self.start(&name, "", &mut out.calls);
                                self.block = Block::Args {
                                    args_start,
                                    sent: 0,
                                    bare: true,
                                };
                            }
                            _ => {}
                        }
                    }
                    if self.block == Block::Bare {
                        return out;
                    }
                }
                Block::Outside => {
                    if let Some(i) = self.pending.find(OPEN) {
                        out.content.push_str(&self.pending[..i]);
                        self.pending.drain(..i + OPEN.len());
                        self.block = if self.count < self.limit {
                            Block::Head { other: false }
                        } else {
                            Block::Skip
                        };
                        continue;
                    }
                    let keep = partial_suffix(&self.pending, OPEN);
                    let cut = self.pending.len() - keep;
                    out.content.push_str(&self.pending[..cut]);
                    self.pending.drain(..cut);
                    return out;
                }
                Block::Args { bare: true, .. } => {
                    if !self.more_of_call(&mut out) {
                        return out;
                    }
                }
                Block::Head { .. } | Block::Args { bare: false, .. } | Block::Skip => {
                    if let Some(i) = self.pending.find(CLOSE) {
                        let body: String = self.pending.drain(..i + CLOSE.len()).collect();
                        if self.block != Block::Skip {
                            self.close(&body[..i], &mut out);
                        }
                        self.block = Block::Outside;
                        continue;
                    }
                    if let Block::Head { other: false } = self.block {
                        match head(&self.pending) {
                            Head::Incomplete => {}
                            Head::Other => self.block = Block::Head { other: true },
                            Head::Call { name, args_start } => {
                                self.start(&name, "", &mut out.calls);
                                self.block = Block::Args {
                                    args_start,
                                    sent: 0,
                                    bare: false,
                                };
                            }
                        }
                    }
                    if let Block::Args { .. } = self.block {
                        self.more_of_call(&mut out);
                    }
                    return out;
                }
            }
        }
    }

    /// Sends the started call's arguments written so far (up to the end of their JSON value). A bare
    /// call ends with its object's `}`: then the text after it is plain text again (returns true).
    fn more_of_call(&mut self, out: &mut Split) -> bool {
        let Block::Args {
            args_start,
            sent,
            bare,
        } = self.block
        else {
            return false;
        };
        let args = &self.pending[args_start..];
        let end = value_end(args);
        let upto = end.unwrap_or(args.len());
        if upto > sent {
            let piece = args[sent..upto].to_string();
            self.more_args(&piece, &mut out.calls);
            self.block = Block::Args {
                args_start,
                sent: upto,
                bare,
            };
        }
        let Some(end) = end.filter(|_| bare) else {
            return false;
        };
        let after = &self.pending[args_start + end..];
        let rest = after.trim_start();
        if rest.is_empty() {
            return false; // the object's `}` may follow
        }
        let close = usize::from(rest.starts_with('}'));
        let cut = self.pending.len() - rest.len() + close;
        self.pending.drain(..cut);
        self.block = Block::Outside;
        true
    }

    /// The end of the content. An unclosed block that never started a call is text. A started
    /// call without its end (cut off by max_tokens, or a bare call) gets the rest of its arguments.
    pub fn finish(&mut self) -> Split {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Split::default();
        match std::mem::replace(&mut self.block, Block::Outside) {
            Block::Outside | Block::Bare => out.content = rest,
            Block::Skip => {}
            Block::Head { .. } => out.content = format!("{OPEN}{rest}"),
            Block::Args {
                args_start, sent, ..
            } => self.rest_of_args(&rest, args_start, sent, &mut out.calls),
        }
        out
    }

    /// The arguments of the started call in `text` (from `args_start`, `sent` bytes of them out) that
    /// are not out yet.
    fn rest_of_args(&self, text: &str, args_start: usize, sent: usize, calls: &mut Vec<Value>) {
        let piece = final_args(text, args_start).get(sent..).unwrap_or("");
        if !piece.is_empty() {
            self.more_args(piece, calls);
        }
    }

    /// A block's body, complete: the rest of a started call's arguments, or (another shape) the
    /// whole call at once, or text if it is not a call.
    fn close(&mut self, body: &str, out: &mut Split) {
        let head = match self.block {
            Block::Args {
                args_start, sent, ..
            } => return self.rest_of_args(body, args_start, sent, &mut out.calls),
            // read the head as a stream would have, so the arguments are the same text
            Block::Head { other: false } => head(body),
            _ => Head::Other,
        };
        if let Head::Call { name, args_start } = head {
            return self.start(&name, final_args(body, args_start), &mut out.calls);
        }
        match whole_call(body) {
            Some((name, args)) => self.start(&name, &args, &mut out.calls),
            // not a call after all: the text stays content, tags included
            None => out.content.push_str(&format!("{OPEN}{body}{CLOSE}")),
        }
    }

    /// A new call's first delta: id, type, name (and arguments, all or none yet).
    fn start(&mut self, name: &str, arguments: &str, calls: &mut Vec<Value>) {
        let index = self.count;
        self.count += 1;
        calls.push(json!({
            "index": index,
            "id": format!("call_{}_{index}", self.id_prefix),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }));
    }

    /// More argument text of the current call (merged into this push's last delta when it is the
    /// same call's).
    fn more_args(&self, piece: &str, calls: &mut Vec<Value>) {
        merge_delta(
            calls,
            &json!({"index": self.count - 1, "function": {"arguments": piece}}),
        );
    }
}

/// Adds a stream delta to `calls`: a new call, or more arguments for the call of the same index.
pub fn merge_delta(calls: &mut Vec<Value>, delta: &Value) {
    let same = calls.iter_mut().find(|c| c["index"] == delta["index"]);
    match same {
        Some(call) => {
            let more = delta["function"]["arguments"].as_str().unwrap_or("");
            let args = call["function"]["arguments"].as_str().unwrap_or("");
            call["function"]["arguments"] = json!(format!("{args}{more}"));
        }
        None => calls.push(delta.clone()),
    }
}

/// A block of another shape, parsed whole: `{"name": ..., "arguments": ...}` in any key order,
/// arguments as JSON text (a string argument is taken as that text).
fn whole_call(body: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
        None => "{}".into(),
    };
    Some((name, arguments))
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
#[path = "tool_calls_tests.rs"]
mod tests;
