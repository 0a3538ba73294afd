//! Paged attention (decode split-K path and prefill tile path) against a plain f64 CPU reference, and
//! the fused decode variant (q/k norm + RoPE + cache write inside) against the two launches it replaces
//! over the same paged layout. Block tables are shuffled and non-contiguous; every cache slot not
//! holding a key of its sequence (the tail of a last block, spare blocks, the block named by unused
//! table entries) is NaN, and so are the output and the workspace before each run, so a read outside
//! a sequence or an unwritten element shows.
//!
//! Bound: the output is rounded to bf16 once from f32 arithmetic, so every element must be within
//! 1e-2 of its row's largest magnitude and 99% within one bf16 ulp of the f64 reference.
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1. A run prints its random
//! seed; KESTREL_TEST_SEED=<seed> repeats it.

mod common;

use common::Rng;

use std::sync::OnceLock;

use kestrel_cuda::cudarc::driver::{CudaSlice, DeviceRepr};
use kestrel_cuda::dtype::{to_bf16, to_f32};
use kestrel_cuda::ops::attention::{
    attention_counters_len, attention_workspace_len, paged_attention, paged_decode_attention_qk,
    AttnBatch, AttnShape, DecodeKernel, PrefillKernel, MMA_HEAD_DIMS,
};
use kestrel_cuda::ops::qk_norm_rope_kv::{qk_norm_rope_kv, HeadShape, QkNormRopeInputs};
use kestrel_cuda::{Bf16, CudaDevice, CudaError};

fn device() -> Option<&'static CudaDevice> {
    static DEV: OnceLock<Option<CudaDevice>> = OnceLock::new();
    DEV.get_or_init(|| {
        common::open_or_skip(CudaDevice::open(0)).inspect(|d| {
            eprintln!("GPU 0: {}, kernels for {}", d.name(), d.arch());
        })
    })
    .as_ref()
}

/// The value distributions these tests draw from the shared seeded generator.
trait AttentionDraws {
    fn uniform(&mut self) -> f64;
    fn activations(&mut self, n: usize) -> Vec<f32>;
}

impl AttentionDraws for Rng {
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Normal values, 1% of them 10x larger (peaked softmax rows), rounded to bf16.
    fn activations(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1 = self.uniform().max(1e-12);
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos();
                let outlier = if self.uniform() < 0.01 { 10.0 } else { 1.0 };
                Bf16::from_f32((z * outlier) as f32).to_f32()
            })
            .collect()
    }
}

fn bf16_ulp(x: f64) -> f64 {
    let a = x.abs().max(f32::MIN_POSITIVE as f64);
    2f64.powi(a.log2().floor() as i32 - 7)
}

fn upload<T: DeviceRepr>(dev: &CudaDevice, host: &[T]) -> CudaSlice<T> {
    dev.stream().clone_htod(host).unwrap()
}

/// Heads: (num_heads, num_kv_heads, head_dim).
type Heads = (usize, usize, usize);
/// (what, heads, block_size, (query_len, context_len) per sequence)
type Case = (&'static str, Heads, usize, &'static [(usize, usize)]);
const QWEN3_06B: Heads = (16, 8, 128);
const QWEN3_4B: Heads = (32, 8, 128);
const SMALL: Heads = (4, 2, 64);

/// A batch on the host: paged caches (NaN outside the sequences), q, metadata, and the reference.
struct Batch {
    shape: AttnShape,
    /// (query_len, context_len) per sequence.
    seqs: Vec<(usize, usize)>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    cu_seqlens: Vec<u32>,
    context_lens: Vec<u32>,
    block_tables: Vec<u32>,
}

impl Batch {
    fn new(rng: &mut Rng, heads: Heads, block_size: usize, seqs: &[(usize, usize)]) -> Batch {
        let (nh, nkv, hd) = heads;
        let kv_dim = nkv * hd;
        let blocks: Vec<usize> = seqs.iter().map(|&(_, c)| c.div_ceil(block_size)).collect();
        let max_blocks = blocks.iter().max().copied().unwrap_or(0) + 1;
        let total = blocks.iter().sum::<usize>() + 3;
        let mut ids: Vec<u32> = (0..total as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        let nan_block = ids.pop().unwrap(); // unused table entries name this all-NaN block
        let mut k = vec![f32::NAN; total * block_size * kv_dim];
        let mut v = k.clone();
        let mut block_tables = Vec::new();
        for (&(_, ctx), &n) in seqs.iter().zip(&blocks) {
            let table: Vec<u32> = ids.drain(..n).collect();
            for pos in 0..ctx {
                let slot = table[pos / block_size] as usize * block_size + pos % block_size;
                k[slot * kv_dim..][..kv_dim].copy_from_slice(&rng.activations(kv_dim));
                v[slot * kv_dim..][..kv_dim].copy_from_slice(&rng.activations(kv_dim));
            }
            block_tables.extend(&table);
            block_tables.extend(std::iter::repeat_n(nan_block, max_blocks - n));
        }
        let mut cu_seqlens = vec![0u32];
        for &(qlen, ctx) in seqs {
            assert!(qlen <= ctx);
            cu_seqlens.push(cu_seqlens.last().unwrap() + qlen as u32);
        }
        let tokens = *cu_seqlens.last().unwrap() as usize;
        Batch {
            shape: AttnShape {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                block_size,
                max_blocks_per_seq: max_blocks,
            },
            seqs: seqs.to_vec(),
            q: rng.activations(tokens * nh * hd),
            k,
            v,
            cu_seqlens,
            context_lens: seqs.iter().map(|&(_, c)| c as u32).collect(),
            block_tables,
        }
    }

    fn num_tokens(&self) -> usize {
        *self.cu_seqlens.last().unwrap() as usize
    }

    /// f64 causal softmax attention, straight from the definition.
    fn reference(&self) -> Vec<f64> {
        let AttnShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            block_size: bs,
            max_blocks_per_seq: mb,
        } = self.shape;
        let (kv_dim, group, scale) = (nkv * hd, nh / nkv, 1.0 / (hd as f64).sqrt());
        let mut out = vec![f64::NAN; self.num_tokens() * nh * hd];
        for (s, &(qlen, ctx)) in self.seqs.iter().enumerate() {
            let table = &self.block_tables[s * mb..][..mb];
            let slot = |pos: usize| table[pos / bs] as usize * bs + pos % bs;
            for i in 0..qlen {
                let t = self.cu_seqlens[s] as usize + i;
                let keys = ctx - qlen + i + 1;
                for h in 0..nh {
                    let qh = &self.q[(t * nh + h) * hd..][..hd];
                    let off = (h / group) * hd;
                    let scores: Vec<f64> = (0..keys)
                        .map(|p| {
                            let kr = &self.k[slot(p) * kv_dim + off..][..hd];
                            qh.iter()
                                .zip(kr)
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|&x| (x - mx).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    let o = &mut out[(t * nh + h) * hd..][..hd];
                    o.fill(0.0);
                    for (p, &wp) in w.iter().enumerate() {
                        let vr = &self.v[slot(p) * kv_dim + off..][..hd];
                        for (od, &vd) in o.iter_mut().zip(vr) {
                            *od += wp / sum * vd as f64;
                        }
                    }
                }
            }
        }
        out
    }

    /// Runs the GPU op (on NaN-poisoned out and workspace) and returns its output.
    /// `split`: a mixed batch's one-query rows go to the decode kernel (else all to the prefill one).
    fn run(
        &self,
        dev: &CudaDevice,
        max_partitions: usize,
        split: bool,
        decode_kernel: DecodeKernel,
        prefill_kernel: PrefillKernel,
    ) -> Result<Vec<f32>, CudaError> {
        let max_query_len = self.seqs.iter().map(|&(q, _)| q).max().unwrap_or(0);
        let singles = self.seqs.iter().filter(|&&(q, _)| q == 1).count();
        let n = self.num_tokens() * self.shape.num_heads * self.shape.head_dim;
        let (cu, ctx, bt) = (
            upload(dev, &self.cu_seqlens),
            upload(dev, &self.context_lens),
            upload(dev, &self.block_tables),
        );
        let batch = AttnBatch {
            num_seqs: self.seqs.len(),
            num_tokens: self.num_tokens(),
            max_query_len,
            single_query_seqs: if split { singles } else { 0 },
            decode_kernel,
            prefill_kernel,
            cu_seqlens_q: &cu,
            context_lens: &ctx,
            block_tables: &bt,
        };
        let ws_len = attention_workspace_len(&self.shape, self.seqs.len(), max_partitions);
        let mut ws = upload(dev, &vec![f32::NAN; ws_len.max(1)]);
        // the partition counters start at zero, and every launch must leave them so
        let n_counters = attention_counters_len(&self.shape, self.seqs.len()).max(1);
        let mut counters = upload(dev, &vec![0u32; n_counters]);
        // q and out are views of buffers one NaN longer, so a read or write past them shows
        let mut q_buf = to_bf16(&self.q);
        q_buf.push(Bf16::NAN);
        let q_buf = upload(dev, &q_buf);
        let mut out = upload(dev, &vec![Bf16::NAN; n + 1]);
        paged_attention(
            dev,
            &self.shape,
            &batch,
            max_partitions,
            &q_buf.slice(..n),
            &upload(dev, &to_bf16(&self.k)),
            &upload(dev, &to_bf16(&self.v)),
            &mut ws,
            &mut counters,
            &mut out.slice_mut(..n),
        )?;
        let tail = to_f32(&dev.stream().clone_dtoh(&out.slice(n..)).unwrap());
        assert!(
            tail[0].is_nan(),
            "paged_attention wrote past the end of out"
        );
        dev.synchronize()?;
        let counters_after = dev.stream().clone_dtoh(&counters).unwrap();
        assert!(
            counters_after.iter().all(|&c| c == 0),
            "paged_attention left a partition counter non-zero: {counters_after:?}"
        );
        Ok(to_f32(&dev.stream().clone_dtoh(&out.slice(..n)).unwrap()))
    }
}

/// Every element within 1e-2 x its row's max |ref|, and 99% within one bf16 ulp.
fn assert_close(what: &str, got: &[f32], want: &[f64], head_dim: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut bad, mut within_ulp, mut worst) = (Vec::new(), 0usize, 0f64);
    for (row, (g_row, w_row)) in got.chunks(head_dim).zip(want.chunks(head_dim)).enumerate() {
        let scale = w_row.iter().fold(0f64, |m, &x| m.max(x.abs()));
        for (d, (&g, &w)) in g_row.iter().zip(w_row).enumerate() {
            let err = (g as f64 - w).abs();
            if err.is_nan() || err > 1e-2 * scale + 1e-6 {
                bad.push(format!("[row {row}, {d}] got {g} want {w:.6}"));
            }
            if err <= bf16_ulp(w) {
                within_ulp += 1;
            }
            if scale > 0.0 {
                worst = worst.max(err / scale);
            }
        }
    }
    let frac = within_ulp as f64 / want.len().max(1) as f64;
    eprintln!("{what}: worst |err| / row max {worst:.2e}, {frac:.5} within one bf16 ulp");
    assert!(
        bad.is_empty(),
        "{what}: {} of {} elements out of bounds: {}",
        bad.len(),
        want.len(),
        bad[..bad.len().min(8)].join(", ")
    );
    assert!(frac >= 0.99, "{what}: only {frac:.4} within one bf16 ulp");
}

fn check(
    dev: &CudaDevice,
    rng: &mut Rng,
    what: &str,
    heads: Heads,
    bs: usize,
    seqs: &[(usize, usize)],
    max_partitions: usize,
) {
    let b = Batch::new(rng, heads, bs, seqs);
    let reference = b.reference();
    // a mixed batch: its one-query rows through the prefill kernel, and through the decode kernel
    let mixed = seqs.iter().any(|&(q, _)| q > 1) && seqs.iter().any(|&(q, _)| q == 1);
    // one-query rows through each decode kernel (the tensor-core one where it has the head dim)
    let decodes = seqs.iter().any(|&(q, _)| q == 1);
    let kernels = if decodes {
        decode_kernels()
    } else {
        vec![DecodeKernel::Lanes]
    };
    // rows of more than one query (or every row, unsplit) through each prefill kernel
    let prefills = seqs.iter().any(|&(q, _)| q > 1);
    let prefill_kernels = if prefills {
        vec![PrefillKernel::Scalar, PrefillKernel::Mma]
    } else {
        vec![PrefillKernel::Scalar]
    };
    for split in if mixed { vec![false, true] } else { vec![true] } {
        for &kernel in &kernels {
            if !split && kernel != DecodeKernel::Lanes {
                continue; // no decode kernel in that run
            }
            for &prefill in &prefill_kernels {
                let got = b.run(dev, max_partitions, split, kernel, prefill).unwrap();
                let what = format!(
                    "{what} heads {heads:?} block_size {bs} partitions {max_partitions} split {split} {kernel:?} {prefill:?}"
                );
                assert_close(&what, &got, &reference, heads.2);
            }
        }
    }
    if decodes && MMA_HEAD_DIMS.contains(&heads.2) {
        // the rings differ only in when tiles are copied: the same bits
        let run = |k| {
            b.run(dev, max_partitions, true, k, PrefillKernel::Scalar)
                .unwrap()
        };
        let two = run(DecodeKernel::Mma { stages: 2 });
        for ring in apart_rings() {
            let same = two
                .iter()
                .zip(&run(ring))
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{what} heads {heads:?}: {ring:?} differs from two stages"
            );
        }
    }
}

/// The tensor-core decode rings with K and V apart: 3 and 4 slots, cp.async and bulk copies.
fn apart_rings() -> impl Iterator<Item = DecodeKernel> {
    [3, 4]
        .into_iter()
        .flat_map(|slots| [false, true].map(|tma| DecodeKernel::MmaApart { slots, tma }))
}

/// Every decode kernel (the ring variants of the tensor-core one included).
fn decode_kernels() -> Vec<DecodeKernel> {
    let mut kernels = vec![
        DecodeKernel::Lanes,
        DecodeKernel::Mma { stages: 2 },
        DecodeKernel::Mma { stages: 3 },
    ];
    kernels.extend(apart_rings());
    kernels
}

fn decodes(rng: &mut Rng, n: usize, max_ctx: usize) -> Vec<(usize, usize)> {
    (0..n).map(|_| (1, rng.range(1, max_ctx))).collect()
}

#[test]
fn decode_matches_the_reference() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("attention decode");
    for heads in [SMALL, QWEN3_06B, QWEN3_4B] {
        let one = decodes(&mut rng, 1, 3000);
        check(dev, &mut rng, "decode x1", heads, 16, &one, 16);
        // edges: one key, a partition's worth, one past it, several partitions
        let mut seven = vec![(1, 1), (1, 64), (1, 65), (1, 2999)];
        seven.extend(decodes(&mut rng, 3, 3000));
        check(dev, &mut rng, "decode x7", heads, 16, &seven, 8);
        let max_ctx = if heads == QWEN3_4B { 1000 } else { 3000 };
        let many = decodes(&mut rng, 64, max_ctx);
        check(dev, &mut rng, "decode x64", heads, 256, &many, 32);
    }
    // one partition for everything (the partition kernel writes the output itself)
    let seqs = decodes(&mut rng, 5, 3000);
    check(
        dev,
        &mut rng,
        "decode single partition",
        QWEN3_06B,
        16,
        &seqs,
        1,
    );
    // a padding sequence (query length 0) among decodes writes nothing and disturbs nothing
    check(
        dev,
        &mut rng,
        "decode with padding",
        QWEN3_06B,
        16,
        &[(1, 40), (0, 7), (1, 900)],
        4,
    );
    // GQA groups of 3 and 16 (partial / several head chunks per CTA), odd block size, tiny heads
    let odd: [(&str, Heads, usize, usize, usize, usize); 5] = [
        ("decode group 3", (6, 2, 32), 5, 9, 700, 8),
        ("decode group 16", (16, 1, 64), 16, 3, 1500, 8),
        ("decode head_dim 16", (4, 4, 16), 16, 4, 500, 4),
        ("decode head_dim 96", (6, 3, 96), 16, 3, 800, 4),
        ("decode head_dim 192", (8, 2, 192), 16, 3, 800, 4),
    ];
    for (what, heads, bs, n, max_ctx, partitions) in odd {
        let seqs = decodes(&mut rng, n, max_ctx);
        check(dev, &mut rng, what, heads, bs, &seqs, partitions);
    }
}

#[test]
fn prefill_matches_the_reference() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("attention prefill");
    for heads in [SMALL, QWEN3_06B, QWEN3_4B] {
        let mut lens = vec![2, 63, 64, 65, 600];
        lens.push(rng.range(2, 600));
        for n in lens {
            check(dev, &mut rng, "prefill", heads, 16, &[(n, n)], 1);
        }
        // a chunk after a cached prefix attends the whole prefix
        check(
            dev,
            &mut rng,
            "chunked prefill",
            heads,
            16,
            &[(100, 1000)],
            1,
        );
        // prefill chunks and decodes in one launch (the tile path serving query length 1 too)
        let mixed = [
            (37, 37),
            (1, 500),
            (100, 1000),
            (1, 1),
            (64, 192),
            (0, 10),
            (2, 2),
        ];
        check(dev, &mut rng, "mixed", heads, 256, &mixed, 1);
        // ... and the decode rows split over partitions when the decode kernel takes them
        check(dev, &mut rng, "mixed split-K", heads, 256, &mixed, 8);
    }
    // the tile path serving only short queries, a GQA group of 3 with an odd block size, and
    // every other head_dim with a kernel instance
    let odd: [Case; 7] = [
        ("single-token prefill path", SMALL, 16, &[(1, 1), (2, 700)]),
        ("prefill group 3", (6, 2, 32), 5, &[(70, 70), (33, 300)]),
        (
            "prefill head_dim 16",
            (4, 4, 16),
            16,
            &[(130, 130), (5, 77)],
        ),
        ("prefill head_dim 96", (6, 3, 96), 16, &[(65, 65), (3, 40)]),
        (
            "prefill head_dim 192",
            (8, 2, 192),
            16,
            &[(90, 150), (1, 33)],
        ),
        ("prefill head_dim 256", (4, 1, 256), 16, &[(80, 200)]),
        ("prefill group 16", (16, 1, 64), 32, &[(129, 129)]),
    ];
    for (what, heads, bs, seqs) in odd {
        check(dev, &mut rng, what, heads, bs, seqs, 1);
    }
}

#[test]
fn paged_attention_refuses_bad_shapes() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("attention shapes");
    let mut fresh = || Batch::new(&mut rng, SMALL, 16, &[(1, 20), (1, 5)]);
    assert!(launch_with(dev, &fresh(), 4, 0).is_ok());
    let refused = |b: Batch, partitions: usize, ws_short: usize, why: &str| match launch_with(
        dev, &b, partitions, ws_short,
    ) {
        Err(CudaError::Shape { .. }) => {}
        other => panic!("{why}: expected a shape error, got {other:?}"),
    };
    let mut bad = fresh();
    bad.shape.head_dim = 24;
    refused(bad, 4, 0, "head_dim 24");
    let mut bad = fresh();
    bad.shape.num_kv_heads = 3;
    refused(bad, 4, 0, "4 heads over 3 kv heads");
    let mut bad = fresh();
    bad.block_tables.pop();
    refused(bad, 4, 0, "short block tables");
    let mut bad = fresh();
    bad.context_lens.push(3);
    refused(bad, 4, 0, "long context_lens");
    let mut bad = fresh();
    bad.cu_seqlens.push(2);
    refused(bad, 4, 0, "long cu_seqlens_q");
    let mut bad = fresh();
    bad.q.truncate(bad.q.len() - 1);
    refused(bad, 4, 0, "short q");
    let mut bad = fresh();
    bad.k.truncate(bad.k.len() - 1);
    refused(bad, 4, 0, "k cache not whole blocks");
    refused(fresh(), 0, 0, "zero partitions");
    refused(fresh(), 4, 1, "workspace one element short");
}

/// Launches on the batch's uploaded data (not checking results) with the workspace `ws_short`
/// elements shorter than needed.
fn launch_with(
    dev: &CudaDevice,
    b: &Batch,
    partitions: usize,
    ws_short: usize,
) -> Result<(), CudaError> {
    let (cu, ctx, bt) = (
        upload(dev, &b.cu_seqlens),
        upload(dev, &b.context_lens),
        upload(dev, &b.block_tables),
    );
    let batch = AttnBatch {
        num_seqs: b.seqs.len(),
        num_tokens: b.seqs.iter().map(|&(q, _)| q).sum(),
        max_query_len: b.seqs.iter().map(|&(q, _)| q).max().unwrap_or(0),
        single_query_seqs: 0,
        decode_kernel: DecodeKernel::Lanes,
        prefill_kernel: PrefillKernel::Scalar,
        cu_seqlens_q: &cu,
        context_lens: &ctx,
        block_tables: &bt,
    };
    let n = batch.num_tokens * 4 * 64;
    let ws_len = attention_workspace_len(&b.shape, b.seqs.len(), partitions);
    let mut ws = upload(dev, &vec![0f32; (ws_len - ws_short).max(1)]);
    let mut counters = upload(
        dev,
        &vec![0u32; attention_counters_len(&b.shape, b.seqs.len())],
    );
    let mut out = upload(dev, &vec![Bf16::NAN; n]);
    let q = upload(dev, &to_bf16(&b.q));
    let (k, v) = (upload(dev, &to_bf16(&b.k)), upload(dev, &to_bf16(&b.v)));
    paged_attention(
        dev,
        &b.shape,
        &batch,
        partitions,
        &q,
        &k,
        &v,
        &mut ws,
        &mut counters,
        &mut out,
    )?;
    dev.synchronize()
}

/// Qwen3-like q/k norm weights: k's gains reach ~96 (real Qwen3 k_norm), so any rounding difference
/// before them would show.
fn norm_weights(rng: &mut Rng, hd: usize, peak: f32) -> Vec<f32> {
    (0..hd)
        .map(|i| {
            let w = 0.5 + 1.5 * rng.uniform() as f32;
            if i % 17 == 3 {
                peak * w / 2.0
            } else {
                w
            }
        })
        .collect()
}

/// The fused decode kernel (q/k norm + RoPE + cache write inside attention) against the two launches
/// it replaces, on the same inputs: the attention output and both caches must be bit-identical, so
/// a decode step computes exactly what a mixed (unfused) step would. Both with `decode_kernel`.
#[allow(clippy::too_many_arguments)]
fn check_fused_qk(
    dev: &CudaDevice,
    rng: &mut Rng,
    what: &str,
    heads: Heads,
    seqs: &[(usize, usize)],
    partitions: usize,
    with_norms: bool,
    decode_kernel: DecodeKernel,
) {
    let (nh, nkv, hd) = heads;
    let b = Batch::new(rng, heads, 16, seqs);
    let n = b.num_tokens();
    let row = (nh + 2 * nkv) * hd;
    let qkv = upload(dev, &to_bf16(&rng.activations(n * row)));
    let (mut positions, mut slots) = (Vec::new(), Vec::new());
    let mb = b.shape.max_blocks_per_seq;
    for (s, &(qlen, ctx)) in seqs.iter().enumerate() {
        if qlen == 1 {
            let pos = ctx - 1;
            positions.push(pos as u32);
            slots.push(b.block_tables[s * mb + pos / 16] * 16 + (pos % 16) as u32);
        }
    }
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| (1.0 / 1_000_000f64.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let (q_norm, k_norm) = (norm_weights(rng, hd, 2.0), norm_weights(rng, hd, 96.0));
    let (pos_d, slots_d, inv_d) = (
        upload(dev, &positions),
        upload(dev, &slots),
        upload(dev, &inv_freq),
    );
    let (qn_d, kn_d) = (upload(dev, &q_norm), upload(dev, &k_norm));
    let inputs = QkNormRopeInputs {
        qkv: &qkv,
        positions: &pos_d,
        slot_mapping: &slots_d,
        inv_freq: &inv_d,
        q_norm: with_norms.then_some(&qn_d),
        k_norm: with_norms.then_some(&kn_d),
        rms_norm_eps: 1e-6,
    };
    let (cu, ctx, bt) = (
        upload(dev, &b.cu_seqlens),
        upload(dev, &b.context_lens),
        upload(dev, &b.block_tables),
    );
    let batch = AttnBatch {
        num_seqs: seqs.len(),
        num_tokens: n,
        max_query_len: 1,
        single_query_seqs: seqs.iter().filter(|&&(q, _)| q == 1).count(),
        decode_kernel,
        prefill_kernel: PrefillKernel::Scalar,
        cu_seqlens_q: &cu,
        context_lens: &ctx,
        block_tables: &bt,
    };
    let ws_len = attention_workspace_len(&b.shape, seqs.len(), partitions).max(1);
    let n_counters = attention_counters_len(&b.shape, seqs.len()).max(1);
    let mut outs = Vec::new();
    for fused in [false, true] {
        let mut k = upload(dev, &to_bf16(&b.k));
        let mut v = upload(dev, &to_bf16(&b.v));
        let mut ws = upload(dev, &vec![f32::NAN; ws_len]);
        let mut counters = upload(dev, &vec![0u32; n_counters]);
        let mut out = upload(dev, &vec![Bf16::NAN; n * nh * hd]);
        if fused {
            paged_decode_attention_qk(
                dev,
                &b.shape,
                &batch,
                partitions,
                &inputs,
                &mut k,
                &mut v,
                &mut ws,
                &mut counters,
                &mut out,
            )
            .unwrap();
        } else {
            let mut q = upload(dev, &vec![Bf16::NAN; n * nh * hd]);
            let shape = HeadShape {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
            };
            qk_norm_rope_kv(dev, shape, &inputs, &mut q, &mut k, &mut v).unwrap();
            paged_attention(
                dev,
                &b.shape,
                &batch,
                partitions,
                &q,
                &k,
                &v,
                &mut ws,
                &mut counters,
                &mut out,
            )
            .unwrap();
        }
        let bits = |x: &CudaSlice<Bf16>| -> Vec<u16> {
            dev.stream()
                .clone_dtoh(x)
                .unwrap()
                .iter()
                .map(|h| h.0.to_bits())
                .collect()
        };
        outs.push((bits(&out), bits(&k), bits(&v)));
    }
    let (unfused, fused) = (&outs[0], &outs[1]);
    assert!(
        unfused.0 == fused.0,
        "{what}: fused attention output differs"
    );
    assert!(unfused.1 == fused.1, "{what}: fused k cache differs");
    assert!(unfused.2 == fused.2, "{what}: fused v cache differs");
}

#[test]
fn fused_qk_decode_matches_the_two_launches() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("attention fused qk");
    let mut seqs = vec![(1, 1), (1, 64), (1, 65), (0, 9), (1, 1500)];
    seqs.extend(decodes(&mut rng, 4, 2000));
    for (heads, norms) in [
        (QWEN3_06B, true),
        (QWEN3_4B, true),
        ((16, 2, 128), true), // group 8
        ((14, 2, 64), false), // Qwen2-0.5B: group 7, no q/k norms
    ] {
        for partitions in [1, 4, 32] {
            for kernel in decode_kernels() {
                let what = format!("heads {heads:?}, {partitions} partitions, {kernel:?}");
                check_fused_qk(
                    dev, &mut rng, &what, heads, &seqs, partitions, norms, kernel,
                );
            }
        }
    }
}
