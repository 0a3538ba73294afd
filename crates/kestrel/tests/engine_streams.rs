//! What each request sees of the engine: seeded sampling that does not depend on what else is in
//! the batch, text deltas that never split a character, and the thread-safe handle used from many
//! threads and from async code.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use common::engine_ref::{
    assert_same, config, engine, engine_async, greedy, load, prompt, Reference,
};
use kestrel::engine::engine::Engine;
use kestrel::engine::generate::FinishReason;
use kestrel::engine::handle::{EngineHandle, HandleError};
use kestrel::engine::request::{Output, Prompt};
use kestrel::engine::sampling::SamplingParams;

fn sampled(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 50,
        top_p: 0.95,
        seed: Some(seed),
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_independent_of_the_batch() {
    let r = Reference::new();
    let p = prompt(500, 21);
    let want = r.run(&p, &sampled(1234, 24));
    // Alone in the engine.
    let mut e = engine(config(4, 128, 8, 16));
    let alone = e
        .generate([(Prompt::Tokens(p.clone()), sampled(1234, 24))])
        .unwrap();
    assert_same(&alone[0], &want, p.len(), "alone");
    // Among other requests: greedy ones, penalised ones, other seeds, a twin, different lengths.
    let mut penalised = sampled(9, 30);
    penalised.repetition_penalty = 1.3;
    penalised.frequency_penalty = 0.5;
    let reqs = [
        (prompt(501, 33), greedy(15, true)),
        (p.clone(), sampled(1234, 24)),
        (prompt(502, 7), penalised),
        (p.clone(), sampled(4321, 24)),
        (prompt(503, 50), sampled(7, 12)),
        (p.clone(), sampled(1234, 24)),
    ];
    let outs = e
        .generate(
            reqs.iter()
                .map(|(p, s)| (Prompt::Tokens(p.clone()), s.clone())),
        )
        .unwrap();
    assert_same(&outs[1], &want, p.len(), "in a batch");
    assert_same(&outs[5], &want, p.len(), "its twin");
    assert_ne!(outs[3].token_ids, want.token_ids, "another seed differs");
    for i in [0, 2, 3, 4] {
        let (p, s) = &reqs[i];
        assert_same(&outs[i], &r.run(p, s), p.len(), &format!("request {i}"));
    }
    // Asynchronously scheduled (no penalties, so decode steps pipeline; then with the penalised
    // request, whose steps run one at a time between pipelined ones): the same tokens.
    let mut e = engine_async(config(4, 128, 8, 16));
    for batch in [&reqs[3..], &reqs[..]] {
        let outs = e
            .generate(
                batch
                    .iter()
                    .map(|(p, s)| (Prompt::Tokens(p.clone()), s.clone())),
            )
            .unwrap();
        for ((p, s), o) in batch.iter().zip(&outs) {
            assert_same(o, &r.run(p, s), p.len(), "async");
        }
    }
    assert!(e.stats().pipelined_steps > 0, "{:?}", e.stats());
}

#[test]
fn text_deltas_never_split_a_character_and_add_up_to_the_decode() {
    let mut e = engine(config(4, 128, 4, 32));
    // Sampling at temperature 1 from a random-weight model emits many lone high bytes: characters
    // cut over tokens and invalid sequences.
    let params = SamplingParams {
        temperature: 1.0,
        seed: Some(5),
        max_tokens: 120,
        ignore_eos: true,
        ..Default::default()
    };
    let id = e.add_request(prompt(600, 9), params).unwrap();
    let mut out = Output::new(id);
    let mut held_back = 0;
    while e.has_unfinished() {
        for o in e.step().unwrap() {
            let t = o.new_token_ids[0];
            let tok = e.tokenizer();
            let ordinary = tok.id_to_token(t).is_some() && !tok.is_special(t);
            if ordinary && o.text.is_empty() {
                held_back += 1;
            }
            out.push(&o);
        }
    }
    let known: Vec<u32> = out
        .token_ids
        .iter()
        .copied()
        .filter(|&t| e.tokenizer().id_to_token(t).is_some())
        .collect();
    let full = e.tokenizer().decode(&known, true).unwrap();
    assert_eq!(out.text, full);
    assert!(
        held_back > 0,
        "no token was held back: the test did not cut a character"
    );
    assert_eq!(out.completion_tokens, 120);
}

/// A minimal executor: polls a future on this thread, parking until its waker fires.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn spawn_handle(budget: usize) -> EngineHandle {
    spawn_handle_with(budget, false)
}

/// The handle's engine, with asynchronous scheduling or not.
fn spawn_handle_with(budget: usize, async_decode: bool) -> EngineHandle {
    EngineHandle::spawn(move || {
        let (backend, loaded) = load();
        let backend = backend.with_async_decode(async_decode);
        Engine::from_loaded(backend, loaded, config(4, 96, 8, budget))
    })
    .unwrap()
}

#[test]
fn handle_serves_many_threads_at_once() {
    // Requests arrive while steps run; asynchronously scheduled, also while a step is in flight.
    for async_decode in [false, true] {
        serve_many_threads(spawn_handle_with(16, async_decode));
    }
}

fn serve_many_threads(handle: EngineHandle) {
    let r = Arc::new(Reference::new());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let h = handle.clone();
            let r = r.clone();
            std::thread::spawn(move || {
                let reqs: Vec<_> = (0..2u64)
                    .map(|k| {
                        (
                            prompt(700 + 10 * t + k, 5 + 9 * (t + k) as usize),
                            greedy(10, k == 0),
                        )
                    })
                    .collect();
                let streams: Vec<_> = reqs
                    .iter()
                    .map(|(p, s)| h.add_request(p.clone(), s.clone()).unwrap())
                    .collect();
                for ((p, s), stream) in reqs.iter().zip(streams) {
                    let got = stream.wait().unwrap();
                    assert_same(&got, &r.run(p, s), p.len(), &format!("thread {t}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn handle_streams_to_async_code_and_aborts() {
    let r = Reference::new();
    let handle = spawn_handle(16);
    let p = prompt(800, 12);
    // Awaited token by token: the outputs arrive one token at a time, the last one finished.
    let mut stream = handle.add_request(p.clone(), greedy(8, true)).unwrap();
    let items = block_on(async {
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item.unwrap());
        }
        items
    });
    assert_eq!(items.len(), 8);
    assert!(items[..7].iter().all(|o| o.finish_reason.is_none()));
    let mut out = Output::new(stream.id());
    items.iter().for_each(|o| out.push(o));
    assert_same(&out, &r.run(&p, &greedy(8, true)), p.len(), "async");
    // An abort ends a long request early with finish reason Abort.
    let mut long = handle.add_request(p.clone(), greedy(300, true)).unwrap();
    let first = long.next_blocking_output();
    assert!(first.finish_reason.is_none());
    handle.abort(long.id());
    let rest = long.wait().unwrap();
    assert_eq!(rest.finish_reason, Some(FinishReason::Abort));
    assert!(rest.completion_tokens < 300);
    // What only the engine can judge comes back on the stream.
    let too_long = handle
        .add_request(prompt(1, 300), greedy(200, true))
        .unwrap();
    assert!(matches!(too_long.wait(), Err(HandleError::Rejected(m)) if m.contains("KV blocks")));
    // Bad parameters fail at once.
    let bad = SamplingParams {
        top_p: 0.0,
        ..greedy(4, true)
    };
    assert!(handle.add_request(p, bad).is_err());
}

trait NextBlocking {
    fn next_blocking_output(&mut self) -> kestrel::engine::request::RequestOutput;
}

impl NextBlocking for kestrel::engine::handle::RequestStream {
    fn next_blocking_output(&mut self) -> kestrel::engine::request::RequestOutput {
        Iterator::next(self)
            .expect("an output")
            .expect("not an error")
    }
}
