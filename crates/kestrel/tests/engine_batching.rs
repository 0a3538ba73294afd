//! The engine against the single-sequence reference (`generate`, alone, its own cache): batching,
//! chunked prefill, prefix-cache hits, preemption and aborts must never change a request's output.

mod common;

use common::engine_ref::{
    assert_same, config, engine, engine_async, engine_longest_first, engines, greedy, prompt,
    Reference,
};
use kestrel::engine::generate::FinishReason;
use kestrel::engine::request::{Output, Prompt};
use kestrel::engine::sampling::SamplingParams;

fn run_all(
    e: &mut kestrel::engine::engine::Engine<kestrel::backend::cpu::CpuBackend>,
    reqs: &[(Vec<u32>, SamplingParams)],
) -> Vec<Output> {
    e.generate(
        reqs.iter()
            .map(|(p, s)| (Prompt::Tokens(p.clone()), s.clone())),
    )
    .expect("engine generate")
}

fn check_all(r: &Reference, reqs: &[(Vec<u32>, SamplingParams)], outs: &[Output], tag: &str) {
    assert_eq!(outs.len(), reqs.len());
    for (i, ((p, s), o)) in reqs.iter().zip(outs).enumerate() {
        assert_same(o, &r.run(p, s), p.len(), &format!("{tag} request {i}"));
    }
}

#[test]
fn batch_with_chunked_prefill_matches_each_request_alone() {
    let r = Reference::new();
    let lens = [3usize, 17, 40, 9, 64, 1, 25];
    let maxes = [12usize, 20, 5, 30, 8, 16, 10];
    let mut reqs: Vec<(Vec<u32>, SamplingParams)> = lens
        .iter()
        .zip(maxes)
        .enumerate()
        .map(|(i, (&len, max))| (prompt(i as u64, len), greedy(max, i % 2 == 0)))
        .collect();
    // A stop string taken from the middle of a request's own text: both paths must stop there.
    let (p, s) = reqs[3].clone();
    let alone = r.run(&p, &s);
    let chars: Vec<char> = alone.text.chars().collect();
    assert!(
        chars.len() >= 8,
        "reference text too short: {:?}",
        alone.text
    );
    let stop: String = chars[4..6].iter().collect();
    let mut with_stop = s.clone();
    with_stop.stop = vec![stop];
    reqs.push((p, with_stop));
    // A 16-token budget splits the long prompts over several steps, mixed with other decodes.
    let mut e = engine(config(4, 256, 8, 16));
    let outs = run_all(&mut e, &reqs);
    check_all(&r, &reqs, &outs, "chunked");
    assert_eq!(outs[7].finish_reason, Some(FinishReason::Stop));
    assert!(outs[7].token_ids.len() < reqs[7].1.max_tokens);
    let st = e.stats();
    assert!(
        st.graph_steps > 0,
        "pure greedy decode steps use the graph path: {st:?}"
    );
    assert!(st.graph_steps < st.steps, "{st:?}");
    assert_eq!(e.num_free_blocks(), e.num_blocks(), "every block freed");
    // Decode steps listed longest context first (what a GPU may ask for): the same outputs.
    let mut e = engine_longest_first(config(4, 256, 8, 16));
    let outs = run_all(&mut e, &reqs);
    check_all(&r, &reqs, &outs, "longest first");
    assert_eq!(e.num_free_blocks(), e.num_blocks(), "every block freed");
    // Asynchronous scheduling: the same outputs, stop strings and stop tokens found a step late.
    let mut e = engine_async(config(4, 256, 8, 16));
    let outs = run_all(&mut e, &reqs);
    check_all(&r, &reqs, &outs, "async");
    let st = e.stats();
    assert!(
        st.pipelined_steps > 0,
        "decode steps were pipelined: {st:?}"
    );
    assert_eq!(e.num_free_blocks(), e.num_blocks(), "every block freed");
}

#[test]
fn prefix_cache_hits_match_misses_and_a_fully_cached_prompt_works() {
    let r = Reference::new();
    let base = prompt(100, 32);
    let with = |tail_seed: u64, tail: usize| {
        let mut p = base.clone();
        p.extend(prompt(tail_seed, tail));
        p
    };
    for (tag, mut e) in engines(config(4, 256, 8, 64)) {
        prefix_cache_case(&r, &base, &with, &mut e, tag);
    }
}

fn prefix_cache_case(
    r: &Reference,
    base: &[u32],
    with: &dyn Fn(u64, usize) -> Vec<u32>,
    e: &mut kestrel::engine::engine::Engine<kestrel::backend::cpu::CpuBackend>,
    tag: &str,
) {
    // Fill the cache with the shared prefix.
    let first = vec![(with(1, 7), greedy(10, true))];
    check_all(r, &first, &run_all(e, &first), &format!("{tag} first"));
    let cached0 = e.stats().cached_tokens;
    assert_eq!(cached0, 0);
    // Different tails after the cached prefix, a shorter prefix, and the prefix itself (32 tokens:
    // every block of it is cached, the last is recomputed).
    let second = vec![
        (with(2, 13), greedy(12, true)),
        (base[..30].to_vec(), greedy(9, true)),
        (base.to_vec(), greedy(11, true)),
    ];
    let outs = run_all(e, &second);
    check_all(r, &second, &outs, &format!("{tag} hits"));
    let hits = e.stats().cached_tokens - cached0;
    assert!(hits >= 32 + 28 + 28, "{tag}: prefix hits: {hits}");
    // The same entirely cached prompt again: 7 of its 8 blocks hit, same output.
    let before = e.stats().cached_tokens;
    let again = vec![(base.to_vec(), greedy(11, true))];
    check_all(r, &again, &run_all(e, &again), &format!("{tag} again"));
    assert_eq!(e.stats().cached_tokens - before, 28);
    assert_eq!(e.num_free_blocks(), e.num_blocks());
}

#[test]
fn preempted_sequences_continue_identically() {
    let r = Reference::new();
    // 16 blocks of 4 = 64 tokens of KV for 6 sequences of up to 49 tokens each.
    let reqs: Vec<(Vec<u32>, SamplingParams)> = (0..6)
        .map(|i| {
            (
                prompt(200 + i, 10 + 2 * i as usize),
                greedy(25 + i as usize, true),
            )
        })
        .collect();
    for (tag, mut e) in engines(config(4, 16, 6, 32)) {
        let outs = run_all(&mut e, &reqs);
        check_all(&r, &reqs, &outs, &format!("{tag} preempted"));
        let st = e.stats();
        assert!(
            st.preemptions > 0,
            "{tag}: the workload must preempt: {st:?}"
        );
        assert_eq!(e.num_free_blocks(), e.num_blocks(), "{tag}");
    }
}

#[test]
fn many_long_sequences_that_do_not_fit_all_complete() {
    let r = Reference::new();
    let mut rng = common::Rng(77);
    // Issue #5's case at its size: 256 sequences of up to 120 tokens, all admitted at once (256 may
    // run together), in a cache of 160 tokens: preemption by recompute must keep every one
    // progressing to its last token.
    let reqs: Vec<(Vec<u32>, SamplingParams)> = (0..256)
        .map(|i| {
            let p = prompt(300 + i, rng.range(30, 60));
            (p, greedy(rng.range(30, 60), true))
        })
        .collect();
    for (tag, mut e) in engines(config(8, 20, 256, 256)) {
        let outs = run_all(&mut e, &reqs);
        for ((_, s), o) in reqs.iter().zip(&outs) {
            assert_eq!(o.completion_tokens, s.max_tokens, "{tag}");
            assert_eq!(o.finish_reason, Some(FinishReason::Length), "{tag}");
        }
        // Spot-check against the reference (all of them would only repeat the same check).
        for i in [0, 7, 23, 128, 255] {
            let (p, s) = &reqs[i];
            assert_same(&outs[i], &r.run(p, s), p.len(), &format!("{tag} long {i}"));
        }
        let st = e.stats();
        assert!(st.preemptions > 0, "{tag}: {st:?}");
        assert_eq!(st.pipelined_steps > 0, tag == "async", "{tag}: {st:?}");
        assert_eq!(e.num_free_blocks(), e.num_blocks(), "{tag}");
    }
}

#[test]
fn abort_frees_blocks_and_never_leaves_unwritten_blocks_in_the_prefix_cache() {
    let r = Reference::new();
    let mut e = engine(config(4, 64, 8, 8));
    let b = e.add_request(prompt(400, 5), greedy(50, true)).unwrap();
    let long = prompt(401, 40);
    let a = e.add_request(long.clone(), greedy(6, true)).unwrap();
    let c = e.add_request(prompt(402, 6), greedy(4, true)).unwrap();
    let mut outs: Vec<_> = Vec::new();
    for _ in 0..3 {
        outs.extend(e.step().unwrap());
    }
    // b decodes, a is mid-prefill (its later blocks hashed but unwritten), c waits for budget.
    assert!(outs.iter().any(|o| o.id == b));
    assert!(!outs.iter().any(|o| o.id == a || o.id == c));
    assert!(e.num_free_blocks() < e.num_blocks());
    assert!(e.abort(a) && e.abort(b));
    assert!(!e.abort(a), "aborted twice");
    assert_eq!(
        e.num_free_blocks(),
        e.num_blocks(),
        "abort frees the blocks"
    );
    let next = e.step().unwrap();
    for id in [a, b] {
        let o = next.iter().find(|o| o.id == id).expect("an abort output");
        assert_eq!(o.finish_reason, Some(FinishReason::Abort));
        assert!(o.new_token_ids.is_empty());
    }
    // The same long prompt again: it may hit a's written blocks only.
    let a2 = e.add_request(long.clone(), greedy(6, true)).unwrap();
    let mut done: Vec<Output> = vec![Output::new(a2), Output::new(c)];
    // c was admitted in the step that reported the aborts.
    next.iter()
        .filter(|o| o.id == c)
        .for_each(|o| done[1].push(o));
    while e.has_unfinished() {
        for o in e.step().unwrap() {
            if let Some(d) = done.iter_mut().find(|d| d.id == o.id) {
                d.push(&o);
            }
        }
    }
    assert_same(
        &done[0],
        &r.run(&long, &greedy(6, true)),
        40,
        "re-run of aborted prompt",
    );
    assert_same(
        &done[1],
        &r.run(&prompt(402, 6), &greedy(4, true)),
        6,
        "waiting one",
    );
    assert!(!e.abort(c), "finished requests cannot be aborted");
    assert_eq!(e.num_free_blocks(), e.num_blocks());
}

#[test]
fn aborting_a_request_whose_step_is_in_flight_drops_its_token() {
    let r = Reference::new();
    let mut e = engine_async(config(4, 64, 8, 64));
    let reqs: Vec<(Vec<u32>, SamplingParams)> = (0..3)
        .map(|i| (prompt(500 + i, 6 + i as usize), greedy(12, true)))
        .collect();
    let ids: Vec<_> = reqs
        .iter()
        .map(|(p, s)| e.add_request(p.clone(), s.clone()).unwrap())
        .collect();
    let mut done: Vec<Output> = ids.iter().map(|&id| Output::new(id)).collect();
    let push = |outs: Vec<kestrel::engine::request::RequestOutput>, done: &mut Vec<Output>| {
        for o in outs {
            let d = done.iter_mut().find(|d| d.id == o.id).expect("a known id");
            d.push(&o);
        }
    };
    // Prefill, then decode steps until one is pipelined: a step is in flight after it.
    while e.stats().pipelined_steps == 0 {
        push(e.step().unwrap(), &mut done);
    }
    let before = done[1].token_ids.len();
    assert!(e.abort(ids[1]));
    while e.has_unfinished() {
        push(e.step().unwrap(), &mut done);
    }
    assert_eq!(done[1].finish_reason, Some(FinishReason::Abort));
    assert_eq!(done[1].token_ids.len(), before, "no token after the abort");
    for i in [0, 2] {
        let (p, s) = &reqs[i];
        assert_same(
            &done[i],
            &r.run(p, s),
            p.len(),
            &format!("beside the abort {i}"),
        );
    }
    assert_eq!(e.num_free_blocks(), e.num_blocks());
}

#[test]
fn bad_requests_are_refused_with_their_cause() {
    let mut e = engine(config(4, 8, 4, 16));
    let err = |r: kestrel::Result<u64>| r.unwrap_err().to_string();
    assert!(err(e.add_request(Vec::<u32>::new(), greedy(4, true))).contains("prompt"));
    assert!(err(e.add_request(vec![600u32], greedy(4, true))).contains("vocabulary"));
    // 8 blocks of 4 hold 32 tokens: 30 + 8 - 1 do not fit.
    assert!(err(e.add_request(prompt(1, 30), greedy(8, true))).contains("KV blocks"));
    let bad = SamplingParams {
        temperature: -1.0,
        ..greedy(4, true)
    };
    assert!(err(e.add_request(prompt(1, 3), bad)).contains("temperature"));
    assert!(!e.has_unfinished());
}
