//! Block formats against gguf-py / ggml reference outputs committed by `scripts/gen_quant_golden.py`,
//! and the K-quant search quantizers against plain round-to-nearest.

use kestrel::quant::{self, GgmlType};

fn golden(name: &str) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/quant/");
    std::fs::read(format!("{dir}{name}")).unwrap_or_else(|e| panic!("{dir}{name}: {e}"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The rows all quantize tests start from (rows of 256; the last one holds float specials).
fn source_rows() -> Vec<f32> {
    f32s(&golden("quant_src.f32"))
}

const ALL_READ: [&str; 14] = [
    "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K", "Q8_K",
];

#[test]
fn dequantize_matches_reference_bit_for_bit() {
    for name in ALL_READ {
        let ty = GgmlType::from_name(name).unwrap();
        let src = golden(&format!("dequant_{name}.bin"));
        let want = f32s(&golden(&format!("dequant_{name}.f32")));
        let mut got = vec![f32::NAN; want.len()];
        quant::dequantize_row(ty, &src, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // NaN payloads (F16/BF16 only) compare by class.
            let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
            assert!(
                same,
                "{name} element {i}: got {g:e} ({:#x}), want {w:e} ({:#x})",
                g.to_bits(),
                w.to_bits()
            );
        }
        // Whole-tensor path, several rows at once.
        let cols = ty.block_size() * 4;
        if want.len().is_multiple_of(cols) {
            let t = quant::dequantize_tensor(ty, &src, cols).unwrap();
            assert!(
                t.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan()),
                "{name} tensor"
            );
        }
    }
}

#[test]
fn quantize_matches_reference_bit_for_bit() {
    let src = source_rows();
    let finite = &src[..src.len() - 256];
    for name in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q8_K",
    ] {
        let ty = GgmlType::from_name(name).unwrap();
        let input = if ty.is_quantized() { finite } else { &src[..] };
        let want = golden(&format!("quant_{name}.bin"));
        let got = quant::quantize_tensor(ty, input, 256).unwrap();
        assert_eq!(got.len(), want.len(), "{name} size");
        let bs = ty.type_size();
        for (b, (g, w)) in got.chunks(bs).zip(want.chunks(bs)).enumerate() {
            assert_eq!(
                g,
                w,
                "{name} block {b} (row {}), input {:?}",
                b * ty.block_size() / 256,
                {
                    let s = b * ty.block_size();
                    &input[s..s + ty.block_size().min(8)]
                }
            );
        }
    }
}

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (s / a.len() as f64).sqrt()
}

/// Round-to-nearest with the Q4_K structure: per 32 `x ≈ d*q - m`, q in 0..=15, d and m taken from the
/// block's range, then both 6-bit quantized under f16 super-scales exactly as the format stores them.
fn rtn_q4_k(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for sb in x.chunks(256) {
        let (mut sc, mut mn) = ([0f32; 8], [0f32; 8]);
        for (j, b) in sb.chunks(32).enumerate() {
            let lo = b.iter().fold(0f32, |m, &v| m.min(v));
            let hi = b.iter().fold(f32::MIN, |m, &v| m.max(v));
            sc[j] = (hi - lo) / 15.0;
            mn[j] = -lo;
        }
        let dmax = half::f16::from_f32(sc.iter().fold(0f32, |a, &b| a.max(b)) / 63.0).to_f32();
        let mmax = half::f16::from_f32(mn.iter().fold(0f32, |a, &b| a.max(b)) / 63.0).to_f32();
        for (j, b) in sb.chunks(32).enumerate() {
            let d = if dmax > 0.0 {
                dmax * (sc[j] / dmax).round().min(63.0)
            } else {
                0.0
            };
            let m = if mmax > 0.0 {
                mmax * (mn[j] / mmax).round().min(63.0)
            } else {
                0.0
            };
            for &v in b {
                let q = if d > 0.0 {
                    ((v + m) / d).round().clamp(0.0, 15.0)
                } else {
                    0.0
                };
                out.push(d * q - m);
            }
        }
    }
    out
}

/// Round-to-nearest with the Q6_K structure: per 16 `x ≈ d*q`, q in -32..=31 with the extreme at -32,
/// d stored as an i8 multiple of an f16 super-scale.
fn rtn_q6_k(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for sb in x.chunks(256) {
        let scales: Vec<f32> = sb
            .chunks(16)
            .map(|b| {
                let m = b
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                m / -32.0
            })
            .collect();
        let smax = scales
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let dsup = half::f16::from_f32(smax / -128.0).to_f32();
        for (b, s) in sb.chunks(16).zip(&scales) {
            let d = if dsup != 0.0 {
                dsup * (s / dsup).round().clamp(-128.0, 127.0)
            } else {
                0.0
            };
            for &v in b {
                let q = if d != 0.0 {
                    (v / d).round().clamp(-32.0, 31.0)
                } else {
                    0.0
                };
                out.push(d * q);
            }
        }
    }
    out
}

#[test]
fn k_quant_search_beats_round_to_nearest() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let gauss = |rng: &mut rand::rngs::StdRng| {
        // Box-Muller: the test needs normal-ish weights, not an exact distribution.
        let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let random: Vec<f32> = (0..256 * 64).map(|_| gauss(&mut rng) * 0.02).collect();
    let mut outliers = random.clone();
    for i in (0..outliers.len()).step_by(97) {
        outliers[i] *= 40.0;
    }
    let golden = source_rows();
    let golden = &golden[..golden.len() - 256];
    for (what, x) in [
        ("gaussian", &random[..]),
        ("outliers", &outliers[..]),
        ("golden rows", golden),
    ] {
        for (ty, rtn) in [(GgmlType::Q4_K, rtn_q4_k(x)), (GgmlType::Q6_K, rtn_q6_k(x))] {
            let q = quant::quantize_tensor(ty, x, 256).unwrap();
            let back = quant::dequantize_tensor(ty, &q, 256).unwrap();
            let (e_search, e_rtn) = (rmse(&back, x), rmse(&rtn, x));
            println!("{ty} {what}: search rmse {e_search:.4e}, round-to-nearest {e_rtn:.4e}");
            if ty == GgmlType::Q6_K && what == "outliers" {
                // ggml's Q6_K search fits each 16 with x^2 weights, then rounds the fits to i8 sub-scales
                // under one f16 super-scale; with 40x outliers that rounding can undo the search's gain
                // (llama.cpp's reference behaves the same), so only require it to be no worse than 1%.
                assert!(
                    e_search < 1.01 * e_rtn,
                    "{ty} {what}: search {e_search} vs rtn {e_rtn}"
                );
            } else {
                assert!(
                    e_search < e_rtn,
                    "{ty} {what}: search {e_search} >= rtn {e_rtn}"
                );
            }
            // Close to x relative to its spread: 4-bit ~ 1/16 of the range per sub-block, 6-bit far less.
            let spread = rmse(x, &vec![0.0; x.len()]);
            let bound = if ty == GgmlType::Q4_K { 0.15 } else { 0.04 };
            assert!(
                e_search < bound * spread,
                "{ty} {what}: rmse {e_search} vs spread {spread}"
            );
        }
    }
}

#[test]
fn q5_k_round_trip_is_close() {
    let x: Vec<f32> = (0..256 * 8)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
        .collect();
    let q = quant::quantize_tensor(GgmlType::Q5_K, &x, 512).unwrap();
    let back = quant::dequantize_tensor(GgmlType::Q5_K, &q, 512).unwrap();
    let q4 = quant::quantize_tensor(GgmlType::Q4_K, &x, 512).unwrap();
    let back4 = quant::dequantize_tensor(GgmlType::Q4_K, &q4, 512).unwrap();
    assert!(
        rmse(&back, &x) < 0.6 * rmse(&back4, &x),
        "Q5_K should beat Q4_K"
    );
}

#[test]
fn bad_lengths_and_unsupported_types_are_errors() {
    let mut out = [0f32; 32];
    assert!(quant::dequantize_row(GgmlType::Q4_0, &[0u8; 17], &mut out).is_err());
    assert!(quant::dequantize_row(GgmlType::Q4_K, &[0u8; 18], &mut out).is_err());
    let mut dst = [0u8; 18];
    assert!(quant::quantize_row(GgmlType::Q4_0, &[0f32; 31], &mut dst).is_err());
    assert!(quant::quantize_row(GgmlType::Q2_K, &[0f32; 256], &mut [0u8; 84]).is_err());
    assert!(quant::quantize_tensor(GgmlType::Q8_0, &[0f32; 96], 48).is_err());
    assert!(quant::quantize_tensor(GgmlType::Q8_0, &[0f32; 96], 0).is_err());
    assert!(quant::dequantize_tensor(GgmlType::Q8_0, &[0u8; 35], 32).is_err());
}
