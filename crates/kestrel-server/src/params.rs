//! The sampling fields chat and completion requests share, checked and turned into the engine's
//! [`SamplingParams`]. Ranges are OpenAI's where it has one (temperature 0..2, penalties -2..2), the
//! engine's otherwise; every error names the field.

use kestrel::engine::sampling::SamplingParams;
use serde::Deserialize;

use crate::error::ApiError;

/// `stop`: one string or a list of up to 4.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields both endpoints take (parsed apart from the rest of each request: request_body.rs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM's extensions (the `openai` client sends them through `extra_body`)
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub ignore_eos: Option<bool>,
}

/// [`Sampling`]'s fields, as requests name them.
pub const SAMPLING_FIELDS: [&str; 11] = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "n",
    "ignore_eos",
];

/// The most stop strings a request may give (OpenAI's limit).
const MAX_STOP: usize = 4;

impl Sampling {
    /// The engine's parameters, `max_tokens` already resolved by the endpoint (its default differs).
    pub fn to_params(&self, max_tokens: usize) -> Result<SamplingParams, ApiError> {
        let mut p = SamplingParams {
            max_tokens,
            ..SamplingParams::default()
        };
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid(
                    "temperature",
                    "temperature must be in [0, 2]",
                ));
            }
            p.temperature = t;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(k) = self.top_k {
            // vLLM: -1 (and 0) mean no top-k
            p.top_k = match k {
                -1 | 0 => 0,
                k if k > 0 => k as usize,
                _ => {
                    return Err(ApiError::invalid(
                        "top_k",
                        "top_k must be -1 (off) or at least 1",
                    ))
                }
            };
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repetition_penalty {
            p.repetition_penalty = v;
        }
        if let Some(v) = self.presence_penalty {
            p.presence_penalty = v;
        }
        if let Some(v) = self.frequency_penalty {
            p.frequency_penalty = v;
        }
        if let Some(s) = self.seed {
            p.seed = Some(s as u64);
        }
        if let Some(stop) = &self.stop {
            let list = match stop {
                Stop::One(s) => vec![s.clone()],
                Stop::Many(v) => v.clone(),
            };
            if list.len() > MAX_STOP {
                return Err(ApiError::invalid(
                    "stop",
                    format!("at most {MAX_STOP} stop strings"),
                ));
            }
            if list.iter().any(|s| s.is_empty()) {
                return Err(ApiError::invalid("stop", "stop strings must not be empty"));
            }
            p.stop = list;
        }
        self.choices()?;
        p.ignore_eos = self.ignore_eos.unwrap_or(false);
        p.validate()?;
        Ok(p)
    }
}

/// The most choices one request may ask for.
pub const MAX_CHOICES: usize = 16;

impl Sampling {
    /// `n`: how many choices (independent samples of the same prompt), 1 by default.
    pub fn choices(&self) -> Result<usize, ApiError> {
        match self.n {
            None => Ok(1),
            Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => Ok(n as usize),
            Some(_) => Err(ApiError::invalid(
                "n",
                format!("n must be in 1..={MAX_CHOICES}"),
            )),
        }
    }
}

/// `max_tokens` / `max_completion_tokens` (the newer name wins), at least 1; `default` when absent.
pub fn max_tokens(
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    default: usize,
) -> Result<usize, ApiError> {
    let (name, v) = match (max_completion_tokens, max_tokens) {
        (Some(v), _) => ("max_completion_tokens", v),
        (None, Some(v)) => ("max_tokens", v),
        (None, None) => return Ok(default),
    };
    if v < 1 {
        return Err(ApiError::invalid(
            name,
            format!("{name} must be at least 1"),
        ));
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_list_is_the_struct() {
        // every listed name is a field (deny_unknown_fields would refuse it), values of the right type
        let all = serde_json::json!({
            "temperature": 0.5, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1,
            "presence_penalty": 0.2, "frequency_penalty": 0.3, "seed": 7, "stop": "x", "n": 1,
            "ignore_eos": true,
        });
        assert_eq!(all.as_object().unwrap().len(), SAMPLING_FIELDS.len());
        assert!(SAMPLING_FIELDS.iter().all(|f| all.get(f).is_some()));
        let s: Sampling = serde_json::from_value(all).unwrap();
        let p = s.to_params(10).unwrap();
        assert_eq!(
            (p.top_k, p.seed, p.stop.len(), p.ignore_eos),
            (5, Some(7), 1, true)
        );
    }
}
