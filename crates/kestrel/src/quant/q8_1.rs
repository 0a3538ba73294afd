//! Q8_1: Q8_0 plus `s = d * sum(q)` (36 bytes), the activation format of ggml's integer dot products
//! with Q4_1/Q5_1-style weights (the sum folds their minimum in with one multiply).

use super::q8_0::absmax;
use super::{block_pod, f16_to_f32, f32_to_f16, Block, GgmlType, QuantizeBlock};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; 32],
}
block_pod!(BlockQ8_1, 36);

impl Block for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const QK: usize = 32;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ8_1 {
    /// ggml's `quantize_row_q8_1_ref`.
    fn quantize(x: &[f32], out: &mut Self) {
        let d = absmax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in out.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        out.d = f32_to_f16(d);
        out.s = f32_to_f16(sum as f32 * d);
    }
}
