//! `kestrel serve`: the OpenAI-compatible HTTP server (crates/kestrel-server) over the engine. The
//! engine runs on this thread (where the backend was created: a GPU context stays on one thread);
//! HTTP runs on a tokio runtime's threads and talks to it through the engine handle.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use kestrel::backend::Backend;
use kestrel::engine::engine::Engine;
use kestrel::engine::handle::EngineHandle;
use kestrel_server::{router, AppState, ServerConfig};

use crate::common::{ModelArgs, Ready, WithModel};
use crate::engine_args::{EngineArgs, SERVE_BATCHED_TOKENS};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  kestrel serve --model Qwen/Qwen3-0.6B --port 8080\n  \
curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n    \
-d '{\"model\": \"Qwen/Qwen3-0.6B\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'\n\n\
Any OpenAI client works: base_url http://127.0.0.1:8080/v1, the model name from --served-model-name \
(default: the --model argument), the key from --api-key (any string when the server has none)."
)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (0.0.0.0 for every interface)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 routes
    #[arg(long, env = "KESTREL_API_KEY")]
    pub api_key: Option<String>,
    /// The model name clients send and /v1/models lists [default: the --model argument]
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Answer without thinking unless a request sets chat_template_kwargs.enable_thinking
    #[arg(long)]
    pub no_think: bool,
    /// Generation requests served at once (queued or running); more are refused with 503
    #[arg(long, default_value_t = 1024, allow_negative_numbers = true)]
    pub max_requests: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    args.model.dispatch(Serve(&args))
}

struct Serve<'a>(&'a ServeArgs);

impl WithModel for Serve<'_> {
    fn run<B: Backend>(self, ready: Ready<B>) -> Result<()> {
        let args = self.0;
        args.engine.check(SERVE_BATCHED_TOKENS)?;
        let context = args.model.context(&ready)?;
        // on the CPU, 16 contexts' worth
        let tokens = args.engine.kv_tokens(
            ready.kv_tokens,
            &ready.loaded.config,
            (16 * context, context),
        )?;
        anyhow::ensure!(
            tokens >= context,
            "the KV cache holds {tokens} tokens, less than one context of {context}: raise --kv-tokens \
             or lower --ctx-size"
        );
        let Ready {
            backend,
            mut loaded,
            ..
        } = ready;
        let chat_template = loaded.chat_template.take();
        let backend_name = backend.name();
        let cfg = args
            .engine
            .config(tokens, Some(context), SERVE_BATCHED_TOKENS);
        let engine = Engine::from_loaded(backend, loaded, cfg).context("setting up the engine")?;
        let (handle, engine_loop) = EngineHandle::with_loop(engine);
        let name = args
            .served_model_name
            .clone()
            .unwrap_or_else(|| args.model.model.clone());
        let config = ServerConfig {
            model_name: name.clone(),
            api_key: args.api_key.clone(),
            default_thinking: args.no_think.then_some(false),
            max_in_flight: args.max_requests,
            ..ServerConfig::default()
        };
        let app = router(Arc::new(AppState::new(handle, chat_template, config)));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        let asked = format!("{}:{}", args.host, args.port);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&asked))
            .map_err(|e| {
                let hint = match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "another program is using the port: pick another with --port"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "ports below 1024 need privileges: pick another with --port"
                    }
                    std::io::ErrorKind::AddrNotAvailable => {
                        "this machine has no such address: check --host"
                    }
                    _ => "check --host and --port",
                };
                anyhow::anyhow!("cannot listen on {asked}: {e} ({hint})")
            })?;
        // the port the system chose for --port 0
        let addr = listener.local_addr().map_or(asked, |a| a.to_string());
        eprintln!(
            "serving {name} on http://{addr}/v1 ({backend_name}, context {context}, KV cache {tokens} tokens); \
             Ctrl-C or SIGTERM stops it after the requests in flight"
        );
        let server = runtime
            .spawn(async move { kestrel_server::serve(listener, app, shutdown_signal()).await });
        // the engine on this thread until the server (and with it every handle) is gone
        engine_loop.run();
        runtime
            .block_on(server)
            .context("the HTTP server task failed")?
            .context("serving HTTP")?;
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
