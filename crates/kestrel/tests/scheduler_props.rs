//! Property tests of the Scheduler: random workloads (shared prefixes, small block pools so
//! preemption happens, chunked prefill on and off) driven through `schedule → fake sampling →
//! postprocess` until every request finishes.
//!
//! After every `schedule` we assert: the step's tokens ≤ `max_num_batched_tokens`; running ≤
//! `max_num_seqs`; no sequence twice in a batch; the BlockManager's invariants over the running
//! sequences; each scheduled sequence's block table covers its `context_len`; the fed tokens are the
//! sequence's tokens at those positions and continue exactly where its last step stopped (a newly
//! admitted or re-admitted one starts at a block boundary: its prefix-cache hits).
//! FIFO (precisely): the order in which sequences are scheduled for the *first time* equals the order
//! they were added; re-admissions of preempted sequences are exempt (they go back to the queue front).
//! No starvation: `schedule` never returns `None` while work remains, and the loop ends within a bound
//! of steps. At the end every block is free and every request has exactly `max_tokens` completion
//! tokens, or fewer ending at its first eos.

mod common;

use common::Rng;
use std::collections::{HashMap, HashSet};

use kestrel::engine::scheduler::{ScheduledBatch, Scheduler, SchedulerConfig, SeqParams};
use kestrel::engine::sequence::Sequence;

const EOS: u32 = 999;

#[derive(Default, Debug)]
struct Coverage {
    preempted: usize,
    hits: usize,
    chunks: usize,
    eos: usize,
}

struct Req {
    tokens: Vec<u32>,
    params: SeqParams,
}

fn check_step(
    s: &Scheduler,
    cfg: &SchedulerConfig,
    batch: &ScheduledBatch,
    reqs: &HashMap<u64, Req>,
    ctx: &mut HashMap<u64, usize>,
    cov: &mut Coverage,
    tag: &str,
) {
    assert!(
        batch.num_tokens() <= cfg.max_num_batched_tokens,
        "{tag}: token budget"
    );
    let running: Vec<&Sequence> = s.running().collect();
    assert!(running.len() <= cfg.max_num_seqs, "{tag}: max_num_seqs");
    if let Err(e) = s.block_manager().check_invariants(&running) {
        panic!("{tag}: {e}");
    }
    let mut seen = HashSet::new();
    for b in &batch.seqs {
        assert!(
            seen.insert(b.seq_id),
            "{tag}: {} twice in a batch",
            b.seq_id
        );
        assert!(!b.token_ids.is_empty(), "{tag}: empty share");
        assert!(
            b.block_table.len() * cfg.block_size >= b.context_len,
            "{tag}: blocks cover context"
        );
        let req = &reqs[&b.seq_id];
        let start = b.context_len - b.token_ids.len();
        assert_eq!(
            &req.tokens[start..b.context_len],
            &b.token_ids[..],
            "{tag}: fed tokens"
        );
        assert_eq!(
            b.samples,
            b.context_len == req.tokens.len(),
            "{tag}: samples flag"
        );
        match ctx.get(&b.seq_id) {
            Some(&c) => assert_eq!(start, c, "{tag}: {} continues where it stopped", b.seq_id),
            None => {
                assert_eq!(start % cfg.block_size, 0, "{tag}: hit on a block boundary");
                cov.hits += usize::from(start > 0);
            }
        }
        cov.chunks += usize::from(!b.samples);
        ctx.insert(b.seq_id, b.context_len);
    }
}

/// Runs one workload to completion; returns the number of steps.
fn run(
    seed: u64,
    cfg: SchedulerConfig,
    reqs_in: Vec<(Vec<u32>, SeqParams)>,
    cov: &mut Coverage,
) -> usize {
    let mut rng = Rng(seed ^ 0xABCD);
    let mut s = Scheduler::new(cfg).unwrap();
    let mut reqs = HashMap::new();
    let mut total = 0;
    for (id, (prompt, params)) in reqs_in.into_iter().enumerate() {
        let id = id as u64;
        total += prompt.len() + params.max_tokens;
        s.add(Sequence::new(id, prompt.clone(), cfg.block_size), params)
            .unwrap();
        reqs.insert(
            id,
            Req {
                tokens: prompt,
                params,
            },
        );
    }
    let n = reqs.len() as u64;
    let mut started = 0u64;
    let mut ctx: HashMap<u64, usize> = HashMap::new();
    let mut finished = HashSet::new();
    let bound = 4 * total + 100;
    let mut steps = 0;
    while !s.is_finished() {
        steps += 1;
        let tag = format!("seed {seed:#x} step {steps}");
        assert!(steps <= bound, "{tag}: no completion within {bound} steps");
        let batch = s.schedule().unwrap_or_else(|| panic!("{tag}: stuck"));
        for id in &batch.preempted {
            cov.preempted += 1;
            assert!(
                ctx.remove(id).is_some(),
                "{tag}: preempted {id} was running"
            );
        }
        for b in &batch.seqs {
            if !ctx.contains_key(&b.seq_id) && b.seq_id >= started {
                assert_eq!(b.seq_id, started, "{tag}: first starts follow add order");
                started += 1;
            }
        }
        check_step(&s, &cfg, &batch, &reqs, &mut ctx, cov, &tag);
        let sampled: Vec<Option<u32>> = batch
            .seqs
            .iter()
            .map(|b| {
                b.samples.then(|| {
                    if rng.below(40) == 0 {
                        EOS
                    } else {
                        rng.below(8) as u32
                    }
                })
            })
            .collect();
        for (b, t) in batch.seqs.iter().zip(&sampled) {
            if let Some(t) = t {
                reqs.get_mut(&b.seq_id).unwrap().tokens.push(*t);
            }
        }
        for id in s.postprocess(&batch, &sampled) {
            ctx.remove(&id);
            let seq = s.take_finished(id).unwrap();
            let req = &reqs[&id];
            assert_eq!(seq.token_ids, req.tokens, "{tag}: {id} tokens");
            let out = seq.completion_token_ids();
            let eos_at = out.iter().position(|&t| Some(t) == req.params.eos);
            match eos_at {
                Some(p) => {
                    assert_eq!(p + 1, out.len(), "{tag}: {id} stops at its first eos");
                    assert!(out.len() <= req.params.max_tokens);
                    cov.eos += 1;
                }
                None => assert_eq!(out.len(), req.params.max_tokens, "{tag}: {id} length"),
            }
            assert!(finished.insert(id));
        }
    }
    assert_eq!(
        finished.len() as u64,
        n,
        "seed {seed:#x}: every request finished"
    );
    assert_eq!(started, n);
    let bm = s.block_manager();
    assert_eq!(
        bm.num_free_blocks(),
        bm.num_blocks(),
        "seed {seed:#x}: blocks leaked"
    );
    bm.check_invariants(&[]).unwrap();
    steps
}

fn random_workload(seed: u64, cov: &mut Coverage) {
    let mut rng = Rng(seed);
    let (cfg, reqs) = common::scheduler_workload::random_workload(&mut rng);
    let reqs = reqs
        .into_iter()
        .map(|r| {
            let eos = (rng.below(2) == 0).then_some(EOS);
            (
                r.prompt,
                SeqParams {
                    max_tokens: r.max_tokens,
                    eos,
                },
            )
        })
        .collect();
    run(seed, cfg, reqs, cov);
}

#[test]
fn random_workloads_finish_fairly() {
    let mut cov = Coverage::default();
    for seed in 0..150u64 {
        random_workload(seed.wrapping_mul(0x2545_F491_4F6C_DD1D), &mut cov);
    }
    eprintln!("{cov:?}");
    assert!(
        cov.preempted > 0 && cov.hits > 0 && cov.chunks > 0 && cov.eos > 0,
        "{cov:?}"
    );
}

#[test]
fn many_long_sequences_that_do_not_fit_all_finish() {
    let mut rng = Rng(256);
    for chunked in [true, false] {
        let cfg = SchedulerConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 512,
            block_size: 16,
            num_blocks: 64, // 1,024 tokens of KV for 256 sequences of up to 249
            chunked_prefill: chunked,
        };
        let reqs = (0..256)
            .map(|_| {
                let p = (0..rng.range(100, 200))
                    .map(|_| rng.below(10_000) as u32)
                    .collect();
                (
                    p,
                    SeqParams {
                        max_tokens: 50,
                        eos: None,
                    },
                )
            })
            .collect();
        let mut cov = Coverage::default();
        let steps = run(7, cfg, reqs, &mut cov);
        eprintln!("chunked {chunked}: {steps} steps, {cov:?}");
        assert!(cov.preempted > 0, "{cov:?}");
    }
}
