//! [`ChatTemplate`]: the model's Jinja chat template, rendered as transformers'
//! `apply_chat_template(..., tokenize=False)` renders it.
//!
//! The prompt must match byte for byte what the model saw in training, so the environment copies
//! transformers' Jinja setup: `trim_blocks` and `lstrip_blocks`, no auto-escaping, Python string
//! methods (`startswith`, `split`, `strip(chars)` ... via minijinja-contrib's pycompat),
//! `loop_controls`, a `tojson` that is Python's `json.dumps`, `raise_exception`, and printing of
//! `None`/`True`/floats as Python prints them.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State};

use super::pyjson::{self, DumpOptions};
use crate::{KestrelError, Result};

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The name the template is registered under; minijinja's errors cite it with a line number.
    name: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles `source`. A syntax error names the template and the line.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate> {
        ChatTemplate::named("chat_template".into(), source, bos_token, eos_token)
    }

    /// Reads the template and the BOS/EOS token strings from a HF `tokenizer_config.json`.
    /// `chat_template` may be a string or a list of `{name, template}` (the one named "default" is
    /// used); newer checkpoints keep it in a `chat_template.jinja` file beside the config instead.
    pub fn from_tokenizer_config(path: &Path) -> Result<ChatTemplate> {
        let text = std::fs::read_to_string(path).map_err(|e| KestrelError::io(path, e))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| KestrelError::format(path, format!("not valid JSON: {e}")))?;
        let name = format!("{}#chat_template", path.display());
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => default_from_list(path, list)?,
            Some(other) => {
                return Err(KestrelError::format(
                    path,
                    format!("chat_template must be a string or a list, found {other}"),
                ))
            }
            None => {
                let jinja = path.with_file_name("chat_template.jinja");
                std::fs::read_to_string(&jinja).map_err(|e| {
                    KestrelError::ChatTemplate(format!(
                        "{} has no chat_template, and {}: {e}",
                        path.display(),
                        jinja.display()
                    ))
                })?
            }
        };
        let bos = token_string(path, &config, "bos_token")?;
        let eos = token_string(path, &config, "eos_token")?;
        ChatTemplate::named(name, &source, bos, eos)
    }

    fn named(
        name: String,
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| KestrelError::ChatTemplate(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(name.clone(), source.to_string())
            .map_err(|e| KestrelError::ChatTemplate(describe(&name, &e)))?;
        Ok(ChatTemplate {
            env,
            name,
            bos_token,
            eos_token,
        })
    }

    /// Renders `messages` (an array of `{role, content, ...}` objects, passed to the template as
    /// is) and optional `tools` (an array of JSON schemas). `enable_thinking: None` leaves the
    /// variable undefined, as transformers does when the caller does not pass it.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        if !messages.is_array() {
            return Err(KestrelError::ChatTemplate(
                "messages must be a JSON array of {role, content} objects".into(),
            ));
        }
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        let tools = tools
            .filter(|t| !t.is_null())
            .map(|t| Value::from(Serde(t)));
        ctx.insert("tools".into(), Value::from(tools));
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        if let Some(flag) = enable_thinking {
            ctx.insert("enable_thinking".into(), Value::from(flag));
        }
        for (key, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ] {
            if let Some(t) = token {
                ctx.insert(key.into(), Value::from(t.as_str()));
            }
        }
        let template = self
            .env
            .get_template(&self.name)
            .map_err(|e| KestrelError::ChatTemplate(describe(&self.name, &e)))?;
        template
            .render(Value::from_object(ctx))
            .map_err(|e| KestrelError::ChatTemplate(describe(&self.name, &e)))
    }
}

/// minijinja's message plus the template name, and the template's own message for
/// `raise_exception`, which is what the template author meant the user to read.
fn describe(name: &str, e: &Error) -> String {
    let mut msg = format!("{name}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

fn default_from_list(path: &Path, list: &[serde_json::Value]) -> Result<String> {
    let named = |want: &str| {
        list.iter().find_map(|t| {
            (t.get("name")?.as_str()? == want)
                .then(|| t.get("template")?.as_str().map(String::from))?
        })
    };
    named("default").ok_or_else(|| {
        let names: Vec<&str> = list
            .iter()
            .filter_map(|t| t.get("name")?.as_str())
            .collect();
        KestrelError::format(
            path,
            format!("chat_template list has no template named \"default\" (it has {names:?})"),
        )
    })
}

/// A special-token field of tokenizer_config.json: a string, null, or a serialized AddedToken
/// (`{"content": "<|im_end|>", ...}`).
fn token_string(path: &Path, config: &serde_json::Value, key: &str) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(obj @ serde_json::Value::Object(_)) => match obj.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(KestrelError::format(
                path,
                format!("{key} has no string \"content\""),
            )),
        },
        Some(other) => Err(KestrelError::format(
            path,
            format!("{key} must be a string or an AddedToken object, found {other}"),
        )),
    }
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let mut opts = DumpOptions::default();
    if let Some(ascii) = kwargs.get::<Option<bool>>("ensure_ascii")? {
        opts.ensure_ascii = ascii;
    }
    if let Some(indent) = kwargs.get::<Option<Value>>("indent")? {
        opts.indent = match indent.kind() {
            ValueKind::None => None,
            ValueKind::String => Some(indent.as_str().unwrap_or_default().to_string()),
            _ => Some(" ".repeat(usize::try_from(indent)?)),
        };
        if opts.indent.is_some() {
            // json.dumps drops the space after "," when indenting.
            opts.item_sep = ",".into();
        }
    }
    if let Some(seps) = kwargs.get::<Option<Vec<String>>>("separators")? {
        let [item, key]: [String; 2] = seps.try_into().map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            )
        })?;
        (opts.item_sep, opts.key_sep) = (item, key);
    }
    if let Some(sort) = kwargs.get::<Option<bool>>("sort_keys")? {
        opts.sort_keys = sort;
    }
    kwargs.assert_all_used()?;
    // Marked safe so that no auto-escaping could ever touch it.
    Ok(Value::from_safe_string(pyjson::dumps(value, &opts)?))
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Prints values as Python's `str()` does where minijinja's own output differs.
fn python_formatter(
    out: &mut Output,
    state: &mut State,
    value: &Value,
) -> std::result::Result<(), Error> {
    let text = match value.kind() {
        ValueKind::None => Some("None".to_string()),
        ValueKind::Bool => Some(if value.is_true() { "True" } else { "False" }.to_string()),
        ValueKind::Number if !value.is_integer() => {
            Some(pyjson::float_repr(f64::try_from(value.clone())?))
        }
        _ => None,
    };
    match text {
        Some(t) => out.write_str(&t).map_err(Error::from),
        None => minijinja::escape_formatter(out, state, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, messages: serde_json::Value) -> Result<String> {
        ChatTemplate::new(src, Some("<s>".into()), None)?.render(&messages, None, false, None)
    }

    #[test]
    fn python_compat_basics() {
        let msgs = json!([{"role": "user", "content": "  a</think>b  "}]);
        let src = "{{ bos_token }}{% for m in messages %}{{ m.content.split('</think>')[-1].strip() }}\
                   |{{ m.content.startswith('  a') }}|{{ none }}|{{ 1.5e20 }}|{{ m | tojson }}{% endfor %}";
        assert_eq!(
            render(src, msgs).unwrap(),
            r#"<s>b|True|None|1.5e+20|{"role": "user", "content": "  a</think>b  "}"#
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
        assert_eq!(
            render(src, json!([{"role": "user", "content": "x"}])).unwrap(),
            "x\n"
        );
    }

    #[test]
    fn syntax_error_names_the_template() {
        let e = ChatTemplate::new("{% for m in messages %}{{ m }", None, None)
            .err()
            .unwrap();
        let e = e.to_string();
        assert!(
            e.contains("chat_template") && e.contains("syntax error"),
            "{e}"
        );
    }

    #[test]
    fn raise_exception_reaches_the_caller() {
        let e = render(
            "{{ raise_exception('Only user and assistant roles') }}",
            json!([]),
        );
        let e = e.err().unwrap().to_string();
        assert!(e.contains("Only user and assistant roles"), "{e}");
    }

    #[test]
    fn messages_must_be_an_array() {
        let e = render("x", json!({"role": "user"}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("messages must be a JSON array"), "{e}");
    }

    #[test]
    fn tokenizer_config_forms() {
        let dir = std::env::temp_dir().join(format!("kestrel-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer_config.json");
        let write = |v: serde_json::Value| std::fs::write(&path, v.to_string()).unwrap();
        let msgs = json!([]);

        write(json!({
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}{{ eos_token }}"}],
            "bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>"
        }));
        let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
        assert_eq!(t.render(&msgs, None, false, None).unwrap(), "<s></s>");

        write(json!({"chat_template": [{"name": "tool_use", "template": "T"}]}));
        let e = ChatTemplate::from_tokenizer_config(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("no template named \"default\"") && e.contains("tool_use"),
            "{e}"
        );

        write(json!({"chat_template": "{% if %}"}));
        let e = ChatTemplate::from_tokenizer_config(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tokenizer_config.json#chat_template"), "{e}");

        std::fs::write(&path, "{not json").unwrap();
        let e = ChatTemplate::from_tokenizer_config(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("not valid JSON"),
            "{e}"
        );

        std::fs::remove_dir_all(&dir).unwrap();
        let e = ChatTemplate::from_tokenizer_config(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tokenizer_config.json"), "{e}");
    }
}
