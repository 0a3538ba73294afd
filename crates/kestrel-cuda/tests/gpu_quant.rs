//! Quantized decode GEMV (kernels/gemv_quant.cu: Q8_0 and Q4_0) on fresh random inputs:
//! - blocks quantized from random weights (kestrel's CPU quantizer), against f64 dot products of the
//!   dequantized weights (the CPU reference's `dequantize`);
//! - every fused mode (input RMSNorm, SwiGLU, residual add, bias) against the bf16 tiled GEMV, with
//!   scales that are powers of two so that every dequantized weight is exactly a bf16 value and the
//!   two kernels compute the same sums (in another grouping: a chunk's 16 products, then its scale);
//! - a timing printout against the bf16 GEMV at Qwen3-4B's shapes (not asserted: `kestrel bench` is
//!   where speed is claimed).
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1.

mod common;

use common::Rng;
use kestrel::quant::q4_0::BlockQ4_0;
use kestrel::quant::q8_0::BlockQ8_0;
use kestrel::quant::{Block, QuantizeBlock};
use kestrel_cuda::cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};
use kestrel_cuda::dtype::{to_bf16, to_f32};
use kestrel_cuda::ops::gemv::{gemv_bf16_fused, Accumulate, GemvNorm};
use kestrel_cuda::ops::gemv_quant::{gemv_quant, repack_q4_0, repack_q8_0, QuantFormat};
use kestrel_cuda::{Bf16, CudaDevice};

fn device() -> Option<CudaDevice> {
    common::open_or_skip(CudaDevice::open(0))
}

fn unit(g: &mut Rng) -> f32 {
    (g.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}
fn normal(g: &mut Rng) -> f32 {
    let (u1, u2) = ((unit(g) as f64).max(1e-12), unit(g) as f64);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}
fn round_bf16(x: f32) -> f32 {
    Bf16::from_f32(x).to_f32()
}
fn bf16_ulp(x: f32) -> f32 {
    2f32.powi(x.abs().max(f32::MIN_POSITIVE).log2().floor() as i32 - 7)
}
/// bf16-rounded normal values times `scale`.
fn activations(g: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| round_bf16(normal(g) * scale)).collect()
}
fn upload<T: DeviceRepr>(dev: &CudaDevice, host: &[T]) -> CudaSlice<T> {
    dev.stream().clone_htod(host).unwrap()
}
fn download(dev: &CudaDevice, d: &CudaSlice<Bf16>) -> Vec<f32> {
    to_f32(&dev.stream().clone_dtoh(d).unwrap())
}

/// Quantized weights on the device and their dequantized values on the host.
struct QWeights {
    format: QuantFormat,
    qs: CudaSlice<u8>,
    scales: CudaSlice<u16>,
    values: Vec<f32>,
}

fn dequantized<B: Block>(blocks: &[B]) -> Vec<f32> {
    let mut values = vec![0.0f32; blocks.len() * 32];
    for (b, out) in blocks.iter().zip(values.chunks_mut(32)) {
        b.dequantize(out);
    }
    values
}

/// `w` quantized by the CPU quantizer in `format`, uploaded in the kernel's layout.
fn quantized(dev: &CudaDevice, format: QuantFormat, w: &[f32]) -> QWeights {
    fn blocks<B: QuantizeBlock + Copy>(w: &[f32], zero: B) -> Vec<B> {
        let mut out = vec![zero; w.len() / 32];
        for (b, src) in out.iter_mut().zip(w.chunks(32)) {
            B::quantize(src, b);
        }
        out
    }
    match format {
        QuantFormat::Q8_0 => {
            let b = blocks(
                w,
                BlockQ8_0 {
                    d: [0; 2],
                    qs: [0; 32],
                },
            );
            upload_blocks(dev, format, repack_q8_0(&b), dequantized(&b))
        }
        QuantFormat::Q4_0 => {
            let b = blocks(
                w,
                BlockQ4_0 {
                    d: [0; 2],
                    qs: [0; 16],
                },
            );
            upload_blocks(dev, format, repack_q4_0(&b), dequantized(&b))
        }
    }
}

fn upload_blocks(
    dev: &CudaDevice,
    format: QuantFormat,
    (qs, scales): (Vec<u8>, Vec<u16>),
    values: Vec<f32>,
) -> QWeights {
    QWeights {
        format,
        qs: upload(dev, &qs),
        scales: upload(dev, &scales),
        values,
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    dev: &CudaDevice,
    w: &QWeights,
    x: &CudaSlice<Bf16>,
    norm: Option<GemvNorm<'_>>,
    bias: Option<&dyn DevicePtr<f32>>,
    k: usize,
    y: &mut CudaSlice<Bf16>,
    mode: Accumulate,
) {
    gemv_quant(dev, w.format, x, norm, &w.qs, &w.scales, bias, k, y, mode).unwrap();
}

#[test]
fn quant_gemv_matches_f64_dot_products_of_the_dequantized_weights() {
    let Some(dev) = device() else { return };
    let mut g = Rng::new("quant_gemv_f64");
    // (in, out, tokens, bias, mode): Qwen3 shapes, few rows, ragged K-slices, 8 tokens
    let cases = [
        (1024, 3072, 1, false, Accumulate::Overwrite),
        (2560, 1000, 3, true, Accumulate::Overwrite),
        (9728, 2560, 1, false, Accumulate::AddToOutput),
        (1024, 96, 8, true, Accumulate::Overwrite),
        (96, 40, 2, false, Accumulate::AddToOutput),
    ];
    for ((k, n, tokens, with_bias, mode), format) in cases
        .into_iter()
        .flat_map(|c| [(c, QuantFormat::Q8_0), (c, QuantFormat::Q4_0)])
    {
        let q = quantized(&dev, format, &activations(&mut g, n * k, 0.02));
        let x = activations(&mut g, tokens * k, 1.0);
        let bias: Vec<f32> = (0..n).map(|_| round_bf16(0.1 * normal(&mut g))).collect();
        let y0 = activations(&mut g, tokens * n, 1.0);
        let mut y = match mode {
            Accumulate::AddToOutput => upload(&dev, &to_bf16(&y0)),
            _ => upload(&dev, &vec![Bf16::NAN; tokens * n]),
        };
        let d_bias = upload(&dev, &bias);
        let bias_arg = with_bias.then_some(&d_bias as &dyn DevicePtr<f32>);
        let d_x = upload(&dev, &to_bf16(&x));
        run(&dev, &q, &d_x, None, bias_arg, k, &mut y, mode);
        let got = download(&dev, &y);
        let mut exact = 0;
        for t in 0..tokens {
            for r in 0..n {
                let (xr, wr) = (&x[t * k..][..k], &q.values[r * k..][..k]);
                let dot: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                let abs: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let v = (dot + if with_bias { bias[r] as f64 } else { 0.0 }) as f32;
                let (want, flip) = match mode {
                    Accumulate::AddToOutput => {
                        (round_bf16(y0[t * n + r] + round_bf16(v)), bf16_ulp(v))
                    }
                    _ => (round_bf16(v), 0.0),
                };
                let tol = 2.0 * bf16_ulp(want) + flip + 2.0 * (abs * 2f64.powi(-20)) as f32;
                let got = got[t * n + r];
                assert!(
                    (got - want).abs() <= tol,
                    "{format:?} in {k} out {n} tokens {tokens} {mode:?}: [{t}, {r}] got {got} want {want}"
                );
                exact += (got == want) as usize;
            }
        }
        assert!(
            exact * 10 >= tokens * n * 9,
            "{format:?} in {k} out {n}: only {exact} of {} bit-equal to the rounded reference",
            tokens * n
        );
    }
}

/// `count` blocks of `format` whose scales are powers of two: every dequantized weight is exactly a
/// bf16 value.
fn exact(dev: &CudaDevice, g: &mut Rng, format: QuantFormat, count: usize) -> QWeights {
    fn scale(g: &mut Rng) -> [u8; 2] {
        half::f16::from_f32(2f32.powi(-7 - g.below(4) as i32)).to_le_bytes()
    }
    match format {
        QuantFormat::Q8_0 => {
            let b: Vec<BlockQ8_0> = (0..count)
                .map(|_| BlockQ8_0 {
                    d: scale(g),
                    qs: std::array::from_fn(|_| (g.below(255) as i32 - 127) as i8),
                })
                .collect();
            upload_blocks(dev, format, repack_q8_0(&b), dequantized(&b))
        }
        QuantFormat::Q4_0 => {
            let b: Vec<BlockQ4_0> = (0..count)
                .map(|_| BlockQ4_0 {
                    d: scale(g),
                    qs: std::array::from_fn(|_| g.below(256) as u8),
                })
                .collect();
            upload_blocks(dev, format, repack_q4_0(&b), dequantized(&b))
        }
    }
}

#[test]
fn quant_gemv_fused_modes_match_the_bf16_gemv_on_the_same_weights() {
    let Some(dev) = device() else { return };
    let mut g = Rng::new("quant_gemv_fused");
    // (in, weight rows, tokens, norm, mode) as the bf16 fused-GEMV test: qkv, gate_up with the input
    // norm, o_proj / down adds, SwiGLU without a norm
    let cases = [
        (1024, 4096, 1, true, Accumulate::Overwrite),
        (1024, 6144, 1, true, Accumulate::SwiGlu),
        (2560, 19_456, 2, true, Accumulate::SwiGlu),
        (2048, 1024, 4, true, Accumulate::AddToOutput),
        (3072, 1024, 1, false, Accumulate::AddToOutput),
        (1024, 6144, 8, false, Accumulate::SwiGlu),
    ];
    for ((k, n, tokens, with_norm, mode), format) in cases
        .into_iter()
        .flat_map(|c| [(c, QuantFormat::Q8_0), (c, QuantFormat::Q4_0)])
    {
        let q = exact(&dev, &mut g, format, n * k / 32);
        let w_bf16 = upload(&dev, &to_bf16(&q.values));
        let x = upload(&dev, &to_bf16(&activations(&mut g, tokens * k, 1.0)));
        let norm_w: Vec<f32> = (0..k).map(|_| 1.0 + 0.5 * normal(&mut g)).collect();
        let d_norm = upload(&dev, &norm_w);
        let norm = with_norm.then_some(GemvNorm {
            weight: &d_norm,
            eps: 1e-6,
        });
        let out = if mode == Accumulate::SwiGlu { n / 2 } else { n };
        let y0 = to_bf16(&activations(&mut g, tokens * out, 1.0));
        let (mut y_q, mut y_b) = (upload(&dev, &y0), upload(&dev, &y0));
        run(&dev, &q, &x, norm, None, k, &mut y_q, mode);
        gemv_bf16_fused(&dev, &x, norm, &w_bf16, None, k, &mut y_b, mode).unwrap();
        let (got, want) = (download(&dev, &y_q), download(&dev, &y_b));
        let mut exact = 0;
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            // the same products summed in another grouping: a rounding step apart at most, twice
            // through SwiGLU's three roundings
            let tol = 3.0 * bf16_ulp(b) + 1e-6;
            assert!(
                (a - b).abs() <= tol,
                "{format:?} in {k} rows {n} tokens {tokens} norm {with_norm} {mode:?}: [{i}] {a} vs bf16 {b}"
            );
            exact += (a == b) as usize;
        }
        assert!(
            exact * 10 >= got.len() * 9,
            "{format:?} in {k} rows {n} {mode:?}: only {exact} of {} bit-equal",
            got.len()
        );
    }
}

#[test]
fn timing() {
    let Some(dev) = device() else { return };
    let mut g = Rng::new("q8_0_gemv_timing");
    // Qwen3-4B's decode GEMVs at batch 1: qkv (+ norm), o_proj (+ residual), gate_up (+ norm,
    // SwiGLU), down (+ residual), lm_head
    let shapes = [
        ("qkv", 2560, 6144, Accumulate::Overwrite),
        ("o_proj", 4096, 2560, Accumulate::AddToOutput),
        ("gate_up", 2560, 19_456, Accumulate::SwiGlu),
        ("down", 9728, 2560, Accumulate::AddToOutput),
        ("lm_head", 2560, 151_936, Accumulate::Overwrite),
    ];
    let s = dev.stream();
    for (name, k, n, mode) in shapes {
        let q8 = exact(&dev, &mut g, QuantFormat::Q8_0, n * k / 32);
        let q4 = exact(&dev, &mut g, QuantFormat::Q4_0, n * k / 32);
        let w_bf16 = upload(&dev, &to_bf16(&q8.values));
        let x = upload(&dev, &to_bf16(&activations(&mut g, k, 1.0)));
        let out = if mode == Accumulate::SwiGlu { n / 2 } else { n };
        let mut y = upload(&dev, &to_bf16(&vec![0.0f32; out]));
        let reps = 200;
        let time = |f: &mut dyn FnMut()| {
            for _ in 0..10 {
                f();
            }
            s.synchronize().unwrap();
            let t = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            s.synchronize().unwrap();
            t.elapsed().as_secs_f64() * 1e6 / reps as f64
        };
        let t_q8 = time(&mut || run(&dev, &q8, &x, None, None, k, &mut y, mode));
        let t_q4 = time(&mut || run(&dev, &q4, &x, None, None, k, &mut y, mode));
        let t_b =
            time(&mut || gemv_bf16_fused(&dev, &x, None, &w_bf16, None, k, &mut y, mode).unwrap());
        let scale_bytes = n * k / 16;
        let gbs = |bytes: usize, t: f64| bytes as f64 / t * 1e-3;
        eprintln!(
            "{name} {k} -> {n}: Q8_0 {t_q8:.1} us ({:.0} GB/s), Q4_0 {t_q4:.1} us ({:.0} GB/s), \
             bf16 {t_b:.1} us ({:.0} GB/s)",
            gbs(n * k + scale_bytes, t_q8),
            gbs(n * k / 2 + scale_bytes, t_q4),
            gbs(n * k * 2, t_b)
        );
    }
}
