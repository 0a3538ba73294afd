//! Python's `json.dumps` and `repr(float)` over template values. Chat templates are written against
//! transformers, whose `tojson` filter is `json.dumps(x, ensure_ascii=False)`: ", " and ": "
//! separators, no HTML escaping, keys in insertion order, floats as Python prints them (`1e-05`,
//! `1.0`). Tool schemas go through it into the prompt, so every byte of its output matters.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

pub(super) struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None`: everything on one line; `Some(s)`: one item per line, each level indented by `s`.
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
        }
    }
}

fn unserializable(v: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "tojson: a value of type {} is not JSON serializable",
            v.kind()
        ),
    )
}

pub(super) fn dumps(v: &Value, opts: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, v, opts, 0)?;
    Ok(out)
}

fn write_value(out: &mut String, v: &Value, opts: &DumpOptions, level: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => {
            let x = f64::try_from(v.clone())?;
            out.push_str(&if x.is_nan() {
                "NaN".into()
            } else if x.is_infinite() {
                if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
            } else {
                float_repr(x)
            });
        }
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, opts, level, '[', ']', &items, |out, item, level| {
                write_value(out, item, opts, level)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                entries.push((key_string(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                out,
                opts,
                level,
                '{',
                '}',
                &entries,
                |out, (k, item), level| {
                    write_str(out, k, opts.ensure_ascii);
                    out.push_str(&opts.key_sep);
                    write_value(out, item, opts, level)
                },
            )?;
        }
        _ => return Err(unserializable(v)),
    }
    Ok(())
}

/// Python's layout: `[]` when empty; otherwise items joined by the item separator, each on its own
/// line when indenting.
fn write_container<T>(
    out: &mut String,
    opts: &DumpOptions,
    level: usize,
    open: char,
    close: char,
    items: &[T],
    mut write_item: impl FnMut(&mut String, &T, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &opts.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        newline(out, level + 1);
        write_item(out, item, level + 1)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

/// JSON object keys are strings; Python converts numbers, booleans and None the way json does.
fn key_string(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number if key.is_integer() => key.to_string(),
        ValueKind::Number => float_repr(f64::try_from(key.clone())?),
        _ => return Err(unserializable(key)),
    })
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `repr(x)` for a finite float: the shortest digits that round-trip, positional when the decimal
/// exponent is in -4..16, else scientific with a signed two-digit exponent.
pub(super) fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits Python uses.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let decpt = exp + 1; // x = 0.DIGITS * 10^decpt
    if (-4 < decpt) && (decpt <= 16) {
        let n = digits.len() as i32;
        let body = if decpt <= 0 {
            format!("0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt >= n {
            format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e16, "1.5e+16"),
            (123456.789, "123456.789"),
            (1e20, "1e+20"),
            (-0.0, "-0.0"),
            (2.5e-300, "2.5e-300"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (1.0 / 3.0, "0.3333333333333333"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn dumps_matches_python_json() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"b": [1, 2.0, "x\"<>&é\n\u0001"], "a": {}, "c": [], "d": null, "e": true}"#,
        )
        .unwrap();
        let v = Value::from(minijinja::value::Serde(&v));
        assert_eq!(
            dumps(&v, &DumpOptions::default()).unwrap(),
            r#"{"b": [1, 2.0, "x\"<>&é\n\u0001"], "a": {}, "c": [], "d": null, "e": true}"#
        );
        let opts = DumpOptions {
            ensure_ascii: true,
            indent: Some("  ".into()),
            item_sep: ",".into(),
            sort_keys: true,
            ..Default::default()
        };
        assert_eq!(
            dumps(&v, &opts).unwrap(),
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.0,\n    \"x\\\"<>&\\u00e9\\n\\u0001\"\n  ],\n  \"c\": [],\n  \"d\": null,\n  \"e\": true\n}"
        );
        let emoji = Value::from("🦀");
        let ascii = DumpOptions {
            ensure_ascii: true,
            ..Default::default()
        };
        assert_eq!(dumps(&emoji, &ascii).unwrap(), r#""\ud83e\udd80""#);
    }
}
