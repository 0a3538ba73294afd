//! Quantized decode GEMVs (kernels/gemv_quant.cu: Q8_0, Q4_0, Q5_0, Q4_K, Q6_K; the tensor-core
//! kernels/gemv_mma.cu: all but Q8_0, also at a forced 8-way K-split) and the dequantizing kernel
//! (kernels/dequant.cu) on fresh random inputs:
//! - blocks quantized from random weights (kestrel's CPU quantizer), against f64 dot products of the
//!   dequantized weights (the CPU reference's `dequantize`);
//! - every fused mode (input RMSNorm, SwiGLU, residual add, bias) against the bf16 tiled GEMV, with
//!   scales chosen so that every dequantized weight is exactly a bf16 value and the two kernels
//!   compute the same sums (in another grouping: a chunk's products, then its scales);
//! - dequantized rows against the CPU dequantizer, bit for bit;
//! - a timing printout against the bf16 GEMV at Qwen3-4B's shapes (not asserted: `kestrel bench` is
//!   where speed is claimed).
//!
//! K-quants (Q4_K, Q6_K) take rows of whole 256-weight super-blocks: cases with other widths run for
//! the 32-weight formats only.
//!
//! Without a GPU these skip (with a message), unless KESTREL_REQUIRE_GPU=1.

mod common;

use common::Rng;
use kestrel::formats::gguf::GgufFile;
use kestrel::quant;
use kestrel::quant::q4_0::BlockQ4_0;
use kestrel::quant::q4_k::BlockQ4K;
use kestrel::quant::q5_0::BlockQ5_0;
use kestrel::quant::q6_k::BlockQ6K;
use kestrel::quant::q8_0::BlockQ8_0;
use kestrel_cuda::cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};
use kestrel_cuda::dtype::{to_bf16, to_f32};
use kestrel_cuda::ops::dequant::{dequant_rows, RowSelect};
use kestrel_cuda::ops::gemv::{gemv_bf16_fused, Accumulate, GemvNorm};
use kestrel_cuda::ops::gemv_mma::mma_applies;
use kestrel_cuda::ops::gemv_quant::{gemv_quant_columns, OutColumns, QuantGemvKernel};
use kestrel_cuda::ops::quant_layout::{QuantFormat, QuantWeights};
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
    w: QuantWeights,
    values: Vec<f32>,
}

/// GGUF rows of `format` (`k` weights each) uploaded in the kernels' layout, with their values as
/// the CPU reference dequantizes them.
fn from_gguf_bytes(dev: &CudaDevice, format: QuantFormat, raw: &[u8], k: usize) -> QWeights {
    let values = quant::dequantize_tensor(format.ggml(), raw, k).unwrap();
    let planes = format.repack(raw, k).unwrap();
    QWeights {
        w: QuantWeights::upload(dev, format, k, &planes).unwrap(),
        values,
    }
}

/// `w` (rows of `k`) quantized by the CPU quantizer in `format`, uploaded in the kernel's layout.
fn quantized(dev: &CudaDevice, format: QuantFormat, w: &[f32], k: usize) -> QWeights {
    let raw = quant::quantize_tensor(format.ggml(), w, k).unwrap();
    from_gguf_bytes(dev, format, &raw, k)
}

/// The decode GEMV kernels of a format for `tokens` rows of `k`: the tiled one, and the tensor-core
/// one at its own K-split and at 8 (empty and ragged slices) where it applies.
fn kernels(format: QuantFormat, mode: Accumulate, tokens: usize, k: usize) -> Vec<QuantGemvKernel> {
    let mut v = vec![QuantGemvKernel::Tiled];
    if mma_applies(format, mode, tokens, k) {
        v.push(QuantGemvKernel::Mma { k_split: None });
        v.push(QuantGemvKernel::Mma { k_split: Some(8) });
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn run(
    dev: &CudaDevice,
    w: &QWeights,
    x: &CudaSlice<Bf16>,
    norm: Option<GemvNorm<'_>>,
    bias: Option<&dyn DevicePtr<f32>>,
    y: &mut CudaSlice<Bf16>,
    mode: Accumulate,
    kernel: QuantGemvKernel,
) {
    gemv_quant_columns(dev, &w.w, x, norm, bias, y, OutColumns::All, mode, kernel).unwrap();
}

#[test]
fn quant_gemv_matches_f64_dot_products_of_the_dequantized_weights() {
    let Some(dev) = device() else { return };
    let mut g = Rng::new("quant_gemv_f64");
    // (in, out, tokens, bias, mode): Qwen3 shapes, few rows, ragged K-slices, 8 tokens, one
    // super-block; 96 and 160 (not whole super-blocks) for the 32-weight formats only
    let cases = [
        (1024, 3072, 1, false, Accumulate::Overwrite),
        (2560, 1000, 3, true, Accumulate::Overwrite),
        (9728, 2560, 1, false, Accumulate::AddToOutput),
        (3072, 200, 5, true, Accumulate::AddToOutput),
        (1024, 96, 8, true, Accumulate::Overwrite),
        (256, 72, 2, false, Accumulate::AddToOutput),
        (96, 40, 2, false, Accumulate::AddToOutput),
        (160, 24, 7, true, Accumulate::Overwrite),
    ];
    for ((k, n, tokens, with_bias, mode), format) in cases
        .into_iter()
        .flat_map(|c| QuantFormat::ALL.map(|f| (c, f)))
        .filter(|&(c, f)| f.fits_row(c.0))
    {
        let q = quantized(&dev, format, &activations(&mut g, n * k, 0.02), k);
        for kernel in kernels(format, mode, tokens, k) {
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
            run(&dev, &q, &d_x, None, bias_arg, &mut y, mode, kernel);
            let got = download(&dev, &y);
            let mut exact = 0;
            for t in 0..tokens {
                for r in 0..n {
                    let (xr, wr) = (&x[t * k..][..k], &q.values[r * k..][..k]);
                    let (dot, abs) = common::dot_f64(xr, wr);
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
                    "{format:?} {kernel:?} in {k} out {n} tokens {tokens} {mode:?}: [{t}, {r}] got {got} want {want}"
                );
                    exact += (got == want) as usize;
                }
            }
            assert!(
            exact * 10 >= tokens * n * 9,
            "{format:?} {kernel:?} in {k} out {n}: only {exact} of {} bit-equal to the rounded reference",
            tokens * n
        );
        }
    }
}

/// A `[rows, k]` weight in `format` whose every dequantized weight is exactly a bf16 value: f16
/// scales are powers of two and each weight a power of two times an integer below 256 in magnitude
/// (Q8_0, Q4_0, Q5_0: the quant; Q4_K: sc * q - m with sc < 16, m < 64 and dmin = d; Q6_K:
/// sc * (q - 32) with |sc| <= 7), so that every way of computing it is exact.
fn exact(dev: &CudaDevice, g: &mut Rng, format: QuantFormat, rows: usize, k: usize) -> QWeights {
    fn scale(g: &mut Rng) -> [u8; 2] {
        half::f16::from_f32(2f32.powi(-7 - g.below(4) as i32)).to_le_bytes()
    }
    /// ggml's 12-byte packing of 8 6-bit (scale, min) pairs (the inverse of `get_scale_min_k4`).
    fn pack_scale_min(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | (sc[j + 4] >> 4) << 6;
            s[j + 4] = m[j] | (m[j + 4] >> 4) << 6;
            s[j + 8] = (sc[j + 4] & 15) | (m[j + 4] & 15) << 4;
        }
        s
    }
    let count = rows * k / format.ggml().block_size();
    let raw: Vec<u8> = match format {
        QuantFormat::Q8_0 => {
            let b: Vec<BlockQ8_0> = (0..count)
                .map(|_| BlockQ8_0 {
                    d: scale(g),
                    qs: std::array::from_fn(|_| (g.below(255) as i32 - 127) as i8),
                })
                .collect();
            bytemuck::cast_slice(&b).to_vec()
        }
        QuantFormat::Q4_0 => {
            let b: Vec<BlockQ4_0> = (0..count)
                .map(|_| BlockQ4_0 {
                    d: scale(g),
                    qs: std::array::from_fn(|_| g.below(256) as u8),
                })
                .collect();
            bytemuck::cast_slice(&b).to_vec()
        }
        QuantFormat::Q5_0 => {
            let b: Vec<BlockQ5_0> = (0..count)
                .map(|_| BlockQ5_0 {
                    d: scale(g),
                    qh: std::array::from_fn(|_| g.below(256) as u8),
                    qs: std::array::from_fn(|_| g.below(256) as u8),
                })
                .collect();
            bytemuck::cast_slice(&b).to_vec()
        }
        QuantFormat::Q4_K => {
            let b: Vec<BlockQ4K> = (0..count)
                .map(|_| {
                    let d = scale(g);
                    let sc = std::array::from_fn(|_| g.below(16) as u8);
                    let m = std::array::from_fn(|_| g.below(64) as u8);
                    BlockQ4K {
                        d,
                        dmin: d,
                        scales: pack_scale_min(sc, m),
                        qs: std::array::from_fn(|_| g.below(256) as u8),
                    }
                })
                .collect();
            bytemuck::cast_slice(&b).to_vec()
        }
        QuantFormat::Q6_K => {
            let b: Vec<BlockQ6K> = (0..count)
                .map(|_| BlockQ6K {
                    ql: std::array::from_fn(|_| g.below(256) as u8),
                    qh: std::array::from_fn(|_| g.below(256) as u8),
                    scales: std::array::from_fn(|_| g.below(15) as i8 - 7),
                    d: scale(g),
                })
                .collect();
            bytemuck::cast_slice(&b).to_vec()
        }
    };
    let q = from_gguf_bytes(dev, format, &raw, k);
    let not_bf16 = q.values.iter().find(|&&v| round_bf16(v) != v);
    assert!(
        not_bf16.is_none(),
        "{format:?}: {not_bf16:?} is not a bf16 value"
    );
    q
}

/// For each token and weight row (`[token * rows + row]`), how far two f32 summations of its `k`
/// products in different orders can be apart: 2 γ_k Σ|x_j w_j| (Higham's bound for any order, u =
/// 2^-24; bf16 x bf16 products are exact in f32), with x through the input RMSNorm where there is one.
/// Negligible for most outputs (~0.6 bf16 steps of a typical sum), it covers the rare outputs that
/// nearly cancel (session 14, H100: a Q6_K SwiGLU output 8 bf16 steps off with k_split 8).
fn reorder_bounds(x: &[f32], norm: Option<&[f32]>, w: &[f32], k: usize) -> Vec<f32> {
    let gamma = 2.0 * k as f64 * 2f64.powi(-24);
    x.chunks(k)
        .flat_map(|xt| {
            let xn: Vec<f32> = match norm {
                Some(nw) => {
                    let ms = xt.iter().map(|&v| v * v).sum::<f32>() / k as f32;
                    let inv = (ms + 1e-6).sqrt().recip();
                    xt.iter().zip(nw).map(|(&v, &s)| v * inv * s).collect()
                }
                None => xt.to_vec(),
            };
            w.chunks(k)
                .map(move |row| (gamma * common::dot_f64(&xn, row).1) as f32)
        })
        .collect()
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
        .flat_map(|c| QuantFormat::ALL.map(|f| (c, f)))
    {
        let q = exact(&dev, &mut g, format, n, k);
        let w_bf16 = upload(&dev, &to_bf16(&q.values));
        for kernel in kernels(format, mode, tokens, k) {
            let x_host = activations(&mut g, tokens * k, 1.0);
            let x = upload(&dev, &to_bf16(&x_host));
            let norm_w: Vec<f32> = (0..k).map(|_| 1.0 + 0.5 * normal(&mut g)).collect();
            let reorder = reorder_bounds(&x_host, with_norm.then_some(&norm_w[..]), &q.values, k);
            let d_norm = upload(&dev, &norm_w);
            let norm = with_norm.then_some(GemvNorm {
                weight: &d_norm,
                eps: 1e-6,
            });
            let out = if mode == Accumulate::SwiGlu { n / 2 } else { n };
            let y0 = to_bf16(&activations(&mut g, tokens * out, 1.0));
            let (mut y_q, mut y_b) = (upload(&dev, &y0), upload(&dev, &y0));
            run(&dev, &q, &x, norm, None, &mut y_q, mode, kernel);
            gemv_bf16_fused(&dev, &x, norm, &w_bf16, None, k, &mut y_b, mode).unwrap();
            let (got, want) = (download(&dev, &y_q), download(&dev, &y_b));
            // SwiGLU's inputs (bf16(g), bf16(u) of each output), for its error bound
            let gate_up = (mode == Accumulate::SwiGlu).then(|| {
                let mut gu = upload(&dev, &vec![Bf16::NAN; tokens * n]);
                let over = Accumulate::Overwrite;
                gemv_bf16_fused(&dev, &x, norm, &w_bf16, None, k, &mut gu, over).unwrap();
                download(&dev, &gu)
            });
            let mut exact = 0;
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                // the same products summed in another grouping: a rounding step apart at most; through
                // SwiGLU, g or u one bf16 step apart moves silu(g) * u by up to |silu'(g) u| ulp(g) +
                // |silu(g)| ulp(u) (silu' reaches ~1.1, and its relative slope is steep for g < 0)
                // (plus each sum's reordering bound, which only shows where a sum nearly cancels)
                let (t, r) = (i / out, i % out);
                let swiglu = gate_up.as_ref().map_or(0.0, |gu| {
                    let (gv, uv) = (gu[t * n + r], gu[t * n + out + r]);
                    let (eg, eu) = (reorder[t * n + r], reorder[t * n + out + r]);
                    let sig = 1.0 / (1.0 + (-gv).exp());
                    let slope = sig * (1.0 + gv * (1.0 - sig));
                    (slope * uv).abs() * (bf16_ulp(gv) + eg)
                        + (gv * sig).abs() * (bf16_ulp(uv) + eu)
                });
                let sum = if gate_up.is_some() {
                    0.0
                } else {
                    reorder[t * n + r]
                };
                let tol = 3.0 * bf16_ulp(b) + 1.5 * swiglu + sum + 1e-6;
                assert!(
                (a - b).abs() <= tol,
                "{format:?} {kernel:?} in {k} rows {n} tokens {tokens} norm {with_norm} {mode:?}: [{i}] {a} vs bf16 {b}"
            );
                exact += (a == b) as usize;
            }
            assert!(
                exact * 10 >= got.len() * 9,
                "{format:?} {kernel:?} in {k} rows {n} {mode:?}: only {exact} of {} bit-equal",
                got.len()
            );
        }
    }
}

#[test]
fn dequant_rows_match_the_cpu_dequantizer_bit_for_bit() {
    let Some(dev) = device() else { return };
    let mut g = Rng::new("dequant_rows");
    for format in QuantFormat::ALL {
        for (rows, k) in [(37, 256), (300, 1024), (5, 4864), (3, 2560), (11, 96)] {
            if !format.fits_row(k) {
                continue;
            }
            let w: Vec<f32> = (0..rows * k).map(|_| 0.05 * normal(&mut g)).collect();
            let q = quantized(&dev, format, &w, k);
            let want: Vec<f32> = q.values.iter().map(|&v| round_bf16(v)).collect();
            // a range of rows, then rows by id (an embedding lookup), repeats included
            let (first, count) = (rows / 3, rows - rows / 3 - 1);
            let mut out = upload(&dev, &vec![Bf16::NAN; count * k]);
            let range = RowSelect::Range { first, count };
            dequant_rows(&dev, &q.w, range, &mut out).unwrap();
            assert_eq!(
                download(&dev, &out),
                want[first * k..(first + count) * k],
                "{format:?} rows {first}.. of {rows} x {k}"
            );
            let ids: Vec<u32> = (0..9).map(|_| g.below(rows) as u32).collect();
            let d_ids = upload(&dev, &ids);
            let mut out = upload(&dev, &vec![Bf16::NAN; ids.len() * k]);
            dequant_rows(&dev, &q.w, RowSelect::Ids(&d_ids), &mut out).unwrap();
            let got = download(&dev, &out);
            for (i, &id) in ids.iter().enumerate() {
                let r = id as usize;
                assert_eq!(got[i * k..][..k], want[r * k..][..k], "{format:?} id {id}");
            }
        }
    }
}

/// Real tensors (testdata/quant/real_rows.gguf: 64 rows of each quantized type of the real
/// Qwen2.5-Coder-0.5B Q4_K_M file, scripts/extract_real_rows.py): dequantized bit for bit as the CPU
/// does, and the GEMV against f64 dot products of those values, for 1 and 3 tokens.
#[test]
fn real_tensors_dequantize_and_multiply_as_the_cpu() {
    let Some(dev) = device() else { return };
    let mut g = Rng::new("real_rows");
    let file = GgufFile::open(&common::testdata("quant/real_rows.gguf")).unwrap();
    let mut formats = Vec::new();
    for info in &file.tensors {
        let t = file.tensor(&info.name).unwrap();
        let (rows, k) = (t.rows(), t.cols());
        let format = QuantFormat::from_ggml(t.ty).unwrap();
        formats.push(format);
        let q = from_gguf_bytes(&dev, format, t.bytes(), k);
        let mut out = upload(&dev, &vec![Bf16::NAN; rows * k]);
        let all = RowSelect::Range {
            first: 0,
            count: rows,
        };
        dequant_rows(&dev, &q.w, all, &mut out).unwrap();
        let want: Vec<f32> = q.values.iter().map(|&v| round_bf16(v)).collect();
        assert_eq!(download(&dev, &out), want, "{} ({format:?})", info.name);
        let overwrite = Accumulate::Overwrite;
        for (tokens, kernel) in [1, 3].into_iter().flat_map(|t| {
            kernels(format, overwrite, t, k)
                .into_iter()
                .map(move |kn| (t, kn))
        }) {
            let x = activations(&mut g, tokens * k, 1.0);
            let mut y = upload(&dev, &vec![Bf16::NAN; tokens * rows]);
            let d_x = upload(&dev, &to_bf16(&x));
            run(&dev, &q, &d_x, None, None, &mut y, overwrite, kernel);
            let got = download(&dev, &y);
            for t in 0..tokens {
                for r in 0..rows {
                    let (xr, wr) = (&x[t * k..][..k], &q.values[r * k..][..k]);
                    let (dot, abs) = common::dot_f64(xr, wr);
                    let want = round_bf16(dot as f32);
                    let tol = 2.0 * bf16_ulp(want) + 2.0 * (abs * 2f64.powi(-20)) as f32;
                    let v = got[t * rows + r];
                    assert!(
                        (v - want).abs() <= tol,
                        "{} {kernel:?} [{t}, {r}]: {v} vs {want}",
                        info.name
                    );
                }
            }
        }
    }
    let want = [
        QuantFormat::Q8_0,
        QuantFormat::Q5_0,
        QuantFormat::Q6_K,
        QuantFormat::Q4_K,
    ];
    assert!(want.iter().all(|f| formats.contains(f)), "{formats:?}");
}

#[test]
fn timing() {
    let Some(dev) = device() else { return };
    let mut g = Rng::new("quant_gemv_timing");
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
    let gbs = |bytes: usize, t: f64| bytes as f64 / t * 1e-3;
    for (name, k, n, mode) in shapes {
        let x = upload(&dev, &to_bf16(&activations(&mut g, k, 1.0)));
        let out = if mode == Accumulate::SwiGlu { n / 2 } else { n };
        let mut y = upload(&dev, &to_bf16(&vec![0.0f32; out]));
        let mut line = format!("{name} {k} -> {n}:");
        let mut w_bf16 = None;
        // one format's weights at a time (lm_head's values are 1.5 GB on the host)
        for format in QuantFormat::ALL {
            let q = exact(&dev, &mut g, format, n, k);
            // the bytes the kernel streams: Q8_0 8.5 bits a weight, Q4_0 4.5, Q5_0 5.5, Q4_K 4.625
            // (the file's 4.5 with its 6-bit sub-block scales unpacked to bytes), Q6_K 6.5625
            let bits = q.w.bytes() as f64 * 8.0 / (n * k) as f64;
            line += &format!(" {format:?} ({bits:.3} b/w)");
            // the tensor-core kernel at its own K-split, then at each (to tune the choice)
            let mut all = kernels(format, mode, 1, k);
            if all.len() > 1 {
                all.extend([1, 2, 4].map(|ks| QuantGemvKernel::Mma { k_split: Some(ks) }));
            }
            for kernel in all {
                let t = time(&mut || run(&dev, &q, &x, None, None, &mut y, mode, kernel));
                let label = match kernel {
                    QuantGemvKernel::Mma { k_split: Some(ks) } => format!("mma/{ks}"),
                    QuantGemvKernel::Mma { k_split: None } => "mma".into(),
                    _ => "tiled".into(),
                };
                line += &format!(" {label} {t:.1} us ({:.0} GB/s)", gbs(q.w.bytes(), t));
            }
            line += ",";
            w_bf16.get_or_insert_with(|| upload(&dev, &to_bf16(&q.values)));
        }
        let w_bf16 = w_bf16.unwrap();
        let t_b =
            time(&mut || gemv_bf16_fused(&dev, &x, None, &w_bf16, None, k, &mut y, mode).unwrap());
        eprintln!("{line} bf16 {t_b:.1} us ({:.0} GB/s)", gbs(n * k * 2, t_b));
    }
}
