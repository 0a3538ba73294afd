//! Property tests of the Scheduler under asynchronous scheduling, driven as the engine drives it:
//! a pure-decode step may be applied with pending tokens (`PENDING_TOKEN`) and its real tokens set
//! one step later, after the next step is planned; a sampled stop token then ends its request a step
//! late (the engine aborts it), and the step planned meanwhile drops it. Random workloads (shared
//! prefixes, small block pools so preemption happens, chunked prefill on and off).
//!
//! After every `schedule`: the BlockManager's invariants over the running sequences (a full block
//! holding a pending token has no hash; every other full block has its tokens' chained hash); fed
//! tokens are the request's tokens, or pending exactly where a token is not read yet. At the end every
//! request finished with `max_tokens` tokens or at its first stop token, every block is free, and the
//! prefix cache holds no hash of a pending token.

mod common;

use common::Rng;
use std::collections::{HashMap, HashSet};

use kestrel::engine::scheduler::{ScheduledBatch, Scheduler, SchedulerConfig, SeqParams};
use kestrel::engine::sequence::{Sequence, PENDING_TOKEN};

const STOP: u32 = 999;

/// A step applied with pending tokens: (sequence, position, the real token), and the sequences the
/// scheduler finished at it (max_tokens).
struct Launched {
    tokens: Vec<(u64, usize, u32)>,
    done: HashSet<u64>,
}

struct World {
    s: Scheduler,
    /// Each request's tokens as read so far (prompt, then real sampled tokens).
    tokens: HashMap<u64, Vec<u32>>,
    max_tokens: HashMap<u64, usize>,
    prompt_len: HashMap<u64, usize>,
    finished: HashSet<u64>,
    pipelined: usize,
    stops: usize,
    /// Sequences preempted while a token of theirs was pending.
    preempted_pending: usize,
}

impl World {
    /// A sampled token arrives for `id`: recorded, and the request ends at a stop (the scheduler's
    /// own finish, `done`, is taken here too).
    fn arrive(&mut self, id: u64, tok: u32, done: bool, tag: &str) {
        if self.finished.contains(&id) {
            return; // ended a step earlier; this token was planned before that was known
        }
        self.tokens.get_mut(&id).unwrap().push(tok);
        if done {
            let seq = self.s.take_finished(id).expect("a finished sequence");
            assert_eq!(seq.token_ids, self.tokens[&id], "{tag}: {id} tokens");
            self.finish(id, tag);
        } else if tok == STOP {
            assert!(self.s.abort(id), "{tag}: {id} aborted at its stop");
            self.stops += 1;
            self.finish(id, tag);
        }
    }

    fn finish(&mut self, id: u64, tag: &str) {
        let out = &self.tokens[&id][self.prompt_len[&id]..];
        match out.iter().position(|&t| t == STOP) {
            Some(p) => assert_eq!(p + 1, out.len(), "{tag}: {id} ends at its first stop"),
            None => assert_eq!(out.len(), self.max_tokens[&id], "{tag}: {id} length"),
        }
        assert!(self.finished.insert(id), "{tag}: {id} finished twice");
    }

    fn collect(&mut self, l: Launched, tag: &str) {
        for (id, pos, tok) in l.tokens {
            // Still known to the scheduler unless the request ended meanwhile.
            let known = self.s.set_tokens(&[(id, pos, tok)]);
            assert_eq!(
                known,
                [!self.finished.contains(&id)],
                "{tag}: set_tokens {id}"
            );
            self.arrive(id, tok, l.done.contains(&id), tag);
        }
    }

    fn check(&self, cfg: &SchedulerConfig, batch: &ScheduledBatch, tag: &str) {
        assert!(
            batch.num_tokens() <= cfg.max_num_batched_tokens,
            "{tag}: budget"
        );
        let running: Vec<&Sequence> = self.s.running().collect();
        if let Err(e) = self.s.block_manager().check_invariants(&running) {
            panic!("{tag}: {e}");
        }
        for b in &batch.seqs {
            let known = &self.tokens[&b.seq_id];
            let start = b.context_len - b.token_ids.len();
            for (k, &t) in b.token_ids.iter().enumerate() {
                match known.get(start + k) {
                    Some(&want) => assert_eq!(t, want, "{tag}: {} fed token", b.seq_id),
                    None => assert_eq!(t, PENDING_TOKEN, "{tag}: {} unread token", b.seq_id),
                }
            }
        }
    }
}

/// Runs one workload; returns (steps pipelined, requests ended by a stop, preemptions of a
/// sequence with a pending token).
fn run(seed: u64, cfg: SchedulerConfig, reqs: Vec<(Vec<u32>, usize)>) -> (usize, usize, usize) {
    let mut rng = Rng(seed ^ 0x5EED);
    let mut w = World {
        s: Scheduler::new(cfg).unwrap(),
        tokens: HashMap::new(),
        max_tokens: HashMap::new(),
        prompt_len: HashMap::new(),
        finished: HashSet::new(),
        pipelined: 0,
        stops: 0,
        preempted_pending: 0,
    };
    let n = reqs.len();
    let mut total = 0;
    for (id, (prompt, max_tokens)) in reqs.into_iter().enumerate() {
        let id = id as u64;
        total += prompt.len() + max_tokens;
        let params = SeqParams {
            max_tokens,
            eos: None,
        };
        w.s.add(Sequence::new(id, prompt.clone(), cfg.block_size), params)
            .unwrap();
        w.prompt_len.insert(id, prompt.len());
        w.tokens.insert(id, prompt);
        w.max_tokens.insert(id, max_tokens);
    }
    let sample = |rng: &mut Rng| {
        if rng.below(40) == 0 {
            STOP
        } else {
            rng.below(8) as u32
        }
    };
    let mut inflight: Option<Launched> = None;
    let bound = 4 * total + 100;
    let mut steps = 0;
    while !w.s.is_finished() || inflight.is_some() {
        steps += 1;
        let tag = format!("seed {seed:#x} step {steps}");
        assert!(steps <= bound, "{tag}: no completion within {bound} steps");
        let batch = if w.s.is_finished() {
            None
        } else {
            w.s.schedule()
        };
        let prev = inflight.take();
        if let (Some(b), Some(p)) = (&batch, &prev) {
            w.preempted_pending += b
                .preempted
                .iter()
                .filter(|id| p.tokens.iter().any(|t| t.0 == **id))
                .count();
        }
        let Some(mut batch) = batch else {
            let prev = prev.unwrap_or_else(|| panic!("{tag}: stuck"));
            w.collect(prev, &tag);
            continue;
        };
        w.check(&cfg, &batch, &tag);
        let pure_decode = batch
            .seqs
            .iter()
            .all(|b| b.samples && b.token_ids.len() == 1);
        if pure_decode && rng.below(4) > 0 {
            // Launch with pending tokens, then read the previous step.
            let sampled = vec![Some(PENDING_TOKEN); batch.seqs.len()];
            let done = w.s.postprocess(&batch, &sampled).into_iter().collect();
            let tokens = batch
                .seqs
                .iter()
                .map(|b| (b.seq_id, b.context_len, sample(&mut rng)))
                .collect();
            if let Some(prev) = prev {
                w.pipelined += 1;
                w.collect(prev, &tag);
            }
            inflight = Some(Launched { tokens, done });
            continue;
        }
        // Runs now: read the previous step first; requests it ended leave this one.
        if let Some(prev) = prev {
            w.collect(prev, &tag);
            batch.seqs.retain(|b| !w.finished.contains(&b.seq_id));
        }
        let sampled: Vec<Option<u32>> = batch
            .seqs
            .iter()
            .map(|b| b.samples.then(|| sample(&mut rng)))
            .collect();
        let done: HashSet<u64> = w.s.postprocess(&batch, &sampled).into_iter().collect();
        for (b, t) in batch.seqs.iter().zip(&sampled) {
            if let Some(t) = *t {
                w.arrive(b.seq_id, t, done.contains(&b.seq_id), &tag);
            }
        }
    }
    assert_eq!(
        w.finished.len(),
        n,
        "seed {seed:#x}: every request finished"
    );
    let bm = w.s.block_manager();
    assert_eq!(
        bm.num_free_blocks(),
        bm.num_blocks(),
        "seed {seed:#x}: blocks leaked"
    );
    bm.check_invariants(&[]).unwrap();
    (w.pipelined, w.stops, w.preempted_pending)
}

#[test]
fn pipelined_workloads_finish_with_consistent_blocks() {
    let (mut pipelined, mut stops, mut preempted) = (0, 0, 0);
    for seed in 0..150u64 {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let (cfg, reqs) = common::scheduler_workload::random_workload(&mut rng);
        let reqs = reqs.into_iter().map(|r| (r.prompt, r.max_tokens)).collect();
        let (p, s, e) = run(seed, cfg, reqs);
        pipelined += p;
        stops += s;
        preempted += e;
    }
    eprintln!("pipelined {pipelined}, stops {stops}, preempted while pending {preempted}");
    assert!(
        pipelined > 100 && stops > 10 && preempted > 0,
        "pipelined {pipelined}, stops {stops}, preempted while pending {preempted}"
    );
}
