//! The two decode GEMV designs of issue #4, side by side on the same Q8_0 / Q4_0 weights: dequantizing
//! in registers against bf16 activations (gemv_quant, the model's path) and integer dot products
//! against activations quantized to 8 bits in the kernel (gemv_dp4a, llama.cpp's MMVQ). Checked: the
//! dp4a kernel's outputs against f64 dot products with x rounded exactly as the kernel quantizes it;
//! printed: both kernels' times at Qwen3-4B and 0.6B shapes, and the error 8-bit activations add
//! (relative L2 against the f64 dot products with bf16 x, beside the dequantizing kernel's).
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1.

mod common;

use common::model_run::rel_l2;
use common::Rng;
use kestrel::quant;
use kestrel_cuda::cudarc::driver::CudaSlice;
use kestrel_cuda::dtype::{to_bf16, to_f32};
use kestrel_cuda::ops::gemv::Accumulate;
use kestrel_cuda::ops::gemv_dp4a::gemv_dp4a;
use kestrel_cuda::ops::gemv_quant::gemv_quant;
use kestrel_cuda::ops::quant_layout::{QuantFormat, QuantWeights};
use kestrel_cuda::{Bf16, CudaDevice};

fn device() -> Option<CudaDevice> {
    common::open_or_skip(CudaDevice::open(0))
}

fn normal(g: &mut Rng) -> f32 {
    let u = |g: &mut Rng| (g.next_u64() >> 40) as f64 / (1u64 << 24) as f64;
    let (u1, u2) = (u(g).max(1e-12), u(g));
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// x as the kernel quantizes it: per 32 values d = amax / 127, q = round-half-even(x / d), value q * d.
fn q8_values(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|b| {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            b.iter()
                .map(move |v| (v * id).round_ties_even() * d)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn dots(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let (tokens, n) = (x.len() / k, w.len() / k);
    let mut out = Vec::with_capacity(tokens * n);
    for t in 0..tokens {
        for r in 0..n {
            let s: f64 = x[t * k..][..k]
                .iter()
                .zip(&w[r * k..][..k])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            out.push(s as f32);
        }
    }
    out
}

#[test]
fn dp4a_against_dequantizing_gemv() {
    let Some(dev) = device() else { return };
    let mut g = Rng::new("gemv_dp4a");
    let s = dev.stream();
    // (name, in, out, mode): Qwen3-4B's and 0.6B's decode GEMVs
    let shapes = [
        ("4B qkv", 2560, 6144, Accumulate::Overwrite),
        ("4B o_proj", 4096, 2560, Accumulate::Overwrite),
        ("4B gate_up", 2560, 19_456, Accumulate::SwiGlu),
        ("4B down", 9728, 2560, Accumulate::Overwrite),
        ("4B lm_head", 2560, 151_936, Accumulate::Overwrite),
        ("0.6B qkv", 1024, 4096, Accumulate::Overwrite),
        ("0.6B down", 3072, 1024, Accumulate::Overwrite),
    ];
    for (name, k, n, mode) in shapes {
        let w: Vec<f32> = (0..n * k).map(|_| 0.02 * normal(&mut g)).collect();
        for format in [QuantFormat::Q8_0, QuantFormat::Q4_0] {
            let raw = quant::quantize_tensor(format.ggml(), &w, k).unwrap();
            let values = quant::dequantize_tensor(format.ggml(), &raw, k).unwrap();
            let planes = format.repack(&raw, k).unwrap();
            let qw = QuantWeights::upload(&dev, format, k, &planes).unwrap();
            for tokens in [1usize, 2, 4] {
                if tokens * k * 5 / 4 > 48 * 1024 {
                    continue;
                }
                let x: Vec<f32> = to_f32(&to_bf16(
                    &(0..tokens * k).map(|_| normal(&mut g)).collect::<Vec<_>>(),
                ));
                let d_x: CudaSlice<Bf16> = s.clone_htod(&to_bf16(&x)).unwrap();
                let out = if mode == Accumulate::SwiGlu { n / 2 } else { n };
                let mut y_i = s.clone_htod(&vec![Bf16::NAN; tokens * out]).unwrap();
                let mut y_f = s.clone_htod(&vec![Bf16::NAN; tokens * out]).unwrap();
                gemv_dp4a(&dev, &qw, &d_x, &mut y_i, mode).unwrap();
                gemv_quant(&dev, &qw, &d_x, None, None, &mut y_f, mode).unwrap();
                let got_i = to_f32(&s.clone_dtoh(&y_i).unwrap());
                let got_f = to_f32(&s.clone_dtoh(&y_f).unwrap());
                if mode != Accumulate::SwiGlu {
                    // the dp4a kernel computes exactly these products (integers), then rounds to bf16
                    let want_q = dots(&q8_values(&x), &values, k);
                    let err = rel_l2(&got_i, &want_q);
                    assert!(
                        err < 4e-3,
                        "{name} {format:?} t{tokens}: {err:e} vs its own math"
                    );
                    let want = dots(&x, &values, k);
                    eprintln!(
                        "{name} {format:?} t{tokens}: rel L2 vs exact: dp4a {:.3e}, dequant {:.3e}",
                        rel_l2(&got_i, &want),
                        rel_l2(&got_f, &want)
                    );
                } else {
                    eprintln!(
                        "{name} {format:?} t{tokens}: SwiGLU dp4a vs dequant rel L2 {:.3e}",
                        rel_l2(&got_i, &got_f)
                    );
                }
                let time = |f: &mut dyn FnMut()| {
                    for _ in 0..10 {
                        f();
                    }
                    s.synchronize().unwrap();
                    let t = std::time::Instant::now();
                    for _ in 0..200 {
                        f();
                    }
                    s.synchronize().unwrap();
                    t.elapsed().as_secs_f64() * 1e6 / 200.0
                };
                let t_i = time(&mut || gemv_dp4a(&dev, &qw, &d_x, &mut y_i, mode).unwrap());
                let t_f =
                    time(&mut || gemv_quant(&dev, &qw, &d_x, None, None, &mut y_f, mode).unwrap());
                let gbs = |t: f64| qw.bytes() as f64 / t * 1e-3;
                eprintln!(
                    "{name} {format:?} t{tokens}: dp4a {t_i:.1} us ({:.0} GB/s), dequant {t_f:.1} us ({:.0} GB/s)",
                    gbs(t_i),
                    gbs(t_f)
                );
            }
        }
    }
}
