//! Q5_K: Q4_K with a fifth bit per weight in `qh` (176 bytes). Bit `2j` of `qh[l]` belongs to element
//! `64j + l`, bit `2j + 1` to element `64j + 32 + l`.

use super::q4_k::{quantize_scales_k, quantize_values_k, scale_min_k4, K_SCALE_SIZE};
use super::{block_pod, f16_to_f32, Block, GgmlType, QuantizeBlock, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
block_pod!(BlockQ5K, 176);

impl Block for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const QK: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, min) = (f16_to_f32(self.d), f16_to_f32(self.dmin));
        for (j, (q, y)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * j, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let (lo, hi) = y.split_at_mut(32);
            for (l, (&q, &h)) in q.iter().zip(&self.qh).enumerate() {
                let b1 = if h & u1 != 0 { 16 } else { 0 };
                let b2 = if h & u2 != 0 { 16 } else { 0 };
                lo[l] = d1 * ((q & 0x0f) + b1) as f32 - m1;
                hi[l] = d2 * ((q >> 4) + b2) as f32 - m2;
            }
        }
    }
}

impl QuantizeBlock for BlockQ5K {
    /// ggml's `quantize_row_q5_K_ref` (`make_qkx2_quants` with nmax 31, rmin -0.5, 15 steps).
    fn quantize(x: &[f32], out: &mut Self) {
        let mut l = [0u8; QK_K];
        let (scales, d, dmin) = quantize_scales_k(x, 31, -0.5, 15, &mut l);
        quantize_values_k(x, &scales, d, dmin, 31, &mut l);
        (out.d, out.dmin, out.scales) = (d, dmin, scales);
        out.qh = [0; QK_K / 8];
        for (j, (q, ls)) in out
            .qs
            .chunks_exact_mut(32)
            .zip(l.chunks_exact(64))
            .enumerate()
        {
            for (i, q) in q.iter_mut().enumerate() {
                let (a, b) = (ls[i], ls[i + 32]);
                *q = (a & 0x0f) | ((b & 0x0f) << 4);
                out.qh[i] |= ((a >> 4) << (2 * j)) | ((b >> 4) << (2 * j + 1));
            }
        }
    }
}
