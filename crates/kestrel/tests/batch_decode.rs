//! Batched greedy decoding over one shared cache gives each sequence the same tokens as running it
//! alone through `SingleSequence`.

use std::path::PathBuf;

use kestrel::backend::cpu::CpuBackend;
use kestrel::engine::batch::SequenceBatch;
use kestrel::engine::generate::SingleSequence;
use kestrel::formats::source::ModelSource;
use kestrel::model::Qwen3Model;

fn load() -> (CpuBackend, Qwen3Model<CpuBackend>) {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/tiny-qwen3"
    ));
    let backend = CpuBackend::new();
    let src = ModelSource::open(dir.to_str().unwrap()).unwrap();
    let cfg = src.config().unwrap();
    let model = Qwen3Model::load(&backend, &cfg, &src).unwrap();
    (backend, model)
}

fn prompt(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| (((seed * 1_000_003 + i).wrapping_mul(2654435761) >> 7) % vocab as u64) as u32)
        .collect()
}

/// Greedy tokens of `prompt` alone: the prefill's argmax, then `steps` decode steps.
fn alone(
    backend: &CpuBackend,
    model: &Qwen3Model<CpuBackend>,
    p: &[u32],
    steps: usize,
) -> Vec<u32> {
    let mut seq = SingleSequence::new(backend, model, p.len() + steps).unwrap();
    let mut out = vec![seq.feed_argmax(backend, model, p).unwrap()];
    for _ in 0..steps {
        let t = *out.last().unwrap();
        out.push(seq.feed_argmax(backend, model, &[t]).unwrap());
    }
    out
}

#[test]
fn batched_decode_matches_each_sequence_alone() {
    let (backend, model) = load();
    let vocab = model.config.vocab_size;
    let steps = 6;
    // Different lengths; one crosses a 16-token block boundary; small forward budget so prompts are
    // packed several per forward and one is split across forwards.
    let prompts: Vec<Vec<u32>> = [5usize, 19, 11]
        .iter()
        .enumerate()
        .map(|(s, &len)| prompt(s as u64, len, vocab))
        .collect();
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| alone(&backend, &model, p, steps))
        .collect();

    for budget in [8, 64] {
        let caps: Vec<usize> = prompts.iter().map(|p| p.len() + steps).collect();
        let mut batch = SequenceBatch::new(&backend, &model, &caps).unwrap();
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let mut next = batch.prefill(&refs, budget).unwrap();
        let mut got: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        for _ in 0..steps {
            next = batch.decode_argmax(&next).unwrap();
            for (g, &t) in got.iter_mut().zip(&next) {
                g.push(t);
            }
        }
        assert_eq!(got, want, "prefill budget {budget}");
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(batch.seq_len(i), p.len() + steps);
        }
        // Every sequence gets the blocks of the largest capacity; past them a step is refused.
        assert_eq!(batch.capacity(), 32);
        for _ in batch.seq_len(1)..batch.capacity() {
            next = batch.decode_argmax(&next).unwrap();
        }
        assert!(batch.decode_argmax(&next).is_err());
        // Emptied, the same cache gives the same tokens again.
        batch.reset();
        let again = batch.prefill(&refs, budget).unwrap();
        assert_eq!(again, want.iter().map(|w| w[0]).collect::<Vec<_>>());
    }
}

#[test]
fn batch_rejects_bad_input() {
    let (backend, model) = load();
    let mut batch = SequenceBatch::new(&backend, &model, &[4, 4]).unwrap();
    assert!(batch.decode_argmax(&[1]).is_err());
    assert!(batch.prefill(&[&[1, 2], &[]], 16).is_err());
    assert!(batch.prefill(&[&[1; 40], &[1]], 16).is_err());
    assert!(SequenceBatch::new(&backend, &model, &[]).is_err());
}
