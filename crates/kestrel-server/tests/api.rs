//! The server's routes on the tiny random-weight Qwen3 (CPU), called in process (tower's oneshot):
//! responses against the engine run directly on the same prompt (the chat template rendered by the
//! library), streamed against whole, and every error case with its status, type and field.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use kestrel::backend::cpu::CpuBackend;
use kestrel::engine::engine::{Engine, EngineConfig};
use kestrel::engine::handle::EngineHandle;
use kestrel::engine::loaded::LoadedModel;
use kestrel::engine::request::Prompt;
use kestrel::engine::sampling::SamplingParams;
use kestrel::engine::scheduler::SchedulerConfig;
use kestrel::tokenizer::ChatTemplate;
use kestrel_server::{router, AppState, ServerConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/tiny-qwen3");
const KEY: &str = "sk-test-key";

fn engine_config() -> EngineConfig {
    EngineConfig {
        scheduler: SchedulerConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: 64,
            block_size: 16,
            num_blocks: 64,
            chunked_prefill: true,
        },
        // a context that the KV cache holds whole: a request without max_tokens may fill it
        max_model_len: Some(512),
    }
}

fn template() -> ChatTemplate {
    ChatTemplate::from_tokenizer_config(&std::path::Path::new(TINY).join("tokenizer_config.json"))
        .unwrap()
}

fn app(max_body_bytes: usize) -> Router {
    app_with(|c| c.max_body_bytes = max_body_bytes)
}

fn app_with(tweak: impl FnOnce(&mut ServerConfig)) -> Router {
    let handle = EngineHandle::spawn(|| {
        let backend = CpuBackend::new();
        let loaded = LoadedModel::load(TINY, &backend)?;
        Engine::from_loaded(backend, loaded, engine_config())
    })
    .unwrap();
    let mut config = ServerConfig {
        model_name: "tiny".into(),
        api_key: Some(KEY.into()),
        ..ServerConfig::default()
    };
    tweak(&mut config);
    router(Arc::new(AppState::new(handle, Some(template()), config)))
}

/// The engine's own greedy answer to `prompt` (no server in between).
fn direct(prompt: Prompt, max_tokens: usize) -> (String, usize, usize) {
    let backend = CpuBackend::new();
    let loaded = LoadedModel::load(TINY, &backend).unwrap();
    let mut e = Engine::from_loaded(backend, loaded, engine_config()).unwrap();
    let params = SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let out = e.generate([(prompt, params)]).unwrap().remove(0);
    (out.text, out.prompt_tokens, out.completion_tokens)
}

struct Reply {
    status: StatusCode,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The `data:` payloads of an SSE body, `[DONE]` last.
    fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
    fn error(&self, status: StatusCode, kind: &str, param: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.body);
        let e = &self.json()["error"];
        assert_eq!(e["type"], kind, "{}", self.body);
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{}", self.body);
        }
    }
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: impl Into<Body>,
    key: Option<&str>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn post(app: &Router, path: &str, body: Value) -> Reply {
    call(app, "POST", path, body.to_string(), Some(KEY)).await
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name a prime "}, {"type": "text", "text": "number."}]},
        ],
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": true,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_as_the_engine_does_whole_and_streamed() {
    let app = app(1 << 20);
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime number."},
    ]);
    let prompt = template().render(&messages, None, true, None).unwrap();
    let (want, prompt_tokens, completion_tokens) = direct(Prompt::Text(prompt), 12);

    let whole = post(&app, "/v1/chat/completions", chat_body(false)).await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.body);
    let v = whole.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["message"]["role"], "assistant");
    let reasoning = choice["message"]["reasoning_content"]
        .as_str()
        .unwrap_or("");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(
        v["usage"]["total_tokens"],
        prompt_tokens + completion_tokens
    );
    // the split takes out only the tags and the newlines around them
    if reasoning.is_empty() {
        assert_eq!(content, want);
    } else {
        assert!(
            want.contains(reasoning) && want.ends_with(content),
            "{want:?}"
        );
    }

    let streamed = post(&app, "/v1/chat/completions", chat_body(true)).await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.body);
    let events = streamed.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (mut r, mut c, mut finish) = (String::new(), String::new(), None);
    for ch in &chunks {
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(ch["id"], chunks[0]["id"], "one id per stream");
        if let Some(choice) = ch["choices"].get(0) {
            r += choice["delta"]["reasoning_content"].as_str().unwrap_or("");
            c += choice["delta"]["content"].as_str().unwrap_or("");
            if let Some(f) = choice["finish_reason"].as_str() {
                assert!(finish.is_none(), "one finish reason");
                finish = Some(f.to_string());
            }
        }
    }
    assert_eq!(
        (r.as_str(), c.as_str()),
        (reasoning, content),
        "streamed = whole"
    );
    assert_eq!(finish.as_deref(), Some("length"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], completion_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_of_text_and_token_ids() {
    let app = app(1 << 20);
    let (want, _, n) = direct(Prompt::Text("The quick brown fox".into()), 9);
    let body = json!({"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 9, "ignore_eos": true});
    let whole = post(&app, "/v1/completions", body.clone()).await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.body);
    let v = whole.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["usage"]["completion_tokens"], n);

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let streamed = post(&app, "/v1/completions", sbody).await;
    let events = streamed.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(text, want);

    let ids = vec![11u32, 300, 42, 7, 99];
    let (want_ids, _, _) = direct(Prompt::Tokens(ids.clone()), 5);
    let body = json!({"model": "tiny", "prompt": ids, "max_tokens": 5, "ignore_eos": true});
    let v = post(&app, "/v1/completions", body).await.json();
    assert_eq!(v["choices"][0]["text"], want_ids.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_every_error() {
    let app = app(64 * 1024);
    let h = call(&app, "GET", "/health", Body::empty(), None).await;
    assert_eq!(h.status, StatusCode::OK);
    let m = call(&app, "GET", "/v1/models", Body::empty(), Some(KEY)).await;
    assert_eq!(m.json()["data"][0]["id"], "tiny");
    let one = call(&app, "GET", "/v1/models/tiny", Body::empty(), Some(KEY)).await;
    assert_eq!(
        (one.status, one.json()["id"].clone()),
        (StatusCode::OK, json!("tiny"))
    );
    call(&app, "GET", "/v1/models/gpt-4", Body::empty(), Some(KEY))
        .await
        .error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model"),
        );

    let chat = "/v1/chat/completions";
    let bad = StatusCode::BAD_REQUEST;
    let invalid = "invalid_request_error";
    call(&app, "GET", "/v1/models", Body::empty(), None)
        .await
        .error(StatusCode::UNAUTHORIZED, "authentication_error", None);
    call(
        &app,
        "POST",
        chat,
        chat_body(false).to_string(),
        Some("sk-wrong"),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "authentication_error", None);
    call(&app, "GET", "/v1/nothing", Body::empty(), Some(KEY))
        .await
        .error(StatusCode::NOT_FOUND, invalid, None);
    call(&app, "POST", chat, "{\"model\": \"tiny\", ", Some(KEY))
        .await
        .error(bad, invalid, None);
    call(&app, "POST", chat, vec![0xFFu8, 0xFE, b'{'], Some(KEY))
        .await
        .error(bad, invalid, None);
    let big = format!(
        "{{\"model\": \"tiny\", \"prompt\": \"{}\"}}",
        "a".repeat(100 * 1024)
    );
    call(&app, "POST", "/v1/completions", big, Some(KEY))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, invalid, None);

    let with = |k: &str, v: Value| {
        let mut b = chat_body(false);
        b[k] = v;
        b
    };
    let cases = [
        (
            with("model", json!("gpt-4")),
            StatusCode::NOT_FOUND,
            "model",
        ),
        (with("temperature", json!("hot")), bad, "temperature"),
        (with("temperature", json!(7.5)), bad, "temperature"),
        (with("max_tokens", json!(-3)), bad, "max_tokens"),
        (
            with("max_completion_tokens", json!(0)),
            bad,
            "max_completion_tokens",
        ),
        (with("top_p", json!(0)), bad, "top_p"),
        (with("n", json!(0)), bad, "n"),
        (with("n", json!(17)), bad, "n"),
        (with("stop", json!(["a", "b", "c", "d", "e"])), bad, "stop"),
        (with("messages", json!([])), bad, "messages"),
        (
            with("messages", json!([{"role": "wizard", "content": "hi"}])),
            bad,
            "messages[0].role",
        ),
        (
            with("messages", json!([{"role": "user", "content": 5}])),
            bad,
            "messages[0].content",
        ),
        (with("frobnicate", json!(true)), bad, "frobnicate"),
        (with("top_logprobs", json!(3)), bad, "top_logprobs"),
        (with("logprobs", json!("yes")), bad, "logprobs"),
        (with("tool_choice", json!("sometimes")), bad, "tool_choice"),
        (
            with("response_format", json!({"type": "json_object"})),
            bad,
            "response_format",
        ),
        (with("logit_bias", json!({"15": 100})), bad, "logit_bias"),
        (
            with("parallel_tool_calls", json!("no")),
            bad,
            "parallel_tool_calls",
        ),
        (with("tool_choice", json!("required")), bad, "tool_choice"),
        (
            with("tools", json!([{"type": "function", "function": {}}])),
            bad,
            "tools[0].function.name",
        ),
    ];
    for (body, status, param) in cases {
        let r = post(&app, chat, body.clone()).await;
        r.error(status, invalid, (!param.is_empty()).then_some(param));
    }
    // the server still serves after all that, and takes those parameters in their neutral form
    let mut neutral = chat_body(false);
    neutral["response_format"] = json!({"type": "text"});
    neutral["logit_bias"] = json!({});
    neutral["parallel_tool_calls"] = json!(false);
    let r = post(&app, chat, neutral).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// The value of a Prometheus sample line `name value`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tokens_and_latencies() {
    let app = app(1 << 20);
    for stream in [false, true] {
        assert_eq!(
            post(&app, "/v1/chat/completions", chat_body(stream))
                .await
                .status,
            StatusCode::OK
        );
    }
    let body = json!({"model": "tiny", "prompt": "Hi", "max_tokens": 5, "ignore_eos": true});
    assert_eq!(
        post(&app, "/v1/completions", body).await.status,
        StatusCode::OK
    );
    let mut bad = chat_body(false);
    bad["temperature"] = json!(9);
    assert_eq!(
        post(&app, "/v1/chat/completions", bad).await.status,
        StatusCode::BAD_REQUEST
    );
    let m = call(&app, "GET", "/metrics", Body::empty(), None).await;
    assert_eq!(m.status, StatusCode::OK);
    let t = &m.body;
    assert_eq!(
        sample(
            t,
            "kestrel_requests_total{endpoint=\"chat_completions\",status=\"200\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            t,
            "kestrel_requests_total{endpoint=\"chat_completions\",status=\"400\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            t,
            "kestrel_requests_total{endpoint=\"completions\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(t, "kestrel_generation_tokens_total"),
        (12 + 12 + 5) as f64
    );
    assert!(sample(t, "kestrel_prompt_tokens_total") > 0.0);
    assert_eq!(sample(t, "kestrel_time_to_first_token_seconds_count"), 3.0);
    assert_eq!(
        sample(t, "kestrel_time_per_output_token_seconds_count"),
        3.0
    );
    assert_eq!(sample(t, "kestrel_requests_in_flight"), 0.0);
    assert_eq!(sample(t, "kestrel_kv_blocks_total"), 64.0);
    assert_eq!(sample(t, "kestrel_num_requests_waiting"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_request_limit_the_answer_is_503() {
    let app = app_with(|c| c.max_in_flight = 0);
    let r = post(&app, "/v1/chat/completions", chat_body(false)).await;
    r.error(StatusCode::SERVICE_UNAVAILABLE, "server_error", None);
    let m = call(&app, "GET", "/v1/models", Body::empty(), Some(KEY)).await;
    assert_eq!(
        m.status,
        StatusCode::OK,
        "non-generation routes still answer"
    );
    let t = call(&app, "GET", "/metrics", Body::empty(), None)
        .await
        .body;
    assert_eq!(
        sample(&t, "kestrel_requests_in_flight"),
        0.0,
        "the refused request gave its slot back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_seeded_whole_and_streamed() {
    let app = app(1 << 20);
    let mut body = chat_body(false);
    body["n"] = json!(3);
    body["temperature"] = json!(1.0);
    body["seed"] = json!(11);
    let whole = post(&app, "/v1/chat/completions", body.clone()).await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.body);
    let v = whole.json();
    let texts: Vec<String> = (0..3)
        .map(|i| {
            let c = &v["choices"][i];
            assert_eq!(c["index"], i);
            let m = &c["message"];
            format!(
                "{}{}",
                m["reasoning_content"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "seeds + i give different samples: {texts:?}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 36);
    // the same request again: the same three samples (seeded), also streamed, each choice in order
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = post(&app, "/v1/chat/completions", body).await.events();
    let mut got = vec![String::new(); 3];
    let mut finished = 0;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(ch) = c["choices"].get(0) {
            let i = ch["index"].as_u64().unwrap() as usize;
            got[i] += ch["delta"]["reasoning_content"].as_str().unwrap_or("");
            got[i] += ch["delta"]["content"].as_str().unwrap_or("");
            finished += ch["finish_reason"].is_string() as usize;
        } else {
            assert_eq!(
                c["usage"]["completion_tokens"], 36,
                "one usage chunk, after every choice"
            );
        }
    }
    assert_eq!(finished, 3);
    assert_eq!(got, texts);
    let body = json!({"model": "tiny", "prompt": "Hi", "max_tokens": 4, "n": 2, "temperature": 1.0, "seed": 5});
    let v = post(&app, "/v1/completions", body).await.json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["completion_tokens"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_tokens_or_past_the_context_a_chat_fills_it() {
    let app = app(1 << 20);
    let mut absent = chat_body(false);
    absent.as_object_mut().unwrap().remove("max_tokens");
    let mut past = chat_body(false);
    past["max_tokens"] = json!(100_000);
    for body in [absent, past] {
        let v = post(&app, "/v1/chat/completions", body).await.json();
        let u = &v["usage"];
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{u}");
        assert_eq!(
            u["total_tokens"], 512,
            "prompt + completion = the context: {u}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_whole_and_streamed() {
    let app = app(1 << 20);
    let mut body = chat_body(false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let v = post(&app, "/v1/chat/completions", body.clone())
        .await
        .json();
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(content.len(), 12, "one entry a token");
    for e in &content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // greedy: the chosen token is the most likely one
        assert_eq!(e["logprob"], top[0]["logprob"], "{e}");
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
    body["stream"] = json!(true);
    let events = post(&app, "/v1/chat/completions", body.clone())
        .await
        .events();
    let streamed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed, content, "streamed logprobs = whole");
    body["top_logprobs"] = json!(21);
    post(&app, "/v1/chat/completions", body).await.error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some("top_logprobs"),
    );

    let c = json!({"model": "tiny", "prompt": "Hi there", "max_tokens": 6, "logprobs": 2, "ignore_eos": true});
    let v = post(&app, "/v1/completions", c).await.json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 6);
    assert!(lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.as_object().is_some_and(|m| !m.is_empty() && m.len() <= 2)));
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[0] == 0,
        "{offsets:?}"
    );
    let bad = json!({"model": "tiny", "prompt": "Hi", "logprobs": 21});
    post(&app, "/v1/completions", bad).await.error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some("logprobs"),
    );
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

/// tool_choice "required" or a named function writes the start of the call after the prompt (thinking
/// off): the answer is the engine's own continuation of exactly that text. The tiny model does not
/// finish the call, so it comes back as text, the forced start included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_tool_choice_starts_the_call() {
    let app = app(1 << 20);
    let messages = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let rendered = template()
        .render(&messages, Some(&weather_tools()), true, Some(false))
        .unwrap();
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let named_start = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ";
    for (choice, start) in [
        (json!("required"), "<tool_call>\n{\"name\": \""),
        (named, named_start),
    ] {
        let (want, prompt_tokens, _) = direct(Prompt::Text(format!("{rendered}{start}")), 10);
        let body = json!({"model": "tiny", "messages": messages, "tools": weather_tools(),
            "tool_choice": choice, "max_tokens": 10, "temperature": 0, "ignore_eos": true});
        let v = post(&app, "/v1/chat/completions", body.clone())
            .await
            .json();
        assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens, "{v}");
        let msg = &v["choices"][0]["message"];
        match msg["tool_calls"].as_array() {
            // the model went on with an object or array: a call whose arguments are its text
            Some(calls) => {
                assert_eq!(calls[0]["function"]["name"], "get_weather", "{v}");
                assert!(want.contains(calls[0]["function"]["arguments"].as_str().unwrap()));
            }
            None => assert_eq!(msg["content"], format!("{start}{want}"), "{v}"),
        }
        let mut sbody = body;
        sbody["stream"] = json!(true);
        let streamed = post(&app, "/v1/chat/completions", sbody).await;
        let content: String = streamed.events()[..streamed.events().len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(
            content,
            msg["content"].as_str().unwrap_or(""),
            "streamed = whole"
        );
    }
}
