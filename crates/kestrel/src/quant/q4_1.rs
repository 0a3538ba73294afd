//! Q4_1: 32 weights as 4-bit integers in [0, 15] times an f16 scale plus an f16 minimum (20 bytes).

use super::{block_pod, f16_to_f32, f32_to_f16, Block, GgmlType, QuantizeBlock};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}
block_pod!(BlockQ4_1, 20);

/// (min, max) of a block, first-seen on ties.
#[inline]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    x[1..].iter().fold((x[0], x[0]), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    })
}

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const QK: usize = 32;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (f16_to_f32(self.d), f16_to_f32(self.m));
        let (lo, hi) = out.split_at_mut(16);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = d * (q & 0x0f) as f32 + m;
            *h = d * (q >> 4) as f32 + m;
        }
    }
}

impl QuantizeBlock for BlockQ4_1 {
    fn quantize(x: &[f32], out: &mut Self) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.d = f32_to_f16(d);
        out.m = f32_to_f16(min);
        let q = |v: f32| (((v - min) * id + 0.5).trunc() as u8).min(15);
        for j in 0..16 {
            out.qs[j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}
