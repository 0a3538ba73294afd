//! GGUF blocks to the planes of [`super::quant_layout`], on the host at upload: each format's bytes
//! split (and, for Q5_0 / Q4_K / Q6_K, reordered: nibbles in Q4_0's order per 32 weights, high bits
//! shuffled next to them, K-quant sub-block scales unpacked) as kernels/quant_kformats.cuh reads them.

use kestrel::quant::q4_0::BlockQ4_0;
use kestrel::quant::q4_k::{scale_min_k4, BlockQ4K};
use kestrel::quant::q5_0::BlockQ5_0;
use kestrel::quant::q6_k::BlockQ6K;
use kestrel::quant::q8_0::BlockQ8_0;

use super::quant_layout::{QuantFormat, PLANES};
use super::shape_error;
use crate::Result;

impl QuantFormat {
    /// Splits whole rows of GGUF blocks (`raw`, `in_features` weights per row) into the planes.
    pub fn repack(self, raw: &[u8], in_features: usize) -> Result<HostPlanes> {
        let ty = self.ggml();
        let row = if self.fits_row(in_features) {
            in_features / ty.block_size() * ty.type_size()
        } else {
            0
        };
        if row == 0 || !raw.len().is_multiple_of(row) {
            return Err(shape_error(
                "repack",
                format!(
                    "{} bytes are not whole rows of {in_features} {ty} weights",
                    raw.len()
                ),
            ));
        }
        let mut p = HostPlanes::default();
        let rows = raw.len() / row;
        for (plane, width) in p.planes.iter_mut().zip(self.plane_row_bytes(in_features)) {
            plane.reserve_exact(rows * width);
        }
        match self {
            QuantFormat::Q8_0 => {
                for b in bytemuck::cast_slice::<u8, BlockQ8_0>(raw) {
                    p.planes[0].extend(b.qs.map(|q| q as u8));
                    p.planes[1].extend(b.d);
                }
            }
            QuantFormat::Q4_0 => {
                for b in bytemuck::cast_slice::<u8, BlockQ4_0>(raw) {
                    p.planes[0].extend(b.qs);
                    p.planes[1].extend(b.d);
                }
            }
            QuantFormat::Q5_0 => {
                for b in bytemuck::cast_slice::<u8, BlockQ5_0>(raw) {
                    let qh = u32::from_le_bytes(b.qh);
                    let h = spread_high_bits(1, 4, |j| (qh >> j) & 1);
                    p.planes[0].extend(b.qs);
                    p.planes[1].extend(h.to_le_bytes());
                    p.planes[2].extend(b.d);
                }
            }
            QuantFormat::Q4_K => {
                for b in bytemuck::cast_slice::<u8, BlockQ4K>(raw) {
                    for s in 0..8 {
                        // sub-block s: the low (even s) or high nibbles of group s / 2's 32 bytes
                        let group = &b.qs[32 * (s / 2)..][..32];
                        let q: [u8; 32] = std::array::from_fn(|i| (group[i] >> (4 * (s % 2))) & 15);
                        push_nibbles(&mut p.planes[0], &q);
                        let (sc, m) = scale_min_k4(s, &b.scales);
                        p.planes[1].extend([sc, m]);
                    }
                    p.planes[2].extend(b.d);
                    p.planes[2].extend(b.dmin);
                }
            }
            QuantFormat::Q6_K => {
                for b in bytemuck::cast_slice::<u8, BlockQ6K>(raw) {
                    let q = q6_k_quants(b);
                    for (c, q) in q.chunks_exact(32).enumerate() {
                        let q: &[u8; 32] = q.try_into().expect("32 quants");
                        push_nibbles(&mut p.planes[0], q);
                        let high = |j: usize| (q[j] >> 4) as u32;
                        let lo = spread_high_bits(2, 0, high);
                        let hi = spread_high_bits(2, 0, |j| high(16 + j));
                        p.planes[1].extend(lo.to_le_bytes());
                        p.planes[1].extend(hi.to_le_bytes());
                        p.planes[2].extend([b.scales[2 * c] as u8, b.scales[2 * c + 1] as u8]);
                    }
                    p.planes[3].extend(b.d);
                }
            }
        }
        Ok(p)
    }
}

/// 32 quants' low nibbles in Q4_0's order: byte j holds quant j (low) and 16 + j (high).
fn push_nibbles(out: &mut Vec<u8>, q: &[u8; 32]) {
    out.extend((0..16).map(|j| (q[j] & 15) | (q[16 + j] & 15) << 4));
}

/// The `bits`-bit high parts (`high(j)`) of quants in the word quant_kformats.cuh's `unpack_q32`
/// reads: quant j = 4k + b (j < 16) at byte b, bits `bits * k ..`; with `hi` > 0 the same word also
/// holds quants 16 + j at bits `hi + bits * k ..` (Q5_0), else only quants 0..16 go in (Q6_K: one
/// word per half).
fn spread_high_bits(bits: u32, hi: u32, high: impl Fn(usize) -> u32) -> u32 {
    let mut h = 0u32;
    let halves = if hi > 0 { 2 } else { 1 };
    for half in 0..halves {
        for j in 0..16 {
            let (k, b) = (j as u32 / 4, j as u32 % 4);
            h |= high(16 * half + j) << (8 * b + hi * half as u32 + bits * k);
        }
    }
    h
}

/// The 256 unsigned 6-bit quants of a Q6_K block in weight order (ggml's dequantize_row_q6_K).
fn q6_k_quants(b: &BlockQ6K) -> [u8; 256] {
    let mut q = [0u8; 256];
    for n in 0..2 {
        let (ql, qh, y) = (&b.ql[64 * n..], &b.qh[32 * n..], &mut q[128 * n..]);
        for l in 0..32 {
            y[l] = (ql[l] & 15) | (qh[l] & 3) << 4;
            y[l + 32] = (ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4;
            y[l + 64] = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
            y[l + 96] = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
        }
    }
    q
}

/// A tensor's planes on the host ([`QuantFormat::repack`]).
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct HostPlanes {
    pub planes: [Vec<u8>; PLANES],
}

impl HostPlanes {
    /// Stacks `other`'s rows under these.
    pub fn append(&mut self, other: HostPlanes) {
        for (p, o) in self.planes.iter_mut().zip(other.planes) {
            p.extend(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel::quant::dequantize_tensor;

    fn f16(b: &[u8]) -> f32 {
        half::f16::from_le_bytes([b[0], b[1]]).to_f32()
    }

    /// quant_kformats.cuh's `unpack_q32` on the host: the 32 quants of a chunk (offset not removed).
    fn unpack_q32(qs: &[u8], h_lo: u32, h_hi: u32, bits: u32, hi: i32) -> [u32; 32] {
        let shift = |v: u32, s: i32| if s >= 0 { v << s } else { v >> -s };
        let m = ((1u32 << bits) - 1) * 0x1010_1010;
        let mut q = [0u32; 32];
        for k in 0..4 {
            let v = u32::from_le_bytes(qs[4 * k..][..4].try_into().unwrap());
            let (mut lo, mut up) = (v & 0x0F0F_0F0F, (v >> 4) & 0x0F0F_0F0F);
            if bits > 0 {
                let bk = (bits * k as u32) as i32;
                lo |= shift(h_lo, 4 - bk) & m;
                up |= shift(h_hi, 4 - hi - bk) & m;
            }
            for b in 0..4 {
                q[4 * k + b] = (lo >> (8 * b)) & 0xFF;
                q[16 + 4 * k + b] = (up >> (8 * b)) & 0xFF;
            }
        }
        q
    }

    /// Every weight of the planes, as the kernels' `dequant` computes it (ggml's expressions).
    fn decode(format: QuantFormat, p: &HostPlanes) -> Vec<f32> {
        let [qs, a0, a1, a2] = &p.planes;
        let mut out = Vec::new();
        for (c, q) in qs.chunks_exact(16).enumerate() {
            let u32_at =
                |a: &[u8], i: usize| u32::from_le_bytes(a[4 * i..][..4].try_into().unwrap());
            match format {
                QuantFormat::Q8_0 => {
                    let d = f16(&a0[2 * (c / 2)..]);
                    out.extend(q.iter().map(|&q| q as i8 as f32 * d));
                }
                QuantFormat::Q4_0 => {
                    let d = f16(&a0[2 * c..]);
                    let q = unpack_q32(q, 0, 0, 0, 0);
                    out.extend(q.iter().map(|&q| (q as f32 - 8.0) * d));
                }
                QuantFormat::Q5_0 => {
                    let (h, d) = (u32_at(a0, c), f16(&a1[2 * c..]));
                    let q = unpack_q32(q, h, h, 1, 4);
                    out.extend(q.iter().map(|&q| (q as f32 - 16.0) * d));
                }
                QuantFormat::Q4_K => {
                    let (sc, m) = (a0[2 * c] as f32, a0[2 * c + 1] as f32);
                    let (d, dmin) = (f16(&a1[4 * (c / 8)..]), f16(&a1[4 * (c / 8) + 2..]));
                    let (d1, m1) = (d * sc, dmin * m);
                    let q = unpack_q32(q, 0, 0, 0, 0);
                    out.extend(q.iter().map(|&q| d1 * q as f32 - m1));
                }
                QuantFormat::Q6_K => {
                    let q = unpack_q32(q, u32_at(a0, 2 * c), u32_at(a0, 2 * c + 1), 2, 0);
                    let d = f16(&a2[2 * (c / 8)..]);
                    let sc = [a1[2 * c] as i8 as f32, a1[2 * c + 1] as i8 as f32];
                    out.extend((0..32).map(|i| d * sc[i / 16] * (q[i] as f32 - 32.0)));
                }
            }
        }
        out
    }

    #[test]
    fn planes_hold_the_values_of_the_gguf_blocks() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for format in QuantFormat::ALL {
            let ty = format.ggml();
            for (rows, k) in [(3, 512), (2, 256), (1, 1024)] {
                // random bytes (every bit pattern of quants, high bits and sub-block scales), with
                // the f16 scales made finite
                let mut raw: Vec<u8> = (0..rows * k / ty.block_size() * ty.type_size())
                    .map(|_| next() as u8)
                    .collect();
                let f16_fields: &[usize] = match format {
                    QuantFormat::Q4_K => &[0, 2],
                    QuantFormat::Q6_K => &[208],
                    _ => &[0],
                };
                for block in raw.chunks_exact_mut(ty.type_size()) {
                    for &at in f16_fields {
                        let v = (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                        block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                    }
                }
                let planes = format.repack(&raw, k).unwrap();
                let sizes = format.plane_row_bytes(k).map(|b| b * rows);
                assert_eq!(planes.planes.each_ref().map(Vec::len), sizes, "{format:?}");
                let want = dequantize_tensor(ty, &raw, k).unwrap();
                let got = decode(format, &planes);
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{format:?} {rows} x {k}: weight {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_must_be_whole_blocks() {
        use QuantFormat::*;
        for (format, good, bad) in [
            (Q8_0, 96, 48),
            (Q4_0, 96, 16),
            (Q5_0, 96, 80),
            (Q4_K, 512, 288),
            (Q6_K, 256, 480),
        ] {
            assert!(format.fits_row(good) && !format.fits_row(bad) && !format.fits_row(0));
            let ty = format.ggml();
            let raw = vec![0u8; good / ty.block_size() * ty.type_size()];
            assert!(format.repack(&raw, good).is_ok());
            assert!(format.repack(&raw, bad).is_err(), "{format:?} {bad}");
        }
    }
}
