//! Batched-decode GEMM microbenchmark (ignored by default; run with `--ignored --nocapture`): every
//! Qwen3-0.6B and Qwen3-4B matmul shape at 16..256 tokens (the engine's decode batches), timed with
//! CUDA events over 50 launches captured in one CUDA graph (no host time between them, as in a decode
//! step): cuBLAS's own pick (gemm_ex, what the backend runs) against each algorithm cuBLASLt lists for
//! the shape. Weights cycle over >= 512 MiB of copies so they come from HBM as in a model step. Each
//! algorithm's output is checked against gemm_ex's (same f32 accumulation, other summation order:
//! within an ulp or two of the largest outputs).
//!
//! Measured (H200, session 10): the best listed algorithm saves 2% of a 0.6B layer's four matmuls
//! (23.4 -> 22.9 us at 64 tokens) and 5% at 4B: cuBLAS's pick stays. Without a graph the same loop
//! measured ~11 us a matmul: the host's launch rate, not the GPU.

mod common;

use common::bench_pattern;
use kestrel_cuda::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use kestrel_cuda::cudarc::driver::CudaSlice;
use kestrel_cuda::ops::gemm::{cublas_handle, gemm_bf16, gemm_bf16_accumulate};
use kestrel_cuda::ops::gemm_lt::{LtHandle, LtMatmul};
use kestrel_cuda::{Bf16, CudaDevice};

const ITERS: usize = 50;
const ROTATE_BYTES: usize = 512 << 20;
const WORKSPACE: usize = 32 << 20;
const CANDIDATES: usize = 24;

/// (model, name, out, in, accumulate into y)
const SHAPES: &[(&str, &str, usize, usize, bool)] = &[
    ("0.6B", "qkv", 4096, 1024, false),
    ("0.6B", "o_proj", 1024, 2048, true),
    ("0.6B", "gate_up", 6144, 1024, false),
    ("0.6B", "down", 1024, 3072, true),
    ("0.6B", "lm_head", 151_936, 1024, false),
    ("4B", "qkv", 6144, 2560, false),
    ("4B", "o_proj", 2560, 4096, true),
    ("4B", "gate_up", 19_456, 2560, false),
    ("4B", "down", 2560, 9728, true),
];

const TOKENS: &[usize] = &[16, 32, 64, 128, 256];

/// Mean seconds per call of `run(i)` over `ITERS` calls captured in one CUDA graph (as the engine
/// runs a decode step: no host time between kernels), after an eager warm-up.
fn time(dev: &CudaDevice, warm: usize, mut run: impl FnMut(usize)) -> f64 {
    for i in 0..warm.max(5) {
        run(i);
    }
    let s = dev.stream();
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    for i in 0..ITERS {
        run(i);
    }
    let graph = s
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a captured graph");
    graph.launch().unwrap();
    common::gpu_seconds(dev, || graph.launch().unwrap()) / ITERS as f64
}

fn to_f32(dev: &CudaDevice, y: &CudaSlice<Bf16>) -> Vec<f32> {
    dev.stream()
        .clone_dtoh(y)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect()
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn cublaslt_algorithms_on_batched_decode_shapes() {
    let Some(dev) = common::open_or_skip(CudaDevice::open(0)) else {
        return;
    };
    let blas = cublas_handle(&dev).unwrap();
    let lt = LtHandle::new().unwrap();
    let mut workspace = dev.stream().alloc_zeros::<u8>(WORKSPACE).unwrap();
    println!("{} ({})", dev.name(), dev.arch());
    println!(
        "{:<5} {:<8} {:>6} {:>5} {:>4} | {:>8} {:>8} {:>8} | best (id tile splitk waves) | algos",
        "model", "matmul", "out", "in", "tok", "gemm_ex", "lt#0", "best"
    );
    // per (model, tokens): gemm_ex total, best total over the layer shapes
    let mut totals: Vec<(String, f64, f64)> = Vec::new();
    for &(model, name, n, k, accumulate) in SHAPES {
        let bytes_w = n * k * 2;
        let copies = ROTATE_BYTES.div_ceil(bytes_w).clamp(2, 64);
        let host_w = bench_pattern(n * k, n as u32 ^ k as u32);
        let ws: Vec<CudaSlice<Bf16>> = (0..copies)
            .map(|_| dev.stream().clone_htod(&host_w).unwrap())
            .collect();
        for &tokens in TOKENS {
            let x = dev
                .stream()
                .clone_htod(&bench_pattern(tokens * k, 7 + tokens as u32))
                .unwrap();
            let y0 = bench_pattern(tokens * n, 11);
            let mut y = dev.stream().clone_htod(&y0).unwrap();
            let beta = if accumulate { 1.0 } else { 0.0 };
            let ex = |y: &mut CudaSlice<Bf16>, w: &CudaSlice<Bf16>| {
                if accumulate {
                    gemm_bf16_accumulate(&dev, &blas, &x, w, k, y).unwrap()
                } else {
                    gemm_bf16(&dev, &blas, &x, w, k, y).unwrap()
                }
            };
            // reference output: gemm_ex once on y0
            ex(&mut y, &ws[0]);
            let want = to_f32(&dev, &y);
            let t_ex = time(&dev, copies, |i| ex(&mut y, &ws[i % copies]));
            let mm = LtMatmul::new::<Bf16>(n, tokens, k, n).unwrap();
            let algos = mm.candidates(&lt, WORKSPACE, CANDIDATES).unwrap();
            let mut results = Vec::new();
            for (ai, a) in algos.iter().enumerate() {
                dev.stream().memcpy_htod(&y0, &mut y).unwrap();
                if mm
                    .run(&dev, &lt, a, &x, &ws[0], &mut y, beta, &mut workspace)
                    .is_err()
                {
                    continue;
                }
                let got = to_f32(&dev, &y);
                let scale = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs() / scale)
                    .fold(0.0f32, f32::max);
                // bf16 rounding of two f32 sums in different orders: an ulp or two of the
                // largest outputs (2^-8 relative each)
                assert!(
                    worst < 0.01,
                    "{model} {name} {tokens} tokens, algo {ai} ({a:?}): off by {worst}"
                );
                let t = time(&dev, copies, |i| {
                    mm.run(
                        &dev,
                        &lt,
                        a,
                        &x,
                        &ws[i % copies],
                        &mut y,
                        beta,
                        &mut workspace,
                    )
                    .unwrap()
                });
                results.push((ai, t));
            }
            let t0 = results.iter().find(|r| r.0 == 0).map_or(f64::NAN, |r| r.1);
            let (bi, tb) = results
                .iter()
                .copied()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((0, f64::NAN));
            let b = &algos[bi.min(algos.len().saturating_sub(1))];
            println!(
                "{model:<5} {name:<8} {n:>6} {k:>5} {tokens:>4} | {:>8.2} {:>8.2} {:>8.2} | #{bi} ({} {} {} {:.2}) | {}",
                t_ex * 1e6,
                t0 * 1e6,
                tb * 1e6,
                b.id,
                b.tile,
                b.split_k,
                b.waves,
                results.len()
            );
            if name != "lm_head" {
                let key = format!("{model} {tokens:>3} tokens");
                match totals.iter_mut().find(|t| t.0 == key) {
                    Some(t) => {
                        t.1 += t_ex;
                        t.2 += tb.min(t_ex);
                    }
                    None => totals.push((key, t_ex, tb.min(t_ex))),
                }
            }
        }
    }
    println!("layer matmuls (qkv + o + gate_up + down), us: gemm_ex -> best of gemm_ex and cuBLASLt's list");
    for (key, ex, best) in totals {
        println!(
            "{key}: {:.2} -> {:.2} ({:.0}%)",
            ex * 1e6,
            best * 1e6,
            100.0 * best / ex
        );
    }
}
