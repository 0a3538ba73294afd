//! [`EngineHandle`]: the engine on a thread of its own, shared by any number of clients (the HTTP
//! server's tasks, CLI threads). DESIGN.md rule 4: clients talk to the engine through channels,
//! never to the model.
//!
//! Commands go to the engine thread over a std channel (sending never blocks). Each request's
//! outputs come back over its own tokio unbounded channel, which an async task awaits without
//! blocking its runtime ([`RequestStream::next`]) and a plain thread reads blocking (the `Iterator`).
//! The engine thread steps while any request is live and sleeps on the command channel otherwise.
//! Dropping a [`RequestStream`] aborts its request (a client that went away frees its KV blocks);
//! the thread ends once every handle is dropped and no request is left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::engine::Engine;
use super::gauges::{EngineGauges, Gauges};
use super::request::{Output, Prompt, RequestId, RequestOutput};
use super::sampling::SamplingParams;
use crate::backend::Backend;
use crate::tokenizer::Tokenizer;
use crate::{KestrelError, Result};

/// Why a request's stream ended without its last output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The engine refused the request (e.g. prompt plus max_tokens exceed the KV cache).
    #[error("{0}")]
    Rejected(String),
    /// A step failed; every live request was aborted.
    #[error("engine step failed: {0}")]
    Step(String),
    /// The engine thread is gone (it panicked, or its stream ended early).
    #[error("the engine has stopped")]
    Stopped,
}

pub type StreamItem = std::result::Result<RequestOutput, HandleError>;

enum Command {
    Add {
        id: RequestId,
        prompt: Vec<u32>,
        params: SamplingParams,
        out: UnboundedSender<StreamItem>,
    },
    Abort(RequestId),
}

struct Shared {
    commands: mpsc::Sender<Command>,
    next_id: AtomicU64,
    tokenizer: Tokenizer,
    gauges: Arc<EngineGauges>,
}

/// Clone + Send + Sync: every clone talks to the same engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

/// One request's outputs, in order; the last carries a finish reason.
pub struct RequestStream {
    id: RequestId,
    rx: UnboundedReceiver<StreamItem>,
    done: bool,
}

impl EngineHandle {
    /// Starts the engine thread; `make` builds the engine on it (so a GPU backend is created and
    /// used on one thread). Returns once the engine is built, or with the error that stopped it.
    pub fn spawn<B, F>(make: F) -> Result<EngineHandle>
    where
        B: Backend + 'static,
        F: FnOnce() -> Result<Engine<B>> + Send + 'static,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("kestrel-engine".into())
            .spawn(move || match make() {
                Ok(engine) => {
                    let (handle, engine_loop) = EngineHandle::with_loop(engine);
                    let _ = ready_tx.send(Ok(handle));
                    engine_loop.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| KestrelError::Engine(format!("starting the engine thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| KestrelError::Engine("the engine thread died while starting".into()))?
    }

    /// A handle to `engine` and the loop that serves it, for a caller that runs the loop on a thread
    /// of its own choosing (the server: the GPU backend stays on the thread that created it, while the
    /// HTTP runtime has its own threads). The loop returns once every handle is dropped and no request
    /// is left.
    pub fn with_loop<B: Backend>(engine: Engine<B>) -> (EngineHandle, EngineLoop<B>) {
        let (commands, rx) = mpsc::channel();
        let gauges = Arc::new(EngineGauges::default());
        gauges.publish(&engine);
        let handle = EngineHandle {
            shared: Arc::new(Shared {
                commands,
                next_id: AtomicU64::new(0),
                tokenizer: engine.tokenizer().clone(),
                gauges: gauges.clone(),
            }),
        };
        (handle, EngineLoop { engine, rx, gauges })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// The engine's state as of its last step.
    pub fn gauges(&self) -> Gauges {
        self.shared.gauges.read()
    }

    /// Queues a request; never blocks on the engine. Bad parameters and text that does not tokenize
    /// fail here; what only the engine can judge (length against the KV cache) ends the stream with
    /// [`HandleError::Rejected`].
    pub fn add_request(
        &self,
        prompt: impl Into<Prompt>,
        params: SamplingParams,
    ) -> Result<RequestStream> {
        params.validate()?;
        let prompt = prompt.into().into_tokens(&self.shared.tokenizer)?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (out, rx) = unbounded_channel();
        self.shared
            .commands
            .send(Command::Add {
                id,
                prompt,
                params,
                out,
            })
            .map_err(|_| KestrelError::Engine("the engine thread has stopped".into()))?;
        Ok(RequestStream {
            id,
            rx,
            done: false,
        })
    }

    /// Aborts a request: its KV blocks are freed and its stream ends with finish reason `Abort`
    /// (unless it finished first).
    pub fn abort(&self, id: RequestId) {
        let _ = self.shared.commands.send(Command::Abort(id));
    }
}

impl RequestStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    fn track(&mut self, item: Option<StreamItem>) -> Option<StreamItem> {
        if self.done {
            return None;
        }
        let item = item.unwrap_or(Err(HandleError::Stopped));
        self.done = match &item {
            Ok(o) => o.finish_reason.is_some(),
            Err(_) => true,
        };
        Some(item)
    }

    /// The next output, awaited without blocking an async runtime; `None` after the last one.
    pub async fn next(&mut self) -> Option<StreamItem> {
        if self.done {
            return None;
        }
        let item = self.rx.recv().await;
        self.track(item)
    }

    /// Blocks until the request finishes; its outputs put together.
    pub fn wait(self) -> std::result::Result<Output, HandleError> {
        let mut out = Output::new(self.id);
        for item in self {
            out.push(&item?);
        }
        Ok(out)
    }
}

/// Blocking: for threads, not for async tasks (tokio panics if a runtime thread blocks here).
impl Iterator for RequestStream {
    type Item = StreamItem;
    fn next(&mut self) -> Option<StreamItem> {
        if self.done {
            return None;
        }
        let item = self.rx.blocking_recv();
        self.track(item)
    }
}

/// The engine's loop, run by whoever holds it ([`EngineHandle::with_loop`]).
pub struct EngineLoop<B: Backend> {
    engine: Engine<B>,
    rx: mpsc::Receiver<Command>,
    gauges: Arc<EngineGauges>,
}

impl<B: Backend> EngineLoop<B> {
    /// Serves requests until every handle is dropped and no request is left.
    pub fn run(self) {
        serve(self.engine, self.rx, &self.gauges);
    }
}

/// The engine thread's loop.
fn serve<B: Backend>(
    mut engine: Engine<B>,
    commands: mpsc::Receiver<Command>,
    gauges: &EngineGauges,
) {
    let mut streams: HashMap<RequestId, UnboundedSender<StreamItem>> = HashMap::new();
    let mut connected = true;
    loop {
        if !engine.has_unfinished() {
            if !connected {
                return;
            }
            match commands.recv() {
                Ok(c) => apply(&mut engine, &mut streams, c),
                Err(_) => return,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(c) => apply(&mut engine, &mut streams, c),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    connected = false;
                    break;
                }
            }
        }
        let gone: Vec<RequestId> = streams
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            streams.remove(&id);
            engine.abort(id);
        }
        let stepped = engine.step();
        gauges.publish(&engine);
        match stepped {
            Ok(outputs) => {
                for o in outputs {
                    let last = o.finish_reason.is_some();
                    let id = o.id;
                    if let Some(tx) = streams.get(&id) {
                        let _ = tx.send(Ok(o));
                    }
                    if last {
                        streams.remove(&id);
                    }
                }
            }
            Err(e) => {
                // The step's state is unknown: end every live request, then drop their aborts.
                let msg = e.to_string();
                for (id, tx) in streams.drain() {
                    let _ = tx.send(Err(HandleError::Step(msg.clone())));
                    engine.abort(id);
                }
                let _ = engine.step();
            }
        }
    }
}

fn apply<B: Backend>(
    engine: &mut Engine<B>,
    streams: &mut HashMap<RequestId, UnboundedSender<StreamItem>>,
    command: Command,
) {
    match command {
        Command::Add {
            id,
            prompt,
            params,
            out,
        } => match engine.add_request_with_id(id, prompt, params) {
            Ok(()) => {
                streams.insert(id, out);
            }
            Err(e) => {
                let _ = out.send(Err(HandleError::Rejected(e.to_string())));
            }
        },
        Command::Abort(id) => {
            engine.abort(id);
        }
    }
}
