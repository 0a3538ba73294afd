//! `POST /v1/completions`: a raw prompt (text, or token ids) continued by the engine, returned whole
//! or streamed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kestrel::engine::request::{Output, Prompt, RequestOutput};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::logprobs;
use crate::params::{max_tokens, Sampling, StreamOptions};
use crate::request_body::{no_unknown, parse};
use crate::stream::{collect, finish_reason, sse, UsageTally};
use crate::{unix_time, AppState};

/// OpenAI's `prompt`: a string, token ids, or a list of one of either (one prompt per request here).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptField,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// OpenAI's default for this endpoint is 16.
    pub max_tokens: Option<i64>,
    pub echo: Option<bool>,
    pub logprobs: Option<i64>,
    pub user: Option<String>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

const DEFAULT_MAX_TOKENS: usize = 16;

fn one_prompt(p: PromptField) -> Result<Prompt, ApiError> {
    let one = |n: usize| {
        if n == 1 {
            Ok(())
        } else {
            Err(ApiError::invalid(
                "prompt",
                "this server takes one prompt per request",
            ))
        }
    };
    let prompt = match p {
        PromptField::Text(t) => Prompt::Text(t),
        PromptField::Tokens(ids) => Prompt::Tokens(ids),
        PromptField::Texts(mut v) => {
            one(v.len())?;
            Prompt::Text(v.remove(0))
        }
        PromptField::TokenLists(mut v) => {
            one(v.len())?;
            Prompt::Tokens(v.remove(0))
        }
    };
    match &prompt {
        Prompt::Text(t) if t.is_empty() => {
            Err(ApiError::invalid("prompt", "prompt must not be empty"))
        }
        Prompt::Tokens(ids) if ids.is_empty() => {
            Err(ApiError::invalid("prompt", "prompt must not be empty"))
        }
        _ => Ok(prompt),
    }
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (req, sampling): (CompletionRequest, Sampling) = parse(body)?;
    no_unknown(&req.unknown)?;
    state.check_model(&req.model)?;
    // logprobs: n reports each token's log-probability with n alternatives (OpenAI allows 0..=5)
    let logprobs = match req.logprobs {
        None => None,
        Some(n) if (0..=20).contains(&n) => Some(n as usize),
        Some(_) => return Err(ApiError::invalid("logprobs", "logprobs must be in 0..=20")),
    };
    if req.echo == Some(true) {
        return Err(ApiError::invalid(
            "echo",
            "echo is not supported by this server",
        ));
    }
    let prompt = one_prompt(req.prompt)?;
    if let Prompt::Tokens(ids) = &prompt {
        let vocab = state.engine.tokenizer().vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(ApiError::invalid(
                "prompt",
                format!("token id {bad} is outside the vocabulary (size {vocab})"),
            ));
        }
    }
    let max = max_tokens(req.max_tokens, None, DEFAULT_MAX_TOKENS)?;
    let mut params = sampling.to_params(max)?;
    params.logprobs = logprobs;
    let n = sampling.choices()?;
    let tracker = state.metrics.admit()?;
    let streams = state.engine_requests(prompt, &params, n)?;
    let id = state.response_id("cmpl");
    let (model, created) = (req.model, unix_time());
    let base = json!({"id": id, "object": "text_completion", "created": created, "model": model});
    let with = |mut v: Value, choices: Value| {
        v["choices"] = choices;
        v
    };
    if !req.stream {
        let outs = collect(streams, tracker).await?;
        let tok = state.engine.tokenizer();
        let mut tally = UsageTally::default();
        let choices: Vec<Value> = outs
            .iter()
            .enumerate()
            .map(|(i, outs)| {
                let mut all = Output::new(0);
                outs.iter().for_each(|o| all.push(o));
                if let Some(last) = outs.last() {
                    tally.add(last);
                }
                let lp = match logprobs {
                    Some(_) => logprobs::completion(tok, &all.logprobs, &mut 0),
                    None => Value::Null,
                };
                json!({"index": i, "text": all.text, "finish_reason": all.finish_reason.map(finish_reason), "logprobs": lp})
            })
            .collect();
        let mut whole = with(base, json!(choices));
        whole["usage"] = tally.usage();
        return Ok(Json(whole).into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let mut done = UsageTally::default();
    let tok = state.engine.tokenizer().clone();
    let mut offsets = vec![0usize; n];
    let chunk = move |i: usize, o: &RequestOutput| {
        let mut out = Vec::new();
        if !o.text.is_empty() || o.finish_reason.is_some() || !o.logprobs.is_empty() {
            let lp = match logprobs {
                Some(_) => logprobs::completion(&tok, &o.logprobs, &mut offsets[i]),
                None => Value::Null,
            };
            let choice = json!([{"index": i, "text": o.text, "finish_reason": o.finish_reason.map(finish_reason), "logprobs": lp}]);
            out.push(with(base.clone(), choice));
        }
        if o.finish_reason.is_some() {
            done.add(o);
            if include_usage && done.finished() == n {
                let mut u = with(base.clone(), json!([]));
                u["usage"] = done.usage();
                out.push(u);
            }
        }
        out
    };
    Ok(sse(streams, tracker, chunk))
}
