//! Qwen3's thinking: output that opens with `<think>` is reasoning until `</think>`, then content.
//! [`ReasoningSplit`] separates the two as text streams in (token by token), holding back only what
//! could still be the start of a tag, so streamed and whole responses split the same way.

use crate::tool_calls::partial_suffix;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parts {
    pub reasoning: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not yet known whether the output opens with `<think>`.
    Start,
    Reasoning,
    Content,
}

#[derive(Debug, Clone)]
pub struct ReasoningSplit {
    state: State,
    pending: String,
    /// Right after `</think>`: the newlines that separate it from the content are dropped.
    trim_newlines: bool,
    /// Right after `<think>`: the one newline that follows it is dropped.
    after_open: bool,
}

impl ReasoningSplit {
    /// `enabled: false` (a model without thinking tags): everything is content.
    pub fn new(enabled: bool) -> ReasoningSplit {
        ReasoningSplit {
            state: if enabled {
                State::Start
            } else {
                State::Content
            },
            pending: String::new(),
            trim_newlines: false,
            after_open: false,
        }
    }

    /// The parts of `text` that can be released now.
    pub fn push(&mut self, text: &str) -> Parts {
        let mut out = Parts::default();
        if self.state == State::Content && self.pending.is_empty() {
            out.content = self.content(text);
            return out;
        }
        self.pending.push_str(text);
        if self.state == State::Start {
            let head = self.pending.trim_start();
            if let Some(rest) = head.strip_prefix(OPEN) {
                self.pending = rest.to_string();
                self.state = State::Reasoning;
                self.after_open = true;
            } else if OPEN.starts_with(head) {
                return out; // "<thi" so far: wait
            } else {
                self.state = State::Content;
                out.content = std::mem::take(&mut self.pending);
                return out;
            }
        }
        if self.state == State::Reasoning {
            if self.after_open && !self.pending.is_empty() {
                self.after_open = false;
                if self.pending.starts_with('\n') {
                    self.pending.remove(0);
                }
            }
            if let Some(i) = self.pending.find(CLOSE) {
                let pending = std::mem::take(&mut self.pending);
                out.reasoning = pending[..i].to_string();
                self.state = State::Content;
                self.trim_newlines = true;
                out.content = self.content(&pending[i + CLOSE.len()..]);
            } else {
                let keep = partial_suffix(&self.pending, CLOSE);
                let cut = self.pending.len() - keep;
                out.reasoning = self.pending[..cut].to_string();
                self.pending.drain(..cut);
            }
            return out;
        }
        out.content = std::mem::take(&mut self.pending);
        out
    }

    /// Content text, less the newlines right after `</think>`.
    fn content(&mut self, text: &str) -> String {
        if !self.trim_newlines {
            return text.to_string();
        }
        let rest = text.trim_start_matches('\n');
        self.trim_newlines = rest.is_empty();
        rest.to_string()
    }

    /// What is still held back, at the end of the output.
    pub fn finish(&mut self) -> Parts {
        let rest = std::mem::take(&mut self.pending);
        match self.state {
            State::Reasoning => Parts {
                reasoning: rest,
                content: String::new(),
            },
            _ => Parts {
                reasoning: String::new(),
                content: rest,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(pieces: &[&str]) -> Parts {
        let mut s = ReasoningSplit::new(true);
        let mut all = Parts::default();
        let mut parts: Vec<Parts> = pieces.iter().map(|p| s.push(p)).collect();
        parts.push(s.finish());
        for p in parts {
            all.reasoning += &p.reasoning;
            all.content += &p.content;
        }
        all
    }

    #[test]
    fn splits_the_same_whatever_the_pieces() {
        let text = "<think>\nLet me see: 2 < 3.\n</think>\n\nThe answer is 4.";
        let want = Parts {
            reasoning: "Let me see: 2 < 3.\n".into(),
            content: "The answer is 4.".into(),
        };
        assert_eq!(whole(&[text]), want);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(|s| s.as_str()).collect();
        assert_eq!(whole(&refs), want, "one character at a time");
        assert_eq!(
            whole(&[
                "<th",
                "ink>\nLet me see: 2 < 3.\n</",
                "think>\n",
                "\nThe answer is 4."
            ]),
            want
        );
    }

    #[test]
    fn output_without_tags_is_content() {
        assert_eq!(whole(&["Hello", " world"]).content, "Hello world");
        assert_eq!(whole(&["<", "b>bold"]).content, "<b>bold");
        // thinking switched off by the template: the model starts with content
        let mut s = ReasoningSplit::new(false);
        assert_eq!(s.push("<think>x").content, "<think>x");
    }

    #[test]
    fn unterminated_reasoning_stays_reasoning() {
        let p = whole(&["<think>\nstill thinking </thi"]);
        assert_eq!(p.reasoning, "still thinking </thi");
        assert_eq!(p.content, "");
    }
}
