//! Log-probabilities the engine reports (the `logprobs` option) against the model's own logits:
//! the same sequences fed token by token through `SingleSequence`, log-softmax in f64 here. Greedy
//! and sampled requests, in a batch with requests that don't ask, with chunked prefill.

mod common;

use common::engine_ref::{config, engine, load, prompt};
use kestrel::engine::generate::SingleSequence;
use kestrel::engine::request::Prompt;
use kestrel::engine::sampling::SamplingParams;

/// The log-softmax of `row` (f64) and its ids sorted by value, largest first (ties: lower id).
fn reference(row: &[f32]) -> (Vec<f64>, Vec<u32>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let lp: Vec<f64> = row.iter().map(|&x| x as f64 - lse).collect();
    let mut ids: Vec<u32> = (0..row.len() as u32).collect();
    ids.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
    (lp, ids)
}

#[test]
fn reported_logprobs_are_the_models() {
    let with = |temperature: f32, seed: u64, top: Option<usize>| SamplingParams {
        temperature,
        seed: Some(seed),
        max_tokens: 10,
        ignore_eos: true,
        logprobs: top,
        ..Default::default()
    };
    let reqs = [
        (prompt(900, 37), with(0.0, 1, Some(5))),
        (prompt(901, 12), with(0.8, 2, Some(0))),
        (prompt(902, 20), with(0.0, 3, None)),
        (prompt(903, 70), with(1.0, 4, Some(20))),
    ];
    let mut e = engine(config(8, 128, 4, 24));
    let outs = e
        .generate(
            reqs.iter()
                .map(|(p, s)| (Prompt::Tokens(p.clone()), s.clone())),
        )
        .unwrap();
    let (backend, loaded) = load();
    let model = &loaded.model;
    for ((p, params), out) in reqs.iter().zip(&outs) {
        let Some(top) = params.logprobs else {
            assert!(out.logprobs.is_empty(), "logprobs nobody asked for");
            continue;
        };
        assert_eq!(out.logprobs.len(), out.token_ids.len());
        let mut seq = SingleSequence::new(&backend, model, 256).unwrap();
        let mut row = seq.feed(&backend, model, p, false).unwrap().pop().unwrap();
        for (lp, &t) in out.logprobs.iter().zip(&out.token_ids) {
            let (want, order) = reference(&row);
            assert_eq!(lp.token, t);
            assert!(
                (lp.logprob as f64 - want[t as usize]).abs() < 1e-4,
                "token {t}: {} vs {}",
                lp.logprob,
                want[t as usize]
            );
            assert_eq!(lp.top.len(), top);
            for (k, &(id, v)) in lp.top.iter().enumerate() {
                assert!((v as f64 - want[id as usize]).abs() < 1e-4);
                // the k-th largest (ids of equal value may swap)
                assert!(
                    (want[id as usize] - want[order[k] as usize]).abs() < 1e-6,
                    "top {k}"
                );
            }
            if params.temperature == 0.0 {
                assert!(
                    lp.top.is_empty() || lp.top[0].0 == t,
                    "greedy picks the top token"
                );
            }
            row = seq
                .feed(&backend, model, &[t], false)
                .unwrap()
                .pop()
                .unwrap();
        }
    }
}
