//! Property tests of the BlockManager over random workloads: sequences with shared prefixes from a
//! tiny vocabulary, interleaved allocate / append / finish / preempt. After every step the manager's
//! invariants hold and capacity is respected; at the end every block is free again.

mod common;

use common::Rng;
use std::collections::HashSet;

use kestrel::engine::block_manager::BlockManager;
use kestrel::engine::sequence::{Sequence, SequenceStatus};

fn check(m: &BlockManager, running: &[Sequence], ctx: &str) {
    let live: Vec<&Sequence> = running.iter().collect();
    if let Err(e) = m.check_invariants(&live) {
        panic!("{ctx}: {e}");
    }
    let used: HashSet<u32> = running
        .iter()
        .flat_map(|s| s.block_table.iter().copied())
        .collect();
    assert!(
        m.num_free_blocks() <= m.num_blocks(),
        "{ctx}: free past capacity"
    );
    assert_eq!(
        used.len(),
        m.num_blocks() - m.num_free_blocks(),
        "{ctx}: used blocks"
    );
}

/// Counts of what a workload exercised, so the test fails if the workloads stop covering a path.
#[derive(Default)]
struct Coverage {
    hits: usize,
    revived: usize,
    refused: usize,
    preempted: usize,
}

fn run_workload(seed: u64, ops: usize, cov: &mut Coverage) {
    let mut rng = Rng(seed);
    let block_size = [1, 2, 3, 4, 8][rng.below(5)];
    let num_blocks = 1 + rng.below(40);
    let vocab = 2 + rng.below(3) as u32;
    let bases: Vec<Vec<u32>> = (0..3)
        .map(|_| {
            (0..6 * block_size)
                .map(|_| rng.below(vocab as usize) as u32)
                .collect()
        })
        .collect();
    let mut m = BlockManager::new(num_blocks, block_size);
    let mut waiting: Vec<Sequence> = Vec::new();
    let mut running: Vec<Sequence> = Vec::new();
    let mut next_id = 0;
    for step in 0..ops {
        let ctx = format!("seed {seed} step {step} (block_size {block_size}, {num_blocks} blocks)");
        match rng.below(10) {
            0 | 1 => {
                let base = &bases[rng.below(bases.len())];
                let mut prompt = base[..rng.below(base.len() + 1)].to_vec();
                for _ in 0..rng.below(2 * block_size) {
                    prompt.push(rng.below(vocab as usize) as u32);
                }
                if prompt.is_empty() {
                    prompt.push(0);
                }
                waiting.push(Sequence::new(next_id, prompt, block_size));
                next_id += 1;
            }
            2..=4 if !waiting.is_empty() => {
                let mut seq = waiting.remove(rng.below(waiting.len()));
                let free = m.num_free_blocks();
                let needed = m.num_blocks_to_allocate(&seq);
                let can = m.can_allocate(&seq);
                assert!(needed <= seq.num_blocks(), "{ctx}");
                assert_eq!(can, needed <= free, "{ctx}: can_allocate");
                if !can {
                    assert!(
                        free < seq.num_blocks(),
                        "{ctx}: refused with room for every block"
                    );
                }
                match m.allocate(&mut seq) {
                    Ok(()) => {
                        cov.hits += usize::from(seq.num_cached_tokens > 0);
                        // A hit block held only by this sequence was free and cached: revived.
                        let hit_blocks = &seq.block_table[..seq.num_cached_tokens / block_size];
                        cov.revived += usize::from(hit_blocks.iter().any(|&b| m.ref_count(b) == 1));
                        assert!(can, "{ctx}: allocated after can_allocate said no");
                        assert_eq!(m.num_free_blocks(), free - needed, "{ctx}: blocks taken");
                        assert!(
                            seq.num_cached_tokens < seq.len(),
                            "{ctx}: nothing to compute"
                        );
                        seq.status = SequenceStatus::Running;
                        running.push(seq);
                    }
                    Err(e) => {
                        cov.refused += 1;
                        assert!(!can, "{ctx}: allocate failed after can_allocate: {e}");
                        assert!(seq.block_table.is_empty() && seq.num_cached_tokens == 0);
                        assert_eq!(
                            m.num_free_blocks(),
                            free,
                            "{ctx}: failed allocate changed state"
                        );
                        waiting.push(seq);
                    }
                }
            }
            5..=7 if !running.is_empty() => {
                let i = rng.below(running.len());
                let seq = &mut running[i];
                seq.append_token(rng.below(vocab as usize) as u32);
                if m.can_append(seq) {
                    m.may_append(seq)
                        .unwrap_or_else(|e| panic!("{ctx}: may_append: {e}"));
                } else {
                    assert!(
                        m.may_append(seq).is_err(),
                        "{ctx}: may_append past can_append"
                    );
                    seq.token_ids.pop();
                    cov.preempted += 1;
                    // Preempt by recompute: the sequence keeps its tokens and waits again.
                    let mut seq = running.remove(i);
                    m.deallocate(&mut seq);
                    seq.status = SequenceStatus::Waiting;
                    waiting.push(seq);
                }
            }
            8 if !running.is_empty() => {
                let mut seq = running.remove(rng.below(running.len()));
                m.deallocate(&mut seq);
                seq.status = SequenceStatus::Finished;
                assert!(seq.block_table.is_empty() && seq.num_cached_tokens == 0);
            }
            9 if !running.is_empty() => {
                let mut seq = running.remove(rng.below(running.len()));
                m.deallocate(&mut seq);
                seq.status = SequenceStatus::Waiting;
                waiting.push(seq);
            }
            _ => {}
        }
        check(&m, &running, &ctx);
    }
    for mut seq in running.drain(..) {
        m.deallocate(&mut seq);
    }
    check(&m, &running, &format!("seed {seed} end"));
    assert_eq!(
        m.num_free_blocks(),
        num_blocks,
        "seed {seed}: leaked blocks"
    );
    assert!(
        (0..num_blocks as u32).all(|b| m.ref_count(b) == 0),
        "seed {seed}"
    );
}

#[test]
fn random_workloads_keep_invariants_and_leak_nothing() {
    let mut cov = Coverage::default();
    for seed in 0..500 {
        run_workload(seed, 200, &mut cov);
    }
    let Coverage {
        hits,
        revived,
        refused,
        preempted,
    } = cov;
    eprintln!("prefix hits {hits}, revived {revived}, refused {refused}, preempted {preempted}");
    assert!(hits > 1000 && revived > 100 && refused > 1000 && preempted > 100);
}

/// Identical prompts hit the cache whenever a copy is live: every full block but the last is shared.
#[test]
fn identical_live_prompts_share_all_but_the_last_block() {
    let mut rng = Rng(42);
    for _ in 0..200 {
        let block_size = 1 + rng.below(8);
        let len = 1 + rng.below(8 * block_size);
        let prompt: Vec<u32> = (0..len).map(|_| rng.below(3) as u32).collect();
        let mut m = BlockManager::new(64, block_size);
        let mut a = Sequence::new(0, prompt.clone(), block_size);
        let mut b = Sequence::new(1, prompt, block_size);
        m.allocate(&mut a).unwrap();
        m.allocate(&mut b).unwrap();
        let full = len / block_size;
        let hit = if len.is_multiple_of(block_size) {
            full - 1
        } else {
            full
        };
        assert_eq!(b.num_cached_tokens, hit * block_size);
        assert_eq!(a.block_table[..hit], b.block_table[..hit]);
        m.check_invariants(&[&a, &b]).unwrap();
    }
}
