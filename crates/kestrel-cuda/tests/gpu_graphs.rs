//! CUDA-graph decode steps against eager ones on the tiny checkpoints: greedy tokens must be equal
//! exactly (both run the same padded kernels; graphs only replay them), for a batch of one and for
//! padded buckets (3 sequences in the 4-bucket on the GEMV path, 10 in the 16-bucket on cuBLAS), as
//! contexts grow across KV blocks, attention partitions (every 64 keys) and a block-table width
//! (256 tokens), and when a new sequence replays the graphs of an old one. A batch of one is also
//! checked against host-side argmax of eager logits, and the 4-bucket against each sequence alone
//! (the GEMV and decode attention compute each row alone, so padding must change nothing).
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1.

mod common;

use common::testdata;

use std::sync::{Mutex, OnceLock};

use kestrel::backend::{AttnMetadata, Backend, KvCacheSpec, SeqSlice};
use kestrel::engine::generate::{SingleSequence, BLOCK_SIZE};
use kestrel::engine::sampling::argmax;
use kestrel::formats::source::ModelSource;
use kestrel::model::Qwen3Model;
use kestrel_cuda::backend::CudaBackend;

/// The tests switch the shared backend's graphs on and off: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn backend() -> Option<&'static CudaBackend> {
    static B: OnceLock<Option<CudaBackend>> = OnceLock::new();
    B.get_or_init(|| {
        common::open_or_skip(CudaBackend::open(0)).inspect(|b| {
            eprintln!("{}", b.name());
        })
    })
    .as_ref()
}

fn load(backend: &CudaBackend, path: &str) -> Qwen3Model<CudaBackend> {
    let src = ModelSource::open(testdata(path).to_str().unwrap()).unwrap();
    let cfg = src.config().unwrap();
    Qwen3Model::load(backend, &cfg, &src).unwrap()
}

fn prompt(len: usize, salt: u32, vocab: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + salt * 101 + 11) % vocab)
        .collect()
}

const STEPS: usize = 32;

/// Greedy tokens of one sequence through `feed_argmax` (decode steps via `decode_argmax`).
fn greedy(gpu: &CudaBackend, m: &Qwen3Model<CudaBackend>, p: &[u32]) -> Vec<u32> {
    let mut seq = SingleSequence::new(gpu, m, p.len() + STEPS).unwrap();
    let mut next = seq.feed_argmax(gpu, m, p).unwrap();
    let mut out = vec![next];
    for _ in 1..STEPS {
        next = seq.feed_argmax(gpu, m, &[next]).unwrap();
        out.push(next);
    }
    out
}

/// Greedy tokens from eager logits copied to the host (no decode_argmax, no padding, no graph).
fn greedy_host(gpu: &CudaBackend, m: &Qwen3Model<CudaBackend>, p: &[u32]) -> Vec<u32> {
    let mut seq = SingleSequence::new(gpu, m, p.len() + STEPS).unwrap();
    let mut next = argmax(&seq.feed(gpu, m, p, false).unwrap().pop().unwrap());
    let mut out = vec![next];
    for _ in 1..STEPS {
        next = argmax(&seq.feed(gpu, m, &[next], false).unwrap().pop().unwrap());
        out.push(next);
    }
    out
}

#[test]
fn batch_of_one_graphs_equal_eager() {
    let Some(gpu) = backend() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for dir in ["tiny-qwen3-bf16", "tiny-qwen2"] {
        let model = load(gpu, dir);
        let vocab = model.config.vocab_size as u32;
        // 240 + 32 tokens: crosses KV blocks, partitions at 256 keys and the 16-block table width.
        for len in [7, 240] {
            let p = prompt(len, 1, vocab);
            gpu.set_cuda_graphs(false);
            let eager = greedy(gpu, &model, &p);
            let kernels = gpu.decode_step_kernels();
            gpu.set_cuda_graphs(true);
            let graphs = greedy(gpu, &model, &p);
            assert!(
                gpu.captured_decode_graphs() >= 1,
                "{dir}: no decode graph was captured"
            );
            // A new sequence (a new cache, or the old one's memory again) replays or recaptures.
            let again = greedy(gpu, &model, &p);
            let host = greedy_host(gpu, &model, &p);
            eprintln!("{dir} prompt {len}: {kernels:?} kernels per step, tokens {graphs:?}");
            assert_eq!(graphs, eager, "{dir} prompt {len}: graphs vs eager");
            assert_eq!(
                again, eager,
                "{dir} prompt {len}: graphs after a reset vs eager"
            );
            assert_eq!(
                host, eager,
                "{dir} prompt {len}: host argmax of eager logits"
            );
            assert!(kernels.is_some_and(|k| k > 0));
        }
    }
    gpu.set_cuda_graphs(true);
}

/// Greedy decoding of `prompts` as one batch over one paged cache (blocks interleaved between the
/// sequences): each prefilled alone, then `STEPS - 1` batched decode steps through `decode_argmax`.
fn greedy_batch(
    gpu: &CudaBackend,
    m: &Qwen3Model<CudaBackend>,
    prompts: &[Vec<u32>],
) -> Vec<Vec<u32>> {
    let c = &m.config;
    let n = prompts.len();
    let per_seq = prompts
        .iter()
        .map(|p| p.len() + STEPS)
        .max()
        .unwrap()
        .div_ceil(BLOCK_SIZE);
    let mut cache = gpu
        .alloc_kv_cache(&KvCacheSpec {
            num_layers: c.num_layers,
            num_blocks: per_seq * n,
            block_size: BLOCK_SIZE,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })
        .unwrap();
    let tables: Vec<Vec<u32>> = (0..n)
        .map(|i| (0..per_seq).map(|j| (j * n + (n - 1 - i)) as u32).collect())
        .collect();
    let mut next = Vec::new();
    for (p, t) in prompts.iter().zip(&tables) {
        let seq = SeqSlice {
            query_start: 0,
            query_len: p.len(),
            context_len: p.len(),
            block_table: t.clone(),
        };
        let meta = AttnMetadata::new(BLOCK_SIZE, vec![seq]).unwrap();
        let logits = m
            .forward(gpu, p, &meta, &mut cache, &[p.len() - 1])
            .unwrap();
        next.push(gpu.argmax(&logits).unwrap()[0]);
    }
    let mut out: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
    for step in 1..STEPS {
        let seqs = (0..n)
            .map(|i| SeqSlice {
                query_start: i,
                query_len: 1,
                context_len: prompts[i].len() + step,
                block_table: tables[i].clone(),
            })
            .collect();
        let meta = AttnMetadata::new(BLOCK_SIZE, seqs).unwrap();
        next = gpu
            .decode_argmax(
                m.instance_id(),
                &next,
                &meta,
                &mut cache,
                &mut |t, md, kv| {
                    let rows: Vec<usize> = (0..t.len()).collect();
                    m.forward(gpu, t, md, kv, &rows)
                },
            )
            .unwrap();
        for (o, &t) in out.iter_mut().zip(&next) {
            o.push(t);
        }
    }
    out
}

#[test]
fn padded_buckets_graphs_equal_eager() {
    let Some(gpu) = backend() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = load(gpu, "tiny-qwen3-bf16");
    let vocab = model.config.vocab_size as u32;
    for n in [3usize, 10] {
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|i| prompt(5 + (i * 53) % 240, i as u32 + 2, vocab))
            .collect();
        gpu.set_cuda_graphs(false);
        let eager = greedy_batch(gpu, &model, &prompts);
        gpu.set_cuda_graphs(true);
        let graphs = greedy_batch(gpu, &model, &prompts);
        let again = greedy_batch(gpu, &model, &prompts);
        assert!(
            gpu.captured_decode_graphs() >= 1,
            "no decode graph was captured"
        );
        assert_eq!(graphs, eager, "{n} sequences: graphs vs eager");
        assert_eq!(again, eager, "{n} sequences: graphs again vs eager");
        if n <= 8 {
            // The GEMV path computes each row alone: padding and batching change nothing.
            for (i, p) in prompts.iter().enumerate() {
                assert_eq!(
                    greedy(gpu, &model, p),
                    eager[i],
                    "sequence {i} alone vs in the batch"
                );
            }
        }
    }
    gpu.set_cuda_graphs(true);
}
