//! DESIGN.md's parity criterion, for any backend: against HF transformers float32 on the same weights
//! and tokens, our logits' relative L2 error must be at most 1.5x HF's own bfloat16 run's, and greedy
//! tokens must equal fp32's for as long as HF bf16's own greedy path does.
//!
//! The reference is a directory made by `scripts/make_full_size_reference.py`: a bf16 checkpoint, and
//! for each of its sequences (prompt + teacher tokens) HF's fp32 and bf16 logits at every position.
//! [`run_parity`] checks, each against the fp32 rows at the same positions:
//! - batch of 1: the whole prompt in one prefill, then the teacher tokens one decode step at a time;
//! - mixed batch: every sequence in one batch over interleaved cache blocks (the first one's prompt in
//!   two chunks, so a prefill chunk over a cached prefix shares a step with the others' decode steps),
//!   then all decoding together;
//! - greedy decoding from the first prompt, with the backend's argmax.

mod reference;
mod report;

use std::path::Path;

use crate::backend::Backend;
use crate::engine::batch::SequenceBatch;
use crate::model::Qwen3Model;
use crate::{KestrelError, Result};

pub use reference::{RefSequence, Reference};
pub use report::{GreedyCheck, ParityReport, Segment};

/// Our error may be this many times HF bf16's (DESIGN.md).
pub const MARGIN: f64 = 1.5;
/// Feeds `seqs` through `batch` by `schedules` (per sequence, its chunk lengths; step k batches every
/// sequence's k-th chunk) and adds each logit row to `prefill` or `decode`.
fn run_schedule<B: Backend>(
    batch: &mut SequenceBatch<'_, B>,
    seqs: &[RefSequence],
    schedules: &[Vec<usize>],
    prefill: &mut Segment,
    decode: &mut Segment,
) -> Result<()> {
    let mut fed = vec![0; seqs.len()];
    let steps = schedules.iter().map(Vec::len).max().unwrap_or(0);
    for k in 0..steps {
        let mut parts = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if let Some(&n) = schedules[i].get(k) {
                parts.push((i, &s.tokens[fed[i]..fed[i] + n]));
            }
        }
        let (rows, vocab, data) = batch.backend().to_host(&batch.step(&parts, true)?)?;
        let want = parts.iter().map(|p| p.1.len()).sum::<usize>();
        if rows != want || vocab != batch.model().config.vocab_size {
            return Err(KestrelError::Backend(format!(
                "parity: forward returned [{rows}, {vocab}] logits for {want} tokens"
            )));
        }
        let mut row = 0;
        for &(i, new) in &parts {
            let s = &seqs[i];
            for pos in fed[i]..fed[i] + new.len() {
                let ours = &data[row * vocab..(row + 1) * vocab];
                let at = pos * vocab..(pos + 1) * vocab;
                let seg = if pos < s.prompt_len {
                    &mut *prefill
                } else {
                    &mut *decode
                };
                seg.add(&s.name, pos, ours, &s.fp32[at.clone()], &s.bf16[at]);
                row += 1;
            }
            fed[i] += new.len();
        }
    }
    Ok(())
}

/// Runs the whole check of `model` on `backend` against the reference in `reference_dir`.
pub fn run_parity<B: Backend>(
    backend: &B,
    model: &Qwen3Model<B>,
    reference_dir: &Path,
) -> Result<ParityReport> {
    let r = Reference::load(reference_dir)?;
    if r.vocab != model.config.vocab_size {
        return Err(KestrelError::format(
            reference_dir,
            format!(
                "reference vocab {} but the model's is {}",
                r.vocab, model.config.vocab_size
            ),
        ));
    }
    let decode_steps = |s: &RefSequence| vec![1; s.tokens.len() - s.prompt_len];
    let main = &r.seqs[0];

    // Batch of 1: one prefill, then one decode step per teacher token.
    let (mut prefill, mut decode) = (Segment::new("prefill"), Segment::new("decode"));
    let schedule = [vec![main.prompt_len], decode_steps(main)].concat();
    let mut batch = SequenceBatch::new(backend, model, &[main.tokens.len()])?;
    run_schedule(
        &mut batch,
        &r.seqs[..1],
        &[schedule],
        &mut prefill,
        &mut decode,
    )?;

    // Mixed batch: all sequences at once, the first prompt in two chunks.
    let (mut mprefill, mut mdecode) = (Segment::new("mixed prefill"), Segment::new("mixed decode"));
    let half = main.prompt_len / 2;
    let schedules: Vec<Vec<usize>> = r
        .seqs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let head = if i == 0 && half > 0 {
                vec![half, s.prompt_len - half]
            } else {
                vec![s.prompt_len]
            };
            [head, decode_steps(s)].concat()
        })
        .collect();
    let caps: Vec<usize> = r.seqs.iter().map(|s| s.tokens.len()).collect();
    let mut batch = SequenceBatch::new(backend, model, &caps)?;
    run_schedule(&mut batch, &r.seqs, &schedules, &mut mprefill, &mut mdecode)?;

    // Greedy from the first prompt, argmax on the backend.
    let prompt = &main.tokens[..main.prompt_len];
    let steps = r.greedy_fp32.len();
    let mut batch = SequenceBatch::new(backend, model, &[prompt.len() + steps])?;
    let mut ours = Vec::with_capacity(steps);
    let mut next = prompt.to_vec();
    while ours.len() < steps {
        let logits = batch.step(&[(0, &next)], false)?;
        let t = backend.argmax(&logits)?.pop().unwrap_or(u32::MAX);
        ours.push(t);
        next = vec![t];
    }

    let tie_tolerance = 2.0 * decode.hf_bf16_rms_abs();
    Ok(ParityReport {
        backend: backend.name(),
        reference: format!(
            "{} ({}, HF attention {})",
            r.shape,
            r.dir.display(),
            r.attn_implementation
        ),
        segments: vec![prefill, decode, mprefill, mdecode],
        greedy: GreedyCheck {
            fp32: r.greedy_fp32.clone(),
            hf_bf16: r.greedy_bf16.clone(),
            ours,
            fp32_margins: r.greedy_fp32_margins.clone(),
            tie_tolerance,
        },
    })
}
