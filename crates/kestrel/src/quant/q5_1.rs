//! Q5_1: 32 weights as 5-bit integers in [0, 31] times an f16 scale plus an f16 minimum (24 bytes).

use super::q4_1::min_max;
use super::q5_0::{pack5, unpack5};
use super::{block_pod, f16_to_f32, f32_to_f16, Block, GgmlType, QuantizeBlock};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
block_pod!(BlockQ5_1, 24);

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const QK: usize = 32;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (f16_to_f32(self.d), f16_to_f32(self.m));
        unpack5(self.qh, &self.qs, |j, q| out[j] = d * q as f32 + m);
    }
}

impl QuantizeBlock for BlockQ5_1 {
    fn quantize(x: &[f32], out: &mut Self) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.d = f32_to_f16(d);
        out.m = f32_to_f16(min);
        let q = |j: usize| (((x[j] - min) * id + 0.5).trunc() as u8).min(31);
        pack5(q, &mut out.qh, &mut out.qs);
    }
}
