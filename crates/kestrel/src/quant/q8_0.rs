//! Q8_0: 32 weights as i8 times one f16 scale (34 bytes).

use super::{block_pod, f16_to_f32, f32_to_f16, Block, GgmlType, QuantizeBlock};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}
block_pod!(BlockQ8_0, 34);

#[inline]
pub(crate) fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const QK: usize = 32;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ8_0 {
    /// ggml's reference (and gguf-py's): scale amax/127 kept in f32 for the division, `roundf` (half
    /// away from zero) for the values.
    fn quantize(x: &[f32], out: &mut Self) {
        let d = absmax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.d = f32_to_f16(d);
        for (q, &v) in out.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}
