//! `CpuMatrix::matmul` against the f32 reference (weights dequantized to f32, f32 activations, f64 sums).
//!
//! Quantized weights run on 8-bit activations (Q8_K for K-quants, Q8_0 for the 32-element formats), so
//! the product carries their rounding: each activation is off by at most half a step of its block's
//! absmax/127, a relative L2 error of about 0.3% for these inputs. The bound is 1e-2 relative L2 over the
//! whole output. F32/F16/BF16 weights take f32 activations: only summation order differs (1e-6).

use kestrel::backend::cpu::{CpuMatrix, CpuTensor};
use kestrel::formats::HostTensor;
use kestrel::quant::{dequantize_tensor, quantize_tensor, GgmlType};

struct Rng(u64);

impl Rng {
    fn value(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32;
        2.0 * u - 1.0
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
}

fn tensor(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> (HostTensor, Vec<f32>) {
    let bytes = quantize_tensor(ty, &rng.values(rows * cols), cols).unwrap();
    let f32s = dequantize_tensor(ty, &bytes, cols).unwrap();
    (
        HostTensor::from_bytes(format!("w.{ty}"), ty, vec![rows, cols], bytes),
        f32s,
    )
}

/// Relative L2 error of `x · wᵀ` against the f64 reference on the dequantized weights.
fn rel_l2(m: &CpuMatrix, w: &[f32], x: &CpuTensor) -> f64 {
    let got = m.matmul(x).unwrap();
    assert_eq!((got.rows, got.cols), (x.rows, m.rows));
    let (mut num, mut den) = (0f64, 0f64);
    for t in 0..x.rows {
        for r in 0..m.rows {
            let want: f64 = w[r * m.cols..(r + 1) * m.cols]
                .iter()
                .zip(x.row(t))
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let g = got.data[t * m.rows + r] as f64;
            assert!(g.is_finite(), "output ({t}, {r}) is {g}");
            num += (g - want).powi(2);
            den += want.powi(2);
        }
    }
    (num / den).sqrt()
}

fn bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1e-6,
        _ => 1e-2,
    }
}

const TYPES: [GgmlType; 11] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q5_1,
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
];

#[test]
fn matmul_matches_f32_reference_for_each_type() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for ty in TYPES {
        for (rows, cols) in [(37, 256), (70, 768)] {
            let (t, w) = tensor(&mut rng, ty, rows, cols);
            let m = CpuMatrix::new(vec![t]).unwrap();
            for tokens in [1, 3, 17] {
                let x = CpuTensor::new(tokens, cols, rng.values(tokens * cols));
                let e = rel_l2(&m, &w, &x);
                assert!(
                    e <= bound(ty),
                    "{ty} {rows}x{cols}, {tokens} tokens: relative L2 {e:e}"
                );
            }
        }
    }
}

#[test]
fn legacy_types_at_non_256_widths() {
    let mut rng = Rng(0x0bad_cafe_f00d_0001);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::F32,
        GgmlType::BF16,
    ] {
        let (t, w) = tensor(&mut rng, ty, 33, 896);
        let m = CpuMatrix::new(vec![t]).unwrap();
        let x = CpuTensor::new(5, 896, rng.values(5 * 896));
        let e = rel_l2(&m, &w, &x);
        assert!(e <= bound(ty), "{ty}: relative L2 {e:e}");
    }
}

/// Merged q/k/v (or gate/up) of Q4_K_M files stack parts of different types.
#[test]
fn mixed_type_stacked_parts() {
    let mut rng = Rng(0xfeed_beef_0000_0042);
    let stacks: [&[GgmlType]; 3] = [
        &[GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_K],
        &[GgmlType::Q5_0, GgmlType::Q5_0, GgmlType::Q8_0],
        &[
            GgmlType::Q4_K,
            GgmlType::Q8_0,
            GgmlType::F32,
            GgmlType::Q3_K,
        ],
    ];
    for types in stacks {
        let (mut parts, mut w) = (Vec::new(), Vec::new());
        for (i, &ty) in types.iter().enumerate() {
            let rows = 20 + 7 * i;
            let (t, f) = if ty == GgmlType::Q3_K {
                // Kestrel cannot quantize to Q3_K: zero bytes are a valid Q3_K tensor.
                let bytes = vec![0u8; ty.row_bytes(512).unwrap() * rows];
                let f = dequantize_tensor(ty, &bytes, 512).unwrap();
                (
                    HostTensor::from_bytes("w.q3k", ty, vec![rows, 512], bytes),
                    f,
                )
            } else {
                tensor(&mut rng, ty, rows, 512)
            };
            parts.push(t);
            w.extend(f);
        }
        let m = CpuMatrix::new(parts).unwrap();
        for tokens in [1, 6] {
            let x = CpuTensor::new(tokens, 512, rng.values(tokens * 512));
            let e = rel_l2(&m, &w, &x);
            assert!(e <= 1e-2, "{types:?}, {tokens} tokens: relative L2 {e:e}");
        }
    }
}

#[test]
fn wrong_width_is_an_error() {
    let mut rng = Rng(7);
    let (t, _) = tensor(&mut rng, GgmlType::Q4_K, 4, 256);
    let m = CpuMatrix::new(vec![t]).unwrap();
    assert!(m.matmul(&CpuTensor::zeros(1, 512)).is_err());
}
