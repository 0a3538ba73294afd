//! Q4_0: 32 weights as 4-bit integers in [-8, 7] times one f16 scale (18 bytes).
//! Nibble j of the low halves holds element j, the high halves element j + 16.

use super::{block_pod, f16_to_f32, f32_to_f16, Block, GgmlType, QuantizeBlock};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}
block_pod!(BlockQ4_0, 18);

/// The element of largest magnitude, signed; the first one on ties, like numpy's `argmax` (gguf-py),
/// which decides the sign of the scale of an all-zero block.
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut max = x[0];
    for &v in &x[1..] {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    max
}

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const QK: usize = 32;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let (lo, hi) = out.split_at_mut(16);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = ((q & 0x0f) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ4_0 {
    /// gguf-py's / ggml's reference: the scale maps the extreme value to -8 exactly, the rest truncate
    /// after adding 8.5 (round half up), clamped to 15.
    fn quantize(x: &[f32], out: &mut Self) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.d = f32_to_f16(d);
        let q = |v: f32| ((v * id + 8.5).trunc() as u8).min(15);
        for j in 0..16 {
            out.qs[j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}
