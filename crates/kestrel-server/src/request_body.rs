//! Request bodies parsed with the field at fault named: `serde_path_to_error` gives the path of a
//! value of the wrong type ("messages[0].role"), which serde_json alone does not.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::params::{Sampling, SAMPLING_FIELDS};

/// The request `body` (larger than the server's limit: 413) parsed as `T` plus the shared sampling
/// fields. Those are taken out of the object first and parsed on their own: fields of a flattened
/// struct lose their names in serde's errors.
pub(crate) fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<(T, Sampling), ApiError> {
    let body = body.map_err(|r| {
        let mut e = ApiError::bad_request(r.body_text());
        e.status = r.status();
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            e.message = "the request body is larger than this server accepts".into();
        }
        e
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let sampling: Map<String, Value> = SAMPLING_FIELDS
        .iter()
        .filter_map(|&k| fields.remove(k).map(|v| (k.to_string(), v)))
        .collect();
    Ok((
        typed(Value::Object(fields))?,
        typed(Value::Object(sampling))?,
    ))
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid request: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("invalid `{path}`: {inner}"))
        }
    })
}

/// Rejects fields the request type does not know (collected by its flattened catch-all map): a typo
/// in a parameter name must not be silently ignored. OpenAI parameters this server does not implement
/// pass in their neutral form only (clients send them with default values), else get a 400 saying so.
pub(crate) fn no_unknown(
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ApiError> {
    for (k, v) in extra {
        let neutral = match k.as_str() {
            "response_format" => {
                v.is_null() || v.get("type").and_then(Value::as_str) == Some("text")
            }
            "logit_bias" => v.is_null() || v.as_object().is_some_and(Map::is_empty),
            _ => {
                return Err(ApiError::invalid(
                    k.clone(),
                    format!("unknown parameter `{k}`"),
                ))
            }
        };
        if !neutral {
            let what = match k.as_str() {
                "response_format" => {
                    "structured output (json_object, json_schema) is not supported: \
                                      only {\"type\": \"text\"}"
                }
                _ => "logit_bias is not supported: only an empty map",
            };
            return Err(ApiError::invalid(k.clone(), what));
        }
    }
    Ok(())
}
