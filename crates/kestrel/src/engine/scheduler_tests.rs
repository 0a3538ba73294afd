use super::*;

fn cfg(budget: usize, chunked: bool) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: budget,
        block_size: 4,
        num_blocks: 16,
        chunked_prefill: chunked,
    }
}

const P: SeqParams = SeqParams {
    max_tokens: 2,
    eos: None,
};

#[test]
fn chunked_prefill_splits_a_long_prompt() {
    let mut s = Scheduler::new(cfg(8, true)).unwrap();
    s.add(Sequence::new(1, (0..20).collect(), 4), P).unwrap();
    let mut lens = Vec::new();
    while let Some(b) = s.schedule() {
        lens.push((b.seqs[0].token_ids.len(), b.seqs[0].context_len));
        let sampled: Vec<_> = b.seqs.iter().map(|x| x.samples.then_some(7)).collect();
        s.postprocess(&b, &sampled);
    }
    assert_eq!(lens, [(8, 8), (8, 16), (4, 20), (1, 21)]);
    let seq = s.take_finished(1).unwrap();
    assert_eq!(seq.completion_token_ids(), &[7, 7]);
    assert_eq!(s.block_manager().num_free_blocks(), 16);
}

#[test]
fn no_hit_on_a_block_prefilled_in_the_same_step() {
    let mut s = Scheduler::new(cfg(64, true)).unwrap();
    s.add(Sequence::new(1, (0..8).collect(), 4), P).unwrap();
    s.add(Sequence::new(2, (0..8).collect(), 4), P).unwrap();
    let b = s.schedule().unwrap();
    // The twin is admitted at once (it does not wait for the owner) but misses: its blocks are its
    // own and it computes all 8 tokens.
    assert_eq!(b.seqs.len(), 2, "the twin is admitted in the same step");
    assert_eq!((b.seqs[1].token_ids.len(), b.seqs[1].context_len), (8, 8));
    assert!(b.seqs[1]
        .block_table
        .iter()
        .all(|x| !b.seqs[0].block_table.contains(x)));
    s.postprocess(&b, &[Some(9), Some(9)]);
    // Once computed, the blocks are hits: a third copy shares the first block, and its all-hit
    // last block is recomputed.
    s.add(Sequence::new(3, (0..8).collect(), 4), P).unwrap();
    let b = s.schedule().unwrap();
    let first = b.seqs.iter().find(|x| x.seq_id == 1).unwrap();
    let third = b.seqs.iter().find(|x| x.seq_id == 3).unwrap();
    assert_eq!((third.token_ids.len(), third.context_len), (4, 8));
    assert_eq!(third.block_table[0], first.block_table[0]);
}

#[test]
fn refuses_what_can_never_finish() {
    let mut s = Scheduler::new(cfg(8, false)).unwrap();
    let long = SeqParams {
        max_tokens: 1,
        eos: None,
    };
    assert!(matches!(
        s.add(Sequence::new(1, vec![1; 9], 4), long),
        Err(SchedulerError::TooLong { .. })
    ));
    assert!(s.add(Sequence::new(2, vec![1; 8], 4), long).is_ok());
    assert_eq!(
        s.add(Sequence::new(2, vec![1; 8], 4), long),
        Err(SchedulerError::Duplicate(2))
    );
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let mut c = cfg(8, true);
    c.max_num_seqs = 0;
    assert!(Scheduler::new(c).is_err());
    let mut c = cfg(8, true);
    c.max_num_batched_tokens = c.max_num_seqs - 1;
    assert!(Scheduler::new(c).is_err());
    let mut c = cfg(8, true);
    c.block_size = 0;
    assert!(Scheduler::new(c).is_err());
}
