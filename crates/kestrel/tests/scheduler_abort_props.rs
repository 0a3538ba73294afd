//! Property test of the Scheduler with aborts at random points (waiting, mid-prefill, decoding,
//! just finished), over shared prefixes and a small block pool.
//!
//! A model of the KV cache records, for every slot, which (token, position) a step wrote there.
//! Before every step we assert each scheduled sequence's earlier positions are in its blocks as
//! written for exactly its tokens: a prefix-cache hit, a re-admission after preemption or a
//! continuation never reads a slot nobody wrote, or one written for another token (an abort that
//! freed its unwritten blocks with their hashes would fail this). At the end no block is leaked.

mod common;

use std::collections::{HashMap, HashSet};

use common::Rng;
use kestrel::engine::scheduler::{Scheduler, SchedulerConfig, SeqParams};
use kestrel::engine::sequence::Sequence;

fn workload(seed: u64) -> (usize, usize, usize) {
    let mut rng = Rng(seed);
    let bs = [1, 2, 4, 8][rng.below(4)];
    let mut slots: HashMap<(u32, usize), (u32, usize)> = HashMap::new();
    let cfg = SchedulerConfig {
        max_num_seqs: rng.range(1, 12),
        max_num_batched_tokens: rng.range(12, 64),
        block_size: bs,
        num_blocks: 80usize.div_ceil(bs) + rng.below(60 / bs + 1),
        chunked_prefill: true,
    };
    let mut s = Scheduler::new(cfg).unwrap();
    let bases: Vec<Vec<u32>> = (0..2)
        .map(|_| (0..40).map(|_| rng.below(5) as u32).collect())
        .collect();
    let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
    let n = rng.range(4, 24) as u64;
    for id in 0..n {
        let len = rng.range(1, 50);
        let mut p: Vec<u32> = bases[rng.below(2)].iter().copied().take(len).collect();
        while p.len() < len {
            p.push(rng.below(5) as u32);
        }
        let params = SeqParams {
            max_tokens: rng.range(1, 30),
            eos: None,
        };
        s.add(Sequence::new(id, p.clone(), bs), params).unwrap();
        tokens.insert(id, p);
    }
    let (mut aborted, mut hits, mut done) = (0, 0, HashSet::new());
    let mut steps = 0;
    while !s.is_finished() {
        steps += 1;
        assert!(steps < 20_000, "seed {seed:#x}: no progress");
        // Abort a random live request now and then, wherever it is.
        if rng.below(6) == 0 {
            let live: Vec<u64> = (0..n)
                .filter(|id| !done.contains(id) && tokens.contains_key(id))
                .collect();
            if !live.is_empty() {
                let id = live[rng.below(live.len())];
                assert!(s.abort(id), "seed {seed:#x}: abort {id}");
                assert!(!s.abort(id));
                tokens.remove(&id);
                aborted += 1;
                if s.is_finished() {
                    break;
                }
            }
        }
        let batch = s
            .schedule()
            .unwrap_or_else(|| panic!("seed {seed:#x}: stuck"));
        let running: Vec<&Sequence> = s.running().collect();
        s.block_manager().check_invariants(&running).unwrap();
        for b in &batch.seqs {
            let toks = &tokens[&b.seq_id];
            let start = b.context_len - b.token_ids.len();
            if start > 0 && s.num_computed_tokens(b.seq_id) == Some(start) {
                hits += 1;
            }
            for (pos, &want) in toks.iter().enumerate().take(start) {
                let slot = (b.block_table[pos / bs], pos % bs);
                assert_eq!(
                    slots.get(&slot),
                    Some(&(want, pos)),
                    "seed {seed:#x} step {steps}: sequence {} reads position {pos} from slot \
                     {slot:?}, which holds other KV",
                    b.seq_id
                );
            }
        }
        // The step writes its tokens' KV.
        for b in &batch.seqs {
            let start = b.context_len - b.token_ids.len();
            for (i, &t) in b.token_ids.iter().enumerate() {
                let pos = start + i;
                slots.insert((b.block_table[pos / bs], pos % bs), (t, pos));
            }
        }
        let sampled: Vec<Option<u32>> = batch
            .seqs
            .iter()
            .map(|b| b.samples.then(|| rng.below(5) as u32))
            .collect();
        for (b, t) in batch.seqs.iter().zip(&sampled) {
            if let Some(t) = t {
                tokens.get_mut(&b.seq_id).unwrap().push(*t);
            }
        }
        for id in s.postprocess(&batch, &sampled) {
            let seq = s.take_finished(id).unwrap();
            assert_eq!(seq.token_ids, tokens[&id]);
            done.insert(id);
        }
    }
    let bm = s.block_manager();
    assert_eq!(
        bm.num_free_blocks(),
        bm.num_blocks(),
        "seed {seed:#x}: leak"
    );
    bm.check_invariants(&[]).unwrap();
    assert_eq!(done.len() + aborted, n as usize, "seed {seed:#x}");
    (aborted, hits, steps)
}

#[test]
fn aborts_anywhere_leak_nothing_and_never_expose_unwritten_kv() {
    let (mut aborted, mut hits) = (0, 0);
    for seed in 0..300u64 {
        let (a, h, _) = workload(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
        aborted += a;
        hits += h;
    }
    eprintln!("aborted {aborted}, scheduled with computed prefixes {hits}");
    assert!(
        aborted > 100 && hits > 100,
        "coverage: {aborted} aborts, {hits}"
    );
}
