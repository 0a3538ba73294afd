//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}` with the status
//! OpenAI gives the same mistake, so clients (the `openai` package) raise their usual exceptions.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kestrel::KestrelError;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error type: invalid_request_error, authentication_error, ...
    pub kind: &'static str,
    /// The request field at fault, where there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: a parameter is missing, of the wrong type or out of range.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// 400 about the request as a whole (not one field).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect API key provided: pass the key the server was started with \
                      (--api-key) as `Authorization: Bearer KEY`."
                .into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn unknown_model(asked: &str, served: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{asked}` does not exist: this server serves `{served}`."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn unknown_route(method: &str, path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "Unknown route {method} {path}: this server has POST /v1/chat/completions, POST \
                 /v1/completions, GET /v1/models and GET /health."
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// 503: as many requests as the server takes are being served.
    pub fn overloaded(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "The server is serving its limit of {limit} requests: retry shortly (or start it \
                 with a larger --max-requests)."
            ),
            kind: "server_error",
            param: None,
            code: Some("overloaded"),
        }
    }

    /// 500: the engine failed or stopped.
    pub fn engine(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// What the library refuses (bad sampling values, text that does not tokenize, a prompt too long for
/// the context) is the client's mistake: 400 naming the parameter.
impl From<KestrelError> for ApiError {
    fn from(e: KestrelError) -> ApiError {
        match e {
            KestrelError::InvalidParameter { name, msg } => ApiError::invalid(name, msg),
            e => ApiError::bad_request(e.to_string()),
        }
    }
}
