//! Random scheduler workloads for the property tests: a small block pool (so preemption happens),
//! chunked prefill on or off, prompts sharing prefixes (so the prefix cache hits).

use super::Rng;
use kestrel::engine::scheduler::SchedulerConfig;

/// A request of the workload: its prompt (token ids below 8) and max_tokens.
pub struct WorkloadRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
}

/// A configuration and 1..40 requests of up to 200 prompt + 50 generated tokens, from `rng`.
pub fn random_workload(rng: &mut Rng) -> (SchedulerConfig, Vec<WorkloadRequest>) {
    let block_size = [1, 2, 4, 8, 16][rng.below(5)];
    let chunked = rng.below(2) == 0;
    let max_len: usize = 200 + 50;
    let num_blocks = max_len.div_ceil(block_size) + rng.below(max_len / block_size + 1);
    let max_num_seqs = rng.range(1, 32);
    let budget = if chunked {
        rng.range(max_num_seqs, 300)
    } else {
        rng.range(max_len, 400)
    };
    let cfg = SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        block_size,
        num_blocks,
        chunked_prefill: chunked,
    };
    let bases: Vec<Vec<u32>> = (0..3)
        .map(|_| {
            (0..rng.range(1, 150))
                .map(|_| rng.below(8) as u32)
                .collect()
        })
        .collect();
    let reqs = (0..rng.range(1, 40))
        .map(|_| {
            let len = rng.range(1, 200);
            let mut prompt: Vec<u32> = if rng.below(3) > 0 {
                bases[rng.below(3)].iter().copied().take(len).collect()
            } else {
                Vec::new()
            };
            while prompt.len() < len {
                prompt.push(rng.below(8) as u32);
            }
            WorkloadRequest {
                prompt,
                max_tokens: rng.range(1, 50),
            }
        })
        .collect();
    (cfg, reqs)
}
