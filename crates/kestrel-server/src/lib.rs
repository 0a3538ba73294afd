//! Kestrel's OpenAI-compatible HTTP server over the engine (DESIGN.md rule 4: it talks to the engine
//! through an [`EngineHandle`], never to the model).
//!
//! Routes: `POST /v1/chat/completions` (the model's chat template, streamed as server-sent events or
//! whole, Qwen3's `<think>` output as `reasoning_content`), `POST /v1/completions` (text or token ids),
//! `GET /v1/models`, `GET /health`. Errors have OpenAI's JSON shape and status ([`error`]). A client
//! that disconnects drops its request stream, which aborts the request and frees its KV blocks.

pub mod chat;
mod chat_response;
pub mod completions;
pub mod error;
mod logprobs;
pub mod metrics;
pub mod params;
pub mod reasoning;
mod request_body;
mod stream;
mod tool_call_header;
pub mod tool_calls;
pub mod tool_choice;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kestrel::engine::handle::{EngineHandle, RequestStream};
use kestrel::engine::request::Prompt;
use kestrel::engine::sampling::SamplingParams;
use kestrel::tokenizer::ChatTemplate;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// What the server is started with.
pub struct ServerConfig {
    /// The name clients use in `model` (and `GET /v1/models` lists).
    pub model_name: String,
    /// Requests must carry `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// `enable_thinking` for chat requests that don't set it (`--no-think`: false; None: the
    /// template's own default).
    pub default_thinking: Option<bool>,
    /// The largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// `max_tokens` of chat requests that don't set it (the engine cuts it to the context the prompt
    /// leaves: the default, `usize::MAX`, means all of it, as OpenAI and vLLM do).
    pub default_max_tokens: usize,
    /// Generation requests served at once (queued in the engine or running); more get 503.
    pub max_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_name: "kestrel".into(),
            api_key: None,
            default_thinking: None,
            max_body_bytes: 4 << 20,
            default_max_tokens: usize::MAX,
            max_in_flight: 1024,
        }
    }
}

/// Shared by every request.
pub struct AppState {
    pub engine: EngineHandle,
    pub chat_template: Option<ChatTemplate>,
    pub config: ServerConfig,
    /// Whether the vocabulary has Qwen3's `<think>` tag (then chat outputs are split).
    pub thinking_tags: bool,
    pub metrics: Arc<Metrics>,
    next_id: AtomicU64,
    created: u64,
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        chat_template: Option<ChatTemplate>,
        config: ServerConfig,
    ) -> Self {
        let thinking_tags = engine.tokenizer().token_to_id("<think>").is_some();
        let metrics = Arc::new(Metrics::new(config.max_in_flight));
        AppState {
            engine,
            chat_template,
            config,
            thinking_tags,
            metrics,
            next_id: AtomicU64::new(1),
            created: unix_time(),
        }
    }

    /// A fresh response id with `prefix` (chatcmpl, cmpl).
    pub(crate) fn response_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{:x}{:08x}",
            self.created,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `n` engine requests of `prompt` (choice i seeded with seed + i, so seeded choices differ and
    /// repeat).
    pub(crate) fn engine_requests(
        &self,
        prompt: Prompt,
        params: &SamplingParams,
        n: usize,
    ) -> Result<Vec<RequestStream>, ApiError> {
        (0..n)
            .map(|i| {
                let mut p = params.clone();
                p.seed = p.seed.map(|s| s.wrapping_add(i as u64));
                Ok(self.engine.add_request(prompt.clone(), p)?)
            })
            .collect()
    }

    pub(crate) fn check_model(&self, asked: &str) -> Result<(), ApiError> {
        if asked == self.config.model_name {
            Ok(())
        } else {
            Err(ApiError::unknown_model(asked, &self.config.model_name))
        }
    }
}

pub(crate) fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The server's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models))
        // ids may hold slashes (a repo id, a file path)
        .route("/v1/models/{*id}", get(model))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_status));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Counts every /v1 response by endpoint and status (401s included).
async fn count_status(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/models" => "models",
        _ => "other",
    };
    let resp = next.run(req).await;
    state.metrics.count_request(endpoint, resp.status());
    resp
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = state.metrics.render(state.engine.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn health() -> impl IntoResponse {
    (StatusCode::OK, Json(json!({"status": "ok"})))
}

fn model_card(state: &AppState) -> Value {
    json!({
        "id": state.config.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "kestrel",
    })
}

async fn models(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(json!({"object": "list", "data": [model_card(&state)]}))
}

/// `GET /v1/models/{id}` (the client's `models.retrieve`): the served model's card, or 404.
async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.check_model(&id)?;
    Ok(Json(model_card(&state)))
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::unknown_route(req.method().as_str(), req.uri().path())
}

/// Serves `router` on `listener` until `shutdown` resolves; in-flight responses (streams included)
/// finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
