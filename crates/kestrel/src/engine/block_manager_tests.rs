//! Unit tests of the BlockManager's basic cases (the property tests are in tests/block_manager_props.rs).

use super::*;

fn seq(id: u64, tokens: &[u32]) -> Sequence {
    Sequence::new(id, tokens.to_vec(), 4)
}

#[test]
fn shared_prefix_shares_blocks() {
    let mut m = BlockManager::new(10, 4);
    let mut a = seq(0, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let mut b = seq(1, &[1, 2, 3, 4, 5, 6, 7, 8, 10, 11]);
    m.allocate(&mut a).unwrap();
    m.allocate(&mut b).unwrap();
    assert_eq!(b.num_cached_tokens, 8);
    assert_eq!(a.block_table[..2], b.block_table[..2]);
    assert_ne!(a.block_table[2], b.block_table[2]);
    assert_eq!((m.ref_count(a.block_table[0]), m.num_free_blocks()), (2, 6));
    m.check_invariants(&[&a, &b]).unwrap();
    m.deallocate(&mut a);
    m.deallocate(&mut b);
    assert_eq!(m.num_free_blocks(), 10);
    m.check_invariants(&[]).unwrap();
}

#[test]
fn finished_prompt_is_reused_and_full_hit_recomputes_last_block() {
    let mut m = BlockManager::new(4, 4);
    let mut a = seq(0, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    m.allocate(&mut a).unwrap();
    let table = a.block_table.clone();
    m.deallocate(&mut a);
    let mut b = seq(1, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(m.num_blocks_to_allocate(&b), 3);
    m.allocate(&mut b).unwrap();
    assert_eq!((b.num_cached_tokens, &b.block_table[..2]), (8, &table[..2]));
    // Block-aligned and entirely cached: the last block is computed again.
    let mut c = seq(2, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(m.num_blocks_to_allocate(&c), 1);
    m.allocate(&mut c).unwrap();
    assert_eq!(c.num_cached_tokens, 4);
    assert_eq!(c.block_table[0], table[0]);
    assert_ne!(c.block_table[1], table[1]);
    m.check_invariants(&[&b, &c]).unwrap();
}

#[test]
fn least_recently_freed_cached_block_is_evicted_first() {
    let mut m = BlockManager::new(3, 4);
    let mut a = seq(0, &[1, 1, 1, 1]);
    let mut b = seq(1, &[2, 2, 2, 2]);
    m.allocate(&mut a).unwrap();
    m.allocate(&mut b).unwrap();
    m.deallocate(&mut a); // freed first: evicted first
    m.deallocate(&mut b);
    let mut c = seq(2, &[3, 3, 3, 3, 3, 3, 3, 3]); // takes the uncached block, then a's
    m.allocate(&mut c).unwrap();
    m.check_invariants(&[&c]).unwrap();
    let mut a2 = seq(3, &[1, 1, 1, 1, 9]);
    let mut b2 = seq(4, &[2, 2, 2, 2, 9]);
    assert_eq!(m.num_blocks_to_allocate(&b2), 2);
    assert!(!m.can_allocate(&b2));
    m.deallocate(&mut c);
    m.allocate(&mut b2).unwrap();
    assert_eq!(b2.num_cached_tokens, 4);
    m.allocate(&mut a2).unwrap_err();
    assert_eq!(a2.num_cached_tokens, 0);
    m.check_invariants(&[&b2]).unwrap();
}

#[test]
fn partial_block_is_never_cached_and_append_hashes_full_blocks() {
    let mut m = BlockManager::new(4, 4);
    let mut a = seq(0, &[1, 2, 3]);
    m.allocate(&mut a).unwrap();
    let mut b = seq(1, &[1, 2, 3, 7]);
    m.allocate(&mut b).unwrap();
    assert_eq!(b.num_cached_tokens, 0);
    a.append_token(4);
    m.may_append(&mut a).unwrap(); // a's first block is now full and hashed
    a.append_token(5);
    assert!(m.can_append(&a));
    m.may_append(&mut a).unwrap();
    assert_eq!((a.block_table.len(), m.num_free_blocks()), (2, 1));
    m.check_invariants(&[&a, &b]).unwrap();
    let mut c = seq(2, &[1, 2, 3, 4, 8]);
    m.allocate(&mut c).unwrap();
    assert_eq!(
        (c.num_cached_tokens, c.block_table[0]),
        (4, a.block_table[0])
    );
    m.check_invariants(&[&a, &b, &c]).unwrap();
    for t in [6, 7, 8] {
        a.append_token(t);
        m.may_append(&mut a).unwrap();
    }
    a.append_token(9);
    assert_eq!(m.num_free_blocks(), 0);
    m.may_append(&mut a).unwrap_err();
    assert!(!m.can_append(&a));
}

#[test]
fn a_block_filled_by_a_pending_token_is_hashed_when_the_token_arrives() {
    let mut m = BlockManager::new(6, 4);
    let mut a = seq(0, &[1, 2, 3, 4, 5, 6, 7]);
    m.allocate(&mut a).unwrap();
    // A launched step's token, not read back yet, fills the second block.
    a.append_token(crate::engine::sequence::PENDING_TOKEN);
    m.may_append(&mut a).unwrap();
    assert!(!a.block_is_final(1));
    m.check_invariants(&[&a]).unwrap();
    // No prefix hit can reach the block while its token is pending.
    let probe = seq(1, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(m.num_blocks_to_allocate(&probe), 2);
    // The real token arrives: the block is hashed, and a prompt with that prefix hits it.
    *a.token_ids.last_mut().unwrap() = 8;
    m.hash_full_block(&a, 1);
    m.check_invariants(&[&a]).unwrap();
    let mut b = seq(1, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(m.num_blocks_to_allocate(&b), 1);
    m.allocate(&mut b).unwrap();
    assert_eq!(
        (b.num_cached_tokens, &b.block_table[..2]),
        (8, &a.block_table[..2])
    );
    m.check_invariants(&[&a, &b]).unwrap();
}
