//! Decode GEMV microbenchmark (ignored by default; run with `--ignored --nocapture`): every Qwen3-0.6B
//! and Qwen3-4B matmul shape at 1 token (and 4B's at 8), timed with CUDA events over 100 launches
//! after a warm-up, through each kernel; prints GB/s and the fraction of the measured device copy
//! bandwidth. Each launch reads a different copy of the weight (copies cycled over >= 512 MiB), so
//! even the small 0.6B matrices are read from HBM, not from L2 (50-60 MB on H100/H200).

mod common;

use common::bench_pattern;
use kestrel_cuda::bandwidth::measure_copy_bandwidth;
use kestrel_cuda::cudarc::driver::CudaSlice;
use kestrel_cuda::ops::gemv::{gemv_bf16_with, Accumulate, GemvKernel};
use kestrel_cuda::{Bf16, CudaDevice};

const ITERS: usize = 100;
const ROTATE_BYTES: usize = 512 << 20;

/// (model, name, out, in, accumulate)
const SHAPES: &[(&str, &str, usize, usize, Accumulate)] = &[
    ("0.6B", "qkv", 4096, 1024, Accumulate::Overwrite),
    ("0.6B", "o_proj", 1024, 2048, Accumulate::AddToOutput),
    ("0.6B", "gate_up", 6144, 1024, Accumulate::Overwrite),
    ("0.6B", "down", 1024, 3072, Accumulate::AddToOutput),
    ("0.6B", "lm_head", 151_936, 1024, Accumulate::Overwrite),
    ("4B", "qkv", 6144, 2560, Accumulate::Overwrite),
    ("4B", "o_proj", 2560, 4096, Accumulate::AddToOutput),
    ("4B", "gate_up", 19_456, 2560, Accumulate::Overwrite),
    ("4B", "down", 2560, 9728, Accumulate::AddToOutput),
    ("4B", "lm_head", 151_936, 2560, Accumulate::Overwrite),
];

/// Mean seconds per launch of `kernel` over `ITERS` launches, cycling the weight copies.
fn time(
    dev: &CudaDevice,
    ws: &[CudaSlice<Bf16>],
    x: &CudaSlice<Bf16>,
    y: &mut CudaSlice<Bf16>,
    k: usize,
    mode: Accumulate,
    kernel: GemvKernel,
) -> f64 {
    let run = |y: &mut CudaSlice<Bf16>, i: usize| {
        gemv_bf16_with(dev, x, &ws[i % ws.len()], None, k, y, mode, kernel).unwrap()
    };
    for i in 0..ws.len().max(10) {
        run(y, i);
    }
    common::gpu_seconds(dev, || {
        for i in 0..ITERS {
            run(y, i);
        }
    }) / ITERS as f64
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn gemv_bandwidth_on_qwen3_shapes() {
    let Some(dev) = common::open_or_skip(CudaDevice::open(0)) else {
        return;
    };
    let copy = measure_copy_bandwidth(&dev).unwrap();
    println!(
        "{} ({}): device copy bandwidth {:.0} GB/s (read + write)",
        dev.name(),
        dev.arch(),
        copy / 1e9
    );
    println!(
        "{:<5} {:<8} {:>7} {:>6} {:>3} {:<16} {:>9} {:>8} {:>6}",
        "model", "matmul", "out", "in", "tok", "kernel", "us", "GB/s", "%copy"
    );
    let mut totals: Vec<(String, f64, f64)> = Vec::new();
    for &(model, name, n, k, mode) in SHAPES {
        let token_counts: &[usize] = if model == "4B" { &[1, 8] } else { &[1] };
        let bytes_w = n * k * 2;
        let copies = ROTATE_BYTES.div_ceil(bytes_w).clamp(2, 64);
        let ws: Vec<CudaSlice<Bf16>> = {
            let host = bench_pattern(n * k, n as u32 ^ k as u32);
            (0..copies)
                .map(|_| dev.stream().clone_htod(&host).unwrap())
                .collect()
        };
        for &tokens in token_counts {
            let x = dev
                .stream()
                .clone_htod(&bench_pattern(tokens * k, 7 + tokens as u32))
                .unwrap();
            let mut y = dev.stream().alloc_zeros::<Bf16>(tokens * n).unwrap();
            let bytes = (bytes_w + 2 * tokens * (k + n)) as f64;
            let mut kernels = vec![GemvKernel::WarpRows, GemvKernel::Auto];
            kernels.extend([1, 2, 4, 8].map(|k_split| GemvKernel::Tiled { k_split }));
            for kernel in kernels {
                let s = time(&dev, &ws, &x, &mut y, k, mode, kernel);
                let label = match kernel {
                    GemvKernel::Auto => "tiled auto *".to_string(),
                    GemvKernel::Tiled { k_split } => format!("tiled ks{k_split}"),
                    _ => "warp-rows (old)".to_string(),
                };
                println!(
                    "{model:<5} {name:<8} {n:>7} {k:>6} {tokens:>3} {label:<16} {:>9.2} {:>8.0} {:>5.1}%",
                    s * 1e6,
                    bytes / s / 1e9,
                    100.0 * bytes / s / copy
                );
                let key = format!("{model} {tokens} tok");
                let (old, new) = match kernel {
                    GemvKernel::WarpRows => (s, 0.0),
                    GemvKernel::Auto => (0.0, s),
                    _ => (0.0, 0.0),
                };
                match totals.iter_mut().find(|t| t.0 == key) {
                    Some(t) => {
                        t.1 += old;
                        t.2 += new;
                    }
                    None => totals.push((key, old, new)),
                }
            }
        }
    }
    println!("sum over one layer's four matmuls plus lm_head (the shapes above), old vs auto:");
    for (key, old, new) in totals {
        println!(
            "  {key}: {:.1} us -> {:.1} us ({:.2}x)",
            old * 1e6,
            new * 1e6,
            old / new
        );
    }
    println!("(* = the split gemv_bf16 picks by shape)");
}
