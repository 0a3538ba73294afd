//! Every CUDA op against a plain CPU reference on fresh random inputs, at several shapes including
//! Qwen3-0.6B / 4B sizes. Outputs are poisoned with NaN before each run, so an element the kernel
//! fails to write shows. The reference rounds to bf16 where HF's bf16 model does; the bounds allow a
//! bf16 rounding to fall the other way (f32 sums in another order, `rsqrtf`, `expf`) and each test also
//! demands that nearly all elements match exactly, which catches a rounding point done differently.
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1. A run prints its random
//! seed; KESTREL_TEST_SEED=<seed> repeats it.

mod common;

use common::Rng;

use std::sync::OnceLock;

use kestrel_cuda::cudarc::driver::{CudaSlice, DeviceRepr};
use kestrel_cuda::dtype::{to_bf16, to_f32};
use kestrel_cuda::ops::embedding::embedding;
use kestrel_cuda::ops::gemv::{
    gemv_bf16, gemv_bf16_fused, gemv_bf16_with, Accumulate, GemvKernel, GemvNorm,
};
use kestrel_cuda::ops::norm::{add_rms_norm, rms_norm};
use kestrel_cuda::ops::qk_norm_rope_kv::{qk_norm_rope_kv, HeadShape, QkNormRopeInputs};
use kestrel_cuda::ops::silu_mul::silu_mul;
use kestrel_cuda::{Bf16, CudaDevice, CudaError};

// ---------------------------------------------------------------------------------------------
// Harness

fn device() -> Option<&'static CudaDevice> {
    static DEV: OnceLock<Option<CudaDevice>> = OnceLock::new();
    DEV.get_or_init(|| {
        common::open_or_skip(CudaDevice::open(0)).inspect(|d| {
            eprintln!(
                "GPU 0: {} (compute {}.{}, {} MiB), kernels for {}",
                d.name(),
                d.compute_capability().0,
                d.compute_capability().1,
                d.total_memory() >> 20,
                d.arch()
            );
        })
    })
    .as_ref()
}

/// The value distributions these tests draw from the shared seeded generator.
trait OpDraws {
    fn uniform(&mut self) -> f32;
    fn normal(&mut self) -> f32;
    fn activations(&mut self, n: usize, scale: f32) -> Vec<f32>;
}

impl OpDraws for Rng {
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
    /// Normal values times `scale`, with 1% outliers 30x larger (real activations have them);
    /// rounded to bf16 so that host and device start from the same numbers.
    fn activations(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let outlier = if self.uniform() < 0.01 { 30.0 } else { 1.0 };
                round_bf16(self.normal() * scale * outlier)
            })
            .collect()
    }
}

fn round_bf16(x: f32) -> f32 {
    Bf16::from_f32(x).to_f32()
}

/// The spacing of bf16 values at `x` (one unit in the last place).
fn bf16_ulp(x: f32) -> f32 {
    let a = x.abs().max(f32::MIN_POSITIVE);
    2f32.powi(a.log2().floor() as i32 - 7)
}

fn upload<T: DeviceRepr>(dev: &CudaDevice, host: &[T]) -> CudaSlice<T> {
    dev.stream().clone_htod(host).unwrap()
}
fn upload_bf16(dev: &CudaDevice, host: &[f32]) -> CudaSlice<Bf16> {
    upload(dev, &to_bf16(host))
}
fn poisoned(dev: &CudaDevice, n: usize) -> CudaSlice<Bf16> {
    upload(dev, &vec![Bf16::NAN; n])
}
fn download(dev: &CudaDevice, d: &CudaSlice<Bf16>) -> Vec<f32> {
    to_f32(&dev.stream().clone_dtoh(d).unwrap())
}

/// Every element within `tol(i, want)` of the reference (NaN never is), and at least `min_exact` of
/// them bit-equal.
fn assert_close(
    what: &str,
    got: &[f32],
    want: &[f32],
    min_exact: f64,
    tol: impl Fn(usize, f32) -> f32,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut bad = Vec::new();
    let mut exact = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g == w || (g.is_nan() && w.is_nan()) {
            exact += 1;
        } else if g.is_nan() || w.is_nan() || (g - w).abs() > tol(i, w) {
            bad.push((i, g, w));
        }
    }
    let shown: Vec<String> = bad
        .iter()
        .take(8)
        .map(|(i, g, w)| format!("[{i}] got {g} want {w}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} elements out of bounds: {}",
        bad.len(),
        want.len(),
        shown.join(", ")
    );
    let frac = exact as f64 / want.len().max(1) as f64;
    assert!(
        frac >= min_exact,
        "{what}: only {:.4} of the elements match exactly (want >= {min_exact})",
        frac
    );
}

// ---------------------------------------------------------------------------------------------
// CPU references (HF's bf16 rounding points)

/// Qwen3RMSNorm in bf16: n = bf16(x * rsqrt(mean(x^2) + eps)); out = bf16(w * n).
fn ref_rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let h = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(h) {
        let ms = (row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / h as f64) as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(
            row.iter()
                .zip(w)
                .map(|(&v, &w)| round_bf16(w * round_bf16(v * inv))),
        );
    }
    out
}

fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn opening_a_device_never_panics() {
    // On a machine without a driver or GPU this is Ok(None); with one, the GPU's description.
    match CudaDevice::open(0) {
        Ok(Some(d)) => {
            assert!(d.total_memory() > 0);
            assert!(d.compute_capability() >= (7, 5), "{d:?}");
            let (free, total) = d.memory_info().unwrap();
            assert!(free <= total && total == d.total_memory());
        }
        Ok(None) => eprintln!("no GPU here"),
        Err(e) => eprintln!("GPU failed to open: {e}"),
    }
}

#[test]
fn embedding_matches_the_table() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("embedding");
    for (vocab, hidden, tokens) in [(1000, 1024, 1), (4096, 2560, 9), (151_936, 1024, 17)] {
        let table = rng.activations(vocab * hidden, 0.05);
        let mut ids: Vec<u32> = (0..tokens).map(|_| rng.below(vocab) as u32).collect();
        ids[0] = (vocab - 1) as u32;
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| table[id as usize * hidden..][..hidden].iter().copied())
            .collect();
        let d_ids = upload(dev, &ids);
        let mut out = poisoned(dev, tokens * hidden);
        embedding(dev, &upload_bf16(dev, &table), hidden, &d_ids, &mut out).unwrap();
        assert_close(
            "embedding bf16",
            &download(dev, &out),
            &want,
            1.0,
            |_, _| 0.0,
        );
        if vocab * hidden <= 16 << 20 {
            // an f32 table is rounded to bf16 once
            let table_f32: Vec<f32> = table.iter().map(|v| v + rng.normal() * 1e-4).collect();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&id| {
                    table_f32[id as usize * hidden..][..hidden]
                        .iter()
                        .map(|&v| round_bf16(v))
                })
                .collect();
            let mut out = poisoned(dev, tokens * hidden);
            embedding(dev, &upload(dev, &table_f32), hidden, &d_ids, &mut out).unwrap();
            assert_close("embedding f32", &download(dev, &out), &want, 1.0, |_, _| {
                0.0
            });
        }
    }
    // an id past the vocabulary gives a NaN row, not a read out of bounds
    let mut out = poisoned(dev, 2 * 64);
    let table = upload_bf16(dev, &vec![1.0; 10 * 64]);
    embedding(dev, &table, 64, &upload(dev, &[3u32, 10]), &mut out).unwrap();
    let got = download(dev, &out);
    assert!(got[..64].iter().all(|&v| v == 1.0) && got[64..].iter().all(|v| v.is_nan()));
}

#[test]
fn rms_norm_matches_hf_rounding() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("rms_norm");
    for hidden in [128, 1024, 2560, 4096] {
        for rows in [1, 5, 33] {
            let x = rng.activations(rows * hidden, 1.0);
            // hidden 128 stands in for Qwen3's k_norm, whose gains reach ~100
            let gain = if hidden == 128 { 60.0 } else { 1.0 };
            let w: Vec<f32> = (0..hidden)
                .map(|_| round_bf16(gain * (1.0 + 0.3 * rng.normal()).abs()))
                .collect();
            let want = ref_rms_norm(&x, &w, 1e-6);
            let mut out = poisoned(dev, rows * hidden);
            rms_norm(dev, &upload_bf16(dev, &x), &upload(dev, &w), 1e-6, &mut out).unwrap();
            let what = format!("rms_norm rows {rows} hidden {hidden}");
            assert_close(&what, &download(dev, &out), &want, 0.98, |_, w| {
                2.0 * bf16_ulp(w)
            });
        }
    }
}

#[test]
fn add_rms_norm_carries_the_residual() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("add_rms_norm");
    for hidden in [1024, 2560] {
        for rows in [1, 4, 19] {
            let residual = rng.activations(rows * hidden, 1.0);
            let x = rng.activations(rows * hidden, 0.5);
            let w: Vec<f32> = (0..hidden)
                .map(|_| round_bf16(1.0 + 0.3 * rng.normal()))
                .collect();
            let sum: Vec<f32> = residual
                .iter()
                .zip(&x)
                .map(|(a, b)| round_bf16(a + b))
                .collect();
            let want = ref_rms_norm(&sum, &w, 1e-6);
            let mut d_res = upload_bf16(dev, &residual);
            let mut out = poisoned(dev, rows * hidden);
            add_rms_norm(
                dev,
                &mut d_res,
                &upload_bf16(dev, &x),
                &upload(dev, &w),
                1e-6,
                &mut out,
            )
            .unwrap();
            let what = format!("add_rms_norm rows {rows} hidden {hidden}");
            assert_close(
                &format!("{what} residual"),
                &download(dev, &d_res),
                &sum,
                1.0,
                |_, _| 0.0,
            );
            assert_close(&what, &download(dev, &out), &want, 0.98, |_, w| {
                2.0 * bf16_ulp(w)
            });
        }
    }
}

#[test]
fn silu_mul_matches_hf_rounding() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("silu_mul");
    for inter in [8, 3072, 9728] {
        for tokens in [1, 4, 7] {
            let gate_up = rng.activations(tokens * 2 * inter, 2.0);
            let want: Vec<f32> = gate_up
                .chunks(2 * inter)
                .flat_map(|row| {
                    let (g, u) = row.split_at(inter);
                    g.iter()
                        .zip(u)
                        .map(|(&g, &u)| round_bf16(round_bf16(g / (1.0 + (-g).exp())) * u))
                        .collect::<Vec<_>>()
                })
                .collect();
            let mut out = poisoned(dev, tokens * inter);
            silu_mul(dev, &upload_bf16(dev, &gate_up), inter, &mut out).unwrap();
            let what = format!("silu_mul tokens {tokens} inter {inter}");
            assert_close(&what, &download(dev, &out), &want, 0.98, |_, w| {
                2.0 * bf16_ulp(w)
            });
        }
    }
}

#[test]
fn gemv_matches_f64_dot_products() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("gemv_bf16");
    // (in, out, tokens, bias, accumulate): Qwen3-0.6B qkv / gate_up / o_proj / down / lm_head,
    // Qwen3-4B qkv / o_proj / gate_up / down, Qwen2.5-0.5B qkv (with bias), and ragged tails; each
    // through the kernel chosen by shape
    let cases = [
        (1024, 4096, 1, false, Accumulate::Overwrite),
        (1024, 6144, 3, false, Accumulate::Overwrite),
        (2048, 1024, 1, false, Accumulate::AddToOutput),
        (3072, 1024, 2, false, Accumulate::AddToOutput),
        (1024, 151_936, 1, false, Accumulate::Overwrite),
        (2560, 6144, 1, false, Accumulate::Overwrite),
        (4096, 2560, 1, false, Accumulate::AddToOutput),
        (2560, 19_456, 1, false, Accumulate::Overwrite),
        (9728, 2560, 2, false, Accumulate::AddToOutput),
        (9728, 2560, 8, false, Accumulate::AddToOutput),
        (896, 1152, 2, true, Accumulate::Overwrite),
        (8, 5, 3, true, Accumulate::AddToOutput),
        (264, 13, 1, false, Accumulate::Overwrite),
        // more tokens than the tiled kernels take: the warp-rows kernel
        (1024, 1024, 11, true, Accumulate::Overwrite),
    ];
    for (k, n, tokens, with_bias, mode) in cases {
        check_gemv(
            dev,
            &mut rng,
            (k, n, tokens),
            with_bias,
            mode,
            GemvKernel::Auto,
        );
    }
    // every kernel and K-split at every token count, on a K that splits unevenly (1216 chunks over 8
    // warps: slices of 152 rounded to 160, the last one short) and on ragged tiny shapes
    let mut kernels = vec![GemvKernel::WarpRows];
    kernels.extend([1, 2, 4, 8].map(|k_split| GemvKernel::Tiled { k_split }));
    for kernel in kernels {
        for tokens in 1..=8 {
            let mode = if tokens % 2 == 0 {
                Accumulate::AddToOutput
            } else {
                Accumulate::Overwrite
            };
            check_gemv(dev, &mut rng, (9728, 37, tokens), tokens == 3, mode, kernel);
            check_gemv(dev, &mut rng, (1024, 67, tokens), tokens == 5, mode, kernel);
            check_gemv(dev, &mut rng, (8, 3, tokens), true, mode, kernel);
            check_gemv(dev, &mut rng, (264, 17, tokens), false, mode, kernel);
        }
        check_gemv(
            dev,
            &mut rng,
            (2048, 1024, 1),
            false,
            Accumulate::AddToOutput,
            kernel,
        );
    }
}

/// One GEMV of `(in, out, tokens)` against f64 dot products.
fn check_gemv(
    dev: &CudaDevice,
    rng: &mut Rng,
    (k, n, tokens): (usize, usize, usize),
    with_bias: bool,
    mode: Accumulate,
    kernel: GemvKernel,
) {
    let x = rng.activations(tokens * k, 1.0);
    let w = rng.activations(n * k, 0.02);
    let bias: Vec<f32> = (0..n).map(|_| round_bf16(0.1 * rng.normal())).collect();
    let y0 = rng.activations(tokens * n, 1.0);
    let mut want = Vec::with_capacity(tokens * n);
    let mut tol = Vec::with_capacity(tokens * n);
    for t in 0..tokens {
        let xr = &x[t * k..][..k];
        for r in 0..n {
            let wr = &w[r * k..][..k];
            let (dot, abs) = common::dot_f64(xr, wr);
            let v = (dot + if with_bias { bias[r] as f64 } else { 0.0 }) as f32;
            // f32 accumulation in another order: a loose bound on its error
            let acc_err = (abs * 2f64.powi(-20)) as f32;
            let (out, inner_flip) = match mode {
                Accumulate::Overwrite => (round_bf16(v), 0.0),
                // bf16(v) may round the other way before the add, moving the sum by an ulp of v
                Accumulate::AddToOutput => (round_bf16(y0[t * n + r] + round_bf16(v)), bf16_ulp(v)),
                Accumulate::SwiGlu => unreachable!("check_fused_gemv covers SwiGLU"),
            };
            want.push(out);
            tol.push(2.0 * bf16_ulp(out) + inner_flip + 2.0 * acc_err);
        }
    }
    let mut y = match mode {
        Accumulate::AddToOutput => upload_bf16(dev, &y0),
        _ => poisoned(dev, tokens * n),
    };
    let d_bias = upload(dev, &bias);
    let bias_arg =
        with_bias.then_some(&d_bias as &dyn kestrel_cuda::cudarc::driver::DevicePtr<f32>);
    gemv_bf16_with(
        dev,
        &upload_bf16(dev, &x),
        &upload_bf16(dev, &w),
        bias_arg,
        k,
        &mut y,
        mode,
        kernel,
    )
    .unwrap();
    let what = format!("gemv in {k} out {n} tokens {tokens} bias {with_bias} {mode:?} {kernel:?}");
    // tiny outputs: a single flipped rounding is a large fraction
    let min_exact = if tokens * n < 100 { 0.5 } else { 0.9 };
    assert_close(&what, &download(dev, &y), &want, min_exact, |i, _| tol[i]);
}

#[test]
fn fused_norm_and_swiglu_gemv_match_the_reference() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("gemv_fused");
    // (in, weight rows, tokens, norm, mode): Qwen3-0.6B / 4B qkv and gate_up with their input norms,
    // o_proj-like adds after a norm, SwiGLU without a norm, and ragged tails
    let cases = [
        (1024, 4096, 1, true, Accumulate::Overwrite),
        (1024, 6144, 1, true, Accumulate::SwiGlu),
        (2560, 6144, 3, true, Accumulate::Overwrite),
        (2560, 19_456, 2, true, Accumulate::SwiGlu),
        (1024, 151_936, 1, true, Accumulate::Overwrite),
        (2048, 1024, 4, true, Accumulate::AddToOutput),
        (1024, 6144, 8, false, Accumulate::SwiGlu),
        (2560, 6144, 8, true, Accumulate::SwiGlu),
        (264, 26, 5, true, Accumulate::SwiGlu),
        (8, 6, 7, true, Accumulate::Overwrite),
        (1216, 74, 6, false, Accumulate::SwiGlu),
    ];
    for (k, n, tokens, norm, mode) in cases {
        check_fused_gemv(dev, &mut rng, (k, n, tokens), norm, mode);
    }
}

/// One fused GEMV against the CPU reference: HF's bf16 RMSNorm (with Qwen3-like gains, some large),
/// then f64 dot products, then the epilogue with HF's rounding.
fn check_fused_gemv(
    dev: &CudaDevice,
    rng: &mut Rng,
    (k, n, tokens): (usize, usize, usize),
    with_norm: bool,
    mode: Accumulate,
) {
    let eps = 1e-6;
    let x = rng.activations(tokens * k, 1.0);
    let nw: Vec<f32> = (0..k)
        .map(|i| round_bf16((if i % 97 == 0 { 20.0 } else { 1.0 }) * (1.0 + 0.3 * rng.normal())))
        .collect();
    let w = rng.activations(n * k, 0.02);
    let y0 = rng.activations(tokens * n, 1.0);
    let xin = if with_norm {
        ref_rms_norm(&x, &nw, eps)
    } else {
        x.clone()
    };
    // A norm computed with f32 sums in another order may round an input the other way: allow one
    // flipped input element of the largest size per dot product.
    let flip = if with_norm {
        let xmax = xin.iter().fold(0f32, |m, v| m.max(v.abs()));
        let wmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        wmax * bf16_ulp(xmax)
    } else {
        0.0
    };
    // (bf16 value, its tolerance) of each (token, weight row) dot product
    let dot = |t: usize, r: usize| -> (f32, f32) {
        let (xr, wr) = (&xin[t * k..][..k], &w[r * k..][..k]);
        let d: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
        let abs: f64 = xr
            .iter()
            .zip(wr)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum();
        let v = d as f32;
        (v, (abs * 2f64.powi(-20)) as f32 + flip)
    };
    let rows = if mode == Accumulate::SwiGlu { n / 2 } else { n };
    let (mut want, mut tol) = (Vec::new(), Vec::new());
    for t in 0..tokens {
        for r in 0..rows {
            let (out, err) = match mode {
                Accumulate::Overwrite => {
                    let (v, e) = dot(t, r);
                    (round_bf16(v), 2.0 * e)
                }
                Accumulate::AddToOutput => {
                    let (v, e) = dot(t, r);
                    (
                        round_bf16(y0[t * n + r] + round_bf16(v)),
                        bf16_ulp(v) + 2.0 * e,
                    )
                }
                Accumulate::SwiGlu => {
                    let ((g, eg), (u, eu)) = (dot(t, r), dot(t, rows + r));
                    let (g, u) = (round_bf16(g), round_bf16(u));
                    let s = round_bf16(g / (1.0 + (-g).exp()));
                    // silu' <= 1.1; each input may also round the other way
                    let err = 1.1 * u.abs() * (eg + bf16_ulp(g)) + s.abs() * (eu + bf16_ulp(u));
                    (round_bf16(s * u), err + bf16_ulp(s) * u.abs())
                }
            };
            want.push(out);
            tol.push(2.0 * bf16_ulp(out) + err);
        }
    }
    let mut y = match mode {
        Accumulate::AddToOutput => upload_bf16(dev, &y0),
        _ => poisoned(dev, tokens * rows),
    };
    let d_nw = upload(dev, &nw);
    let norm = with_norm.then_some(GemvNorm { weight: &d_nw, eps });
    gemv_bf16_fused(
        dev,
        &upload_bf16(dev, &x),
        norm,
        &upload_bf16(dev, &w),
        None,
        k,
        &mut y,
        mode,
    )
    .unwrap();
    let what = format!("fused gemv in {k} rows {n} tokens {tokens} norm {with_norm} {mode:?}");
    let min_exact = if tokens * rows < 100 { 0.5 } else { 0.9 };
    assert_close(&what, &download(dev, &y), &want, min_exact, |i, _| tol[i]);
}

#[test]
fn qk_norm_rope_kv_matches_the_reference_and_writes_only_its_slots() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("qk_norm_rope_kv");
    let (block_size, num_blocks, theta, eps) = (16, 40, 1_000_000.0f32, 1e-6f32);
    let slots = block_size * num_blocks;
    // (heads, kv heads, head_dim, q/k norms, tokens): Qwen3-0.6B, Qwen3-4B, Qwen2.5-0.5B (no norms),
    // the tiny test models (head_dim 32: half the lanes hold no pair) and a head_dim not a power of 2
    let cases = [
        (4, 2, 32, true, 9),
        (6, 3, 48, true, 4),
        (16, 8, 128, true, 1),
        (16, 8, 128, true, 7),
        (32, 8, 128, true, 5),
        (14, 2, 64, false, 6),
        (8, 4, 256, true, 3),
    ];
    for (nh, nkv, hd, norms, tokens) in cases {
        let row = (nh + 2 * nkv) * hd;
        let kvd = nkv * hd;
        let qkv = rng.activations(tokens * row, 2.0);
        let positions: Vec<u32> = (0..tokens).map(|_| rng.below(40_960) as u32).collect();
        let mut slot_mapping = Vec::new();
        while slot_mapping.len() < tokens {
            let s = rng.below(slots) as u32;
            if !slot_mapping.contains(&s) {
                slot_mapping.push(s);
            }
        }
        if tokens > 1 {
            slot_mapping[tokens - 1] = u32::MAX; // a padding token: q only, no cache write
        }
        let q_w: Vec<f32> = (0..hd)
            .map(|_| round_bf16(1.0 + 0.3 * rng.normal()))
            .collect();
        // k_norm gains near 100, as in real Qwen3 checkpoints
        let k_w: Vec<f32> = (0..hd)
            .map(|_| round_bf16(10.0 + 90.0 * rng.uniform()))
            .collect();
        let freqs = inv_freq(hd, theta);

        // reference
        let half = hd / 2;
        let mut want_q = vec![f32::NAN; tokens * nh * hd];
        let mut want_k = vec![f32::NAN; slots * kvd];
        let mut want_v = vec![f32::NAN; slots * kvd];
        let mut head_max = vec![0f32; tokens * (nh + nkv)];
        for t in 0..tokens {
            for h in 0..nh + nkv {
                let mut x = qkv[t * row + h * hd..][..hd].to_vec();
                if norms {
                    let w = if h < nh { &q_w } else { &k_w };
                    x = ref_rms_norm(&x, w, eps);
                }
                head_max[t * (nh + nkv) + h] = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let mut out = vec![0f32; hd];
                for i in 0..half {
                    let angle = (positions[t] as f32 * freqs[i]) as f64;
                    let (s, c) = angle.sin_cos();
                    let (a, b) = (x[i] as f64, x[i + half] as f64);
                    out[i] = round_bf16((a * c - b * s) as f32);
                    out[i + half] = round_bf16((b * c + a * s) as f32);
                }
                if h < nh {
                    want_q[t * nh * hd + h * hd..][..hd].copy_from_slice(&out);
                } else if slot_mapping[t] != u32::MAX {
                    let (kh, slot) = (h - nh, slot_mapping[t] as usize);
                    want_k[slot * kvd + kh * hd..][..hd].copy_from_slice(&out);
                    let v = &qkv[t * row + (nh + nkv + kh) * hd..][..hd];
                    want_v[slot * kvd + kh * hd..][..hd].copy_from_slice(v);
                }
            }
        }

        let (d_qkv, d_pos, d_slots) = (
            upload_bf16(dev, &qkv),
            upload(dev, &positions),
            upload(dev, &slot_mapping),
        );
        let (d_freq, d_qw, d_kw) = (upload(dev, &freqs), upload(dev, &q_w), upload(dev, &k_w));
        let inputs = QkNormRopeInputs {
            qkv: &d_qkv,
            positions: &d_pos,
            slot_mapping: &d_slots,
            inv_freq: &d_freq,
            q_norm: norms.then_some(&d_qw),
            k_norm: norms.then_some(&d_kw),
            rms_norm_eps: eps,
        };
        let mut q = poisoned(dev, tokens * nh * hd);
        let mut k_cache = poisoned(dev, slots * kvd);
        let mut v_cache = poisoned(dev, slots * kvd);
        let shape = HeadShape {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        };
        qk_norm_rope_kv(dev, shape, &inputs, &mut q, &mut k_cache, &mut v_cache).unwrap();

        let what =
            format!("qk_norm_rope_kv heads {nh}/{nkv} head_dim {hd} norms {norms} tokens {tokens}");
        // a bf16 rounding of the normed input may fall the other way: allow an ulp of the head's
        // largest element on top of the output's own
        let q_tol = |i: usize, w: f32| {
            let (t, h) = (i / (nh * hd), i % (nh * hd) / hd);
            2.0 * bf16_ulp(w) + 2.0 * bf16_ulp(head_max[t * (nh + nkv) + h])
        };
        assert_close(
            &format!("{what}: q"),
            &download(dev, &q),
            &want_q,
            0.95,
            q_tol,
        );
        let max_k = head_max
            .chunks(nh + nkv)
            .flat_map(|c| c[nh..].iter().copied())
            .fold(0f32, f32::max);
        // unwritten slots must still hold NaN: assert_close treats NaN == NaN as exact
        assert_close(
            &format!("{what}: k cache"),
            &download(dev, &k_cache),
            &want_k,
            0.95,
            |_, w| 2.0 * bf16_ulp(w) + 2.0 * bf16_ulp(max_k),
        );
        assert_close(
            &format!("{what}: v cache"),
            &download(dev, &v_cache),
            &want_v,
            1.0,
            |_, _| 0.0,
        );
    }
}

#[test]
fn wrappers_refuse_bad_shapes() {
    let Some(dev) = device() else { return };
    let x = upload_bf16(dev, &[0.0; 1024]);
    let w = upload(dev, &[1.0f32; 1000]);
    let mut out = poisoned(dev, 1024);
    let err = rms_norm(dev, &x, &w, 1e-6, &mut out).unwrap_err();
    assert!(
        matches!(err, CudaError::Shape { op: "rms_norm", .. }),
        "{err}"
    );
    let w = upload(dev, &[1.0f32; 512]);
    let mut short = poisoned(dev, 512);
    assert!(rms_norm(dev, &x, &w, 1e-6, &mut short).is_err());
    let mut y = poisoned(dev, 3);
    let err = gemv_bf16(
        dev,
        &x,
        &upload_bf16(dev, &[0.0; 4096]),
        None,
        1024,
        &mut y,
        Accumulate::Overwrite,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("y has 3 elements, expected 4"),
        "{err}"
    );
    let w4 = upload_bf16(dev, &[0.0; 4096]);
    let mut y4 = poisoned(dev, 4);
    let tiled = |k_split| GemvKernel::Tiled { k_split };
    let mode = Accumulate::Overwrite;
    let err = gemv_bf16_with(dev, &x, &w4, None, 1024, &mut y4, mode, tiled(3)).unwrap_err();
    assert!(err.to_string().contains("k_split 3"), "{err}");
    let x9 = upload_bf16(dev, &[0.0; 9 * 8]);
    let w8 = upload_bf16(dev, &[0.0; 8]);
    let mut y9 = poisoned(dev, 9);
    let err = gemv_bf16_with(dev, &x9, &w8, None, 8, &mut y9, mode, tiled(1)).unwrap_err();
    assert!(err.to_string().contains("at most 8"), "{err}");
    // a view at an odd offset can't take 16-byte loads
    let odd = x.slice(1..1 + 512);
    let err = rms_norm(dev, &odd, &w, 1e-6, &mut short).unwrap_err();
    assert!(err.to_string().contains("not 16-byte aligned"), "{err}");
}

#[test]
fn fed_decode_inputs_take_the_previous_steps_rows() {
    use kestrel_cuda::ops::argmax::{feed_decode_inputs, FED_FROM_PREVIOUS};
    let Some(dev) = device() else { return };
    let mut rng = Rng::new("feed_decode_inputs");
    for (n, prev_n) in [(1, 1), (7, 16), (256, 256), (300, 64)] {
        let prev: Vec<u32> = (0..prev_n).map(|_| rng.below(151_936) as u32).collect();
        // Each input a host token or a row of the previous step; the buffer is longer than n (a
        // padded bucket) and its tail must stay.
        let ids: Vec<u32> = (0..n + 5)
            .map(|_| match rng.below(3) {
                0 => rng.below(151_936) as u32,
                _ => FED_FROM_PREVIOUS | rng.below(prev_n) as u32,
            })
            .collect();
        let want: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, &v)| match (i < n, v & FED_FROM_PREVIOUS != 0) {
                (true, true) => prev[(v & !FED_FROM_PREVIOUS) as usize],
                _ => v,
            })
            .collect();
        let mut d_ids = upload(dev, &ids);
        let d_prev = upload(dev, &prev);
        feed_decode_inputs(dev, &mut d_ids, &d_prev, n).unwrap();
        let got = dev.download(&d_ids, "fed ids").unwrap();
        assert_eq!(got, want, "n {n}, previous {prev_n}");
    }
    let mut short = upload(dev, &[0u32; 4]);
    assert!(feed_decode_inputs(dev, &mut short, &upload(dev, &[1u32]), 5).is_err());
}
