//! `tools` and `tool_choice`: checked, then honoured. Qwen's templates have no tool_choice of their
//! own, so "required" and a named function are enforced by writing the start of the call into the
//! assistant's turn (`<tool_call>`, and for a named function its name up to the arguments): the model
//! continues the call from there. A forced call skips thinking (the template's empty think block).

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No tools offered, or "none": tools are not rendered and output is plain text.
    None,
    Auto,
    Required,
    Named(String),
}

impl ToolChoice {
    /// Checks `tools` (each `{"type": "function", "function": {"name": ...}}`) and reads
    /// `tool_choice` (default: "auto" with tools, "none" without, as OpenAI's); also returns the
    /// tools' names.
    pub fn parse(
        tools: Option<&[Value]>,
        choice: Option<&Value>,
    ) -> Result<(ToolChoice, Vec<String>), ApiError> {
        let names = tools.map(tool_names).transpose()?.unwrap_or_default();
        let offered = !names.is_empty();
        let choice = match choice {
            None | Some(Value::Null) => {
                let c = if offered {
                    ToolChoice::Auto
                } else {
                    ToolChoice::None
                };
                return Ok((c, names));
            }
            Some(Value::String(s)) => match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("unknown tool_choice `{other}`: one of none, auto, required, or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"),
                    ))
                }
            },
            Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                    ToolChoice::Named(name.to_string())
                }
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice must be none, auto, required, or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ))
                }
            },
        };
        let choice = match &choice {
            ToolChoice::Required | ToolChoice::Named(_) if !offered => Err(ApiError::invalid(
                "tool_choice",
                "tool_choice required or a named function needs `tools`",
            )),
            ToolChoice::Named(n) if !names.contains(n) => Err(ApiError::invalid(
                "tool_choice",
                format!("tool_choice names `{n}`, which is not among the tools"),
            )),
            ToolChoice::Auto if !offered => Ok(ToolChoice::None),
            _ => Ok(choice),
        }?;
        Ok((choice, names))
    }

    /// Whether the tools are rendered and `<tool_call>` output parsed.
    pub fn offered(&self) -> bool {
        *self != ToolChoice::None
    }

    /// The start of the assistant's turn that forces a call, if this choice does.
    pub fn forced_prefix(&self) -> Option<String> {
        match self {
            // the model picks the tool; forcing only `<tool_call>` lets it write prose instead
            ToolChoice::Required => Some("<tool_call>\n{\"name\": \"".into()),
            ToolChoice::Named(n) => Some(format!(
                "<tool_call>\n{{\"name\": {}, \"arguments\": ",
                Value::String(n.clone())
            )),
            _ => None,
        }
    }
}

/// Each tool's function name, checking the shape the templates read.
fn tool_names(tools: &[Value]) -> Result<Vec<String>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    "each tool must be {\"type\": \"function\", \"function\": {...}}",
                ));
            }
            match t.pointer("/function/name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => Ok(n.to_string()),
                _ => Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    "each tool's function needs a name",
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Value> {
        vec![json!({"type": "function", "function": {"name": "get_weather", "parameters": {}}})]
    }

    #[test]
    fn choices_are_read_and_checked() {
        let t = tools();
        let p = |c: Value| ToolChoice::parse(Some(&t), Some(&c)).map(|(c, _)| c);
        let (auto, names) = ToolChoice::parse(Some(&t), None).unwrap();
        assert_eq!(
            (auto, names),
            (ToolChoice::Auto, vec!["get_weather".to_string()])
        );
        assert_eq!(ToolChoice::parse(None, None).unwrap().0, ToolChoice::None);
        assert_eq!(p(json!("none")).unwrap(), ToolChoice::None);
        assert_eq!(p(json!("required")).unwrap(), ToolChoice::Required);
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(p(named).unwrap(), ToolChoice::Named("get_weather".into()));
        for bad in [
            json!("sometimes"),
            json!(3),
            json!({"type": "function", "function": {"name": "nope"}}),
        ] {
            assert_eq!(p(bad).unwrap_err().param.as_deref(), Some("tool_choice"));
        }
        let e = ToolChoice::parse(None, Some(&json!("required"))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = ToolChoice::parse(Some(&[json!({"type": "function"})]), None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].function.name"));
    }

    #[test]
    fn a_named_choice_writes_the_head_of_its_call() {
        let named = ToolChoice::Named("get_weather".into());
        let prefix = named.forced_prefix().unwrap();
        assert_eq!(
            prefix,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
        );
        assert_eq!(ToolChoice::Auto.forced_prefix(), None);
    }
}
