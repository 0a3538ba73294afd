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

pub(crate) fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

pub(crate) fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// A refused request (prompt too long for the KV cache...) is the client's; a failed step is ours.
pub(crate) fn handle_error(e: HandleError) -> ApiError {
    match e {
        HandleError::Rejected(m) => ApiError::bad_request(m),
        e => ApiError::engine(e.to_string()),
    }
}

/// Every output of a request, awaited; the first error ends it.
pub(crate) async fn collect(mut s: RequestStream) -> Result<Vec<RequestOutput>, ApiError> {
    let mut outs = Vec::new();
    while let Some(item) = s.next().await {
        outs.push(item.map_err(handle_error)?);
    }
    Ok(outs)
}

/// The outputs of `s` as SSE: `on_output` turns each into chunk objects (zero or more), `on_error`
/// an engine error into a last one; then `[DONE]`. Dropping the response (a client that left)
/// drops `s`, which aborts the request.
pub(crate) fn sse<F>(s: RequestStream, mut on_output: F) -> Response
where
    F: FnMut(&RequestOutput) -> Vec<Value> + Send + 'static,
{
    let events = stream::unfold(Some(s), |s| async move {
        let mut s = s?;
        match s.next().await {
            Some(Ok(o)) => Some((Ok(o), Some(s))),
            Some(Err(e)) => Some((Err(e), None)),
            None => None,
        }
    })
    .flat_map(move |item| {
        let chunks: Vec<Value> = match item {
            Ok(o) => on_output(&o),
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
