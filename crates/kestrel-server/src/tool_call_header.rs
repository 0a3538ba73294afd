//! The head of a Qwen3 tool call, `{"name": "NAME", "arguments": `, recognised while it streams in, so
//! that the call's name can be sent at once and its arguments as the model writes them (as vLLM does).
//! Any other shape (keys in another order, arguments as a JSON string) waits for the whole block.

/// How far a block's text matches the head.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Could still match: wait for more text.
    Incomplete,
    /// Not this shape.
    Other,
    /// Matched: the name, and where the arguments (an object or array) start.
    Call { name: String, args_start: usize },
}

/// Matches `s` (the text after `<tool_call>`) against
/// `ws { ws "name" ws : ws STRING ws , ws "arguments" ws : ws` followed by `{` or `[`.
pub fn head(s: &str) -> Head {
    let mut c = Cursor { s, at: 0 };
    let steps = (|| {
        c.ws()?;
        c.lit("{")?;
        c.key("\"name\"")?;
        let name = c.string()?;
        c.ws()?;
        c.lit(",")?;
        c.key("\"arguments\"")?;
        match c.rest().chars().next() {
            None => Err(Head::Incomplete),
            Some('{' | '[') => Ok(name),
            Some(_) => Err(Head::Other),
        }
    })();
    match steps {
        Ok(name) => Head::Call {
            name,
            args_start: c.at,
        },
        Err(h) => h,
    }
}

struct Cursor<'a> {
    s: &'a str,
    at: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.s[self.at..]
    }

    fn ws(&mut self) -> Result<(), Head> {
        let r = self.rest();
        self.at += r.len() - r.trim_start().len();
        Ok(())
    }

    fn lit(&mut self, want: &str) -> Result<(), Head> {
        let r = self.rest();
        if r.starts_with(want) {
            self.at += want.len();
            Ok(())
        } else if want.starts_with(r) {
            Err(Head::Incomplete)
        } else {
            Err(Head::Other)
        }
    }

    /// `ws KEY ws : ws` (KEY quoted).
    fn key(&mut self, quoted: &str) -> Result<(), Head> {
        self.ws()?;
        self.lit(quoted)?;
        self.ws()?;
        self.lit(":")?;
        self.ws()
    }

    /// A JSON string, decoded.
    fn string(&mut self) -> Result<String, Head> {
        self.lit("\"")?;
        let r = self.rest();
        let mut escaped = false;
        for (i, ch) in r.char_indices() {
            match ch {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    let quoted = &self.s[self.at - 1..self.at + i + 1];
                    self.at += i + 1;
                    return serde_json::from_str(quoted).map_err(|_| Head::Other);
                }
                _ => {}
            }
        }
        Err(Head::Incomplete)
    }
}

/// Where the JSON value (object or array) at the start of `args` ends, once it has: the arguments
/// are exactly that value, whatever the model writes after it.
pub fn value_end(args: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, b) in args.bytes().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// A call's arguments in `text` (its block or output, the arguments starting at `args_start`):
/// the JSON value, or all there is if the value never ended (cut off).
pub fn final_args(text: &str, args_start: usize) -> &str {
    let args = &text[args_start..];
    match value_end(args) {
        Some(end) => &args[..end],
        None => args.trim_end(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: &str = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n";

    #[test]
    fn the_head_is_recognised_as_it_grows() {
        let at = CALL.find("{\"city").unwrap();
        for n in 0..CALL.len() {
            let h = head(&CALL[..n]);
            if n <= at {
                assert_eq!(h, Head::Incomplete, "{:?}", &CALL[..n]);
            } else {
                assert_eq!(
                    h,
                    Head::Call {
                        name: "get_weather".into(),
                        args_start: at
                    }
                );
            }
        }
        assert_eq!(final_args(CALL, at), "{\"city\": \"Paris\"}");
    }

    #[test]
    fn other_shapes_wait_for_the_whole_block() {
        assert_eq!(head("{\"arguments\": {}, \"name\": \"f\"}"), Head::Other);
        assert_eq!(
            head("{\"name\": \"f\", \"arguments\": \"{}\"}"),
            Head::Other
        );
        assert_eq!(head("not json"), Head::Other);
        // escapes in the name are decoded
        assert_eq!(
            head("{\"name\": \"a\\\"b\", \"arguments\": []"),
            Head::Call {
                name: "a\"b".into(),
                args_start: 30
            }
        );
    }

    #[test]
    fn the_arguments_end_with_their_value() {
        assert_eq!(value_end("{\"a\": 1"), None);
        assert_eq!(
            value_end("{\"a\": [1, {\"b\": 2}]}}\n</tool_call>"),
            Some(20)
        );
        // brackets and quotes inside strings do not count
        let s = "{\"a\": \"}]\\\"{\"} tail";
        assert_eq!(value_end(s), Some(s.len() - 5));
        assert_eq!(final_args("xx{\"a\": 1}}\n", 2), "{\"a\": 1}");
        assert_eq!(final_args("xx{\"a\": [1, ", 2), "{\"a\": [1,");
    }
}
