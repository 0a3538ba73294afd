//! Every kernel at every SIMD level this machine has, against the exact reference: dequantize the weight
//! row and the quantized activations, dot in f64. The bound is relative to `Σ|w·a|`, so only float
//! summation order (and the f32 rounding of block-scale products) may differ.

use super::{act_quant, act_type, kernel, max_tokens, ActFormat, SimdLevel};
use crate::quant::{dequantize_row, quantize_row, GgmlType};

/// xorshift64*: deterministic inputs without depending on an RNG crate's API.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [-1, 1), with an occasional outlier (activations have them).
    pub(crate) fn value(&mut self) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if self.next().is_multiple_of(97) {
            u * 20.0
        } else {
            u
        }
    }
    pub(crate) fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
}

pub(crate) const TYPES: [GgmlType; 9] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
];

fn encode(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quantize_row(ty, x, &mut out).unwrap();
    out
}

fn decode(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_row(ty, b, &mut out).unwrap();
    out
}

fn encode_act(ty: ActFormat, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    ty.quantize_row(x, &mut out).unwrap();
    out
}

fn decode_act(ty: ActFormat, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    ty.dequantize_row(b, &mut out).unwrap();
    out
}

/// Checks one weight type at one length against the reference at every level and token count.
fn check(ty: GgmlType, cols: usize, seed: u64) {
    let at = act_type(ty).unwrap();
    let mut rng = Rng::new(seed);
    let w = encode(ty, &rng.values(cols));
    let wf = decode(ty, &w, cols);
    let acts: Vec<Vec<u8>> = (0..max_tokens(ty))
        .map(|_| encode_act(at, &rng.values(cols)))
        .collect();
    let mut want = Vec::new();
    for a in &acts {
        let af = decode_act(at, a, cols);
        let exact: f64 = wf.iter().zip(&af).map(|(&w, &a)| w as f64 * a as f64).sum();
        let scale: f64 = wf
            .iter()
            .zip(&af)
            .map(|(&w, &a)| (w as f64 * a as f64).abs())
            .sum();
        want.push((exact, scale));
    }
    let scalar = kernel(ty, SimdLevel::Scalar).unwrap();
    let mut kernels: Vec<(String, super::RowDot)> = SimdLevel::available()
        .into_iter()
        .map(|l| (format!("{l:?}"), kernel(ty, l).unwrap()))
        .collect();
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx_vnni() {
        for (t, k) in super::legacy::avx_vnni_kernels() {
            if t == ty {
                kernels.push(("AvxVnni".into(), k));
            }
        }
    }
    for (level, k) in kernels {
        for n in 1..=max_tokens(ty) {
            let rows: Vec<&[u8]> = acts[..n].iter().map(|a| a.as_slice()).collect();
            let (mut got, mut base) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            k(&w, &rows, &mut got);
            scalar(&w, &rows, &mut base);
            for t in 0..n {
                let (exact, scale) = want[t];
                let tol = 2e-6 * scale + 1e-30;
                let err = (got[t] as f64 - exact).abs();
                assert!(
                    err <= tol,
                    "{ty} {level} cols {cols} n {n} token {t}: {} vs exact {exact} (err {err:e}, tol {tol:e})",
                    got[t]
                );
                let diff = (got[t] as f64 - base[t] as f64).abs();
                assert!(
                    diff <= tol,
                    "{ty} {level} vs scalar: {} vs {}",
                    got[t],
                    base[t]
                );
            }
        }
    }
}

#[test]
fn every_kernel_matches_dequantized_f64_dot() {
    for (i, &ty) in TYPES.iter().enumerate() {
        for (j, cols) in [256, 768, 2048, 4864].into_iter().enumerate() {
            check(ty, cols, (i * 10 + j) as u64);
        }
        if ty.block_size() == 32 || ty.block_size() == 1 {
            check(ty, 896, i as u64 + 100);
            // An odd number of blocks (the 512-bit kernels' tail) and a single block.
            check(ty, 800, i as u64 + 300);
            check(ty, 32, i as u64 + 400);
        }
        if ty.block_size() == 1 {
            check(ty, 37, i as u64 + 200);
        }
    }
}

#[test]
fn avx2_is_used_where_present() {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        let want = if super::x86::has_vnni() {
            SimdLevel::Vnni
        } else {
            SimdLevel::Avx2
        };
        assert_eq!(SimdLevel::best(), want);
    }
    for ty in TYPES {
        assert!(kernel(ty, SimdLevel::best()).is_some(), "{ty}");
    }
}

#[test]
fn scalar_and_simd_matmuls_agree() {
    use crate::backend::cpu::{CpuMatrix, CpuTensor};
    use crate::formats::HostTensor;
    let (rows, cols, tokens) = (40, 512, 17);
    let mut rng = Rng::new(7);
    let x = CpuTensor::new(tokens, cols, rng.values(tokens * cols));
    for ty in TYPES {
        let w = crate::quant::quantize_tensor(ty, &rng.values(rows * cols), cols).unwrap();
        let t = HostTensor::from_bytes("w", ty, vec![rows, cols], w);
        let base = CpuMatrix::with_level(vec![t.clone()], SimdLevel::Scalar)
            .unwrap()
            .matmul(&x)
            .unwrap();
        for level in SimdLevel::available() {
            let got = CpuMatrix::with_level(vec![t.clone()], level)
                .unwrap()
                .matmul(&x)
                .unwrap();
            for (g, b) in got.data.iter().zip(&base.data) {
                assert!(
                    (g - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{ty} {level:?}: {g} vs {b}"
                );
            }
        }
    }
}

#[test]
fn act_quantizer_simd_matches_scalar_and_round_trips() {
    let mut rng = Rng::new(11);
    for cols in [32, 896, 4864] {
        let mut x = rng.values(cols);
        // An all-zero block and exact ties for the rounding.
        x[..32].fill(0.0);
        if cols > 64 {
            x[32] = 127.0;
            x[33] = 0.5;
            x[34] = -2.5;
        }
        let n = act_quant::row_bytes(cols);
        let (mut got, mut want) = (vec![0u8; n], vec![0u8; n]);
        act_quant::quantize_row(&x, &mut got);
        act_quant::quantize_row_scalar(&x, &mut want);
        assert_eq!(got, want, "cols {cols}");
        let mut y = vec![0f32; cols];
        act_quant::dequantize_row(&got, &mut y);
        for (b, (x, y)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b2) in x.iter().zip(y) {
                assert!(
                    (a - b2).abs() <= amax / 127.0 * 0.5001,
                    "block {b}: {a} vs {b2}"
                );
            }
        }
    }
}
