//! What both endpoints share: the engine's finish reasons in OpenAI's words, usage objects, and a
//! request's outputs as a stream of server-sent events ending with `data: [DONE]`.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use kestrel::engine::generate::FinishReason;
use kestrel::engine::handle::{HandleError, RequestStream};
use kestrel::engine::request::RequestOutput;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::metrics::Tracker;

pub(crate) fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

/// Usage over a request's choices: the prompt counted once, the completions summed.
#[derive(Debug, Default)]
pub(crate) struct UsageTally {
    prompt: usize,
    completion: usize,
    finished: usize,
}

impl UsageTally {
    /// Counts a choice's last output (the one with its finish reason).
    pub fn add(&mut self, last: &RequestOutput) {
        self.prompt = last.prompt_tokens;
        self.completion += last.completion_tokens;
        self.finished += 1;
    }

    pub fn finished(&self) -> usize {
        self.finished
    }

    /// OpenAI's `usage` object.
    pub fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        })
    }
}

/// A refused request (prompt too long for the KV cache...) is the client's; a failed step is ours.
pub(crate) fn handle_error(e: HandleError) -> ApiError {
    match e {
        HandleError::Rejected(m) => ApiError::bad_request(m),
        e => ApiError::engine(e.to_string()),
    }
}

/// Every output of each request (one per choice), awaited; the first error ends it.
pub(crate) async fn collect(
    streams: Vec<RequestStream>,
    mut tracker: Tracker,
) -> Result<Vec<Vec<RequestOutput>>, ApiError> {
    let mut all = Vec::with_capacity(streams.len());
    for mut s in streams {
        let mut outs = Vec::new();
        while let Some(item) = s.next().await {
            let o = item.map_err(handle_error)?;
            tracker.on_output(&o);
            outs.push(o);
        }
        all.push(outs);
    }
    Ok(all)
}

/// The outputs of `streams` (choice i: stream i) as SSE, as they come: `on_output(i, o)` turns each
/// into chunk objects (zero or more), an engine error becomes a last `{"error": ...}` one; then
/// `[DONE]`. Dropping the response (a client that left) drops the streams, which aborts their
/// requests; `tracker` (the in-flight slot) goes with them.
pub(crate) fn sse<F>(
    streams: Vec<RequestStream>,
    mut tracker: Tracker,
    mut on_output: F,
) -> Response
where
    F: FnMut(usize, &RequestOutput) -> Vec<Value> + Send + 'static,
{
    let each = streams.into_iter().enumerate().map(|(i, s)| {
        Box::pin(stream::unfold(Some(s), move |s| async move {
            let mut s = s?;
            match s.next().await {
                Some(Ok(o)) => Some(((i, Ok(o)), Some(s))),
                Some(Err(e)) => Some(((i, Err(e)), None)),
                None => None,
            }
        }))
    });
    let events = stream::select_all(each)
        .flat_map(move |(i, item)| {
            let chunks: Vec<Value> = match item {
                Ok(o) => {
                    tracker.on_output(&o);
                    on_output(i, &o)
                }
                Err(e) => {
                    let e = handle_error(e);
                    vec![json!({"error": {"message": e.message, "type": e.kind}})]
                }
            };
            stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Event::default().data(c.to_string())),
            )
        })
        .chain(stream::once(async { Event::default().data("[DONE]") }))
        .map(Ok::<Event, Infallible>);
    sse_response(events)
}

fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
