//! Q5_0: 32 weights as 5-bit integers in [-16, 15] times one f16 scale (22 bytes). The low nibbles are
//! packed as in Q4_0; bit j of the little-endian u32 `qh` is the fifth bit of element j.

use super::q4_0::signed_absmax;
use super::{block_pod, f16_to_f32, f32_to_f16, Block, GgmlType, QuantizeBlock};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
block_pod!(BlockQ5_0, 22);

/// Unpacks the 32 5-bit values of a Q5_0/Q5_1 block.
#[inline]
pub(crate) fn unpack5(qh: [u8; 4], qs: &[u8; 16], mut f: impl FnMut(usize, u8)) {
    let qh = u32::from_le_bytes(qh);
    for (j, &q) in qs.iter().enumerate() {
        f(j, (q & 0x0f) | (((qh >> j) & 1) << 4) as u8);
        f(j + 16, (q >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8);
    }
}

/// Packs 32 5-bit values into (qh, qs).
#[inline]
pub(crate) fn pack5(q: impl Fn(usize) -> u8, qh: &mut [u8; 4], qs: &mut [u8; 16]) {
    let mut h = 0u32;
    for (j, q_out) in qs.iter_mut().enumerate() {
        let (a, b) = (q(j), q(j + 16));
        *q_out = (a & 0x0f) | (b << 4);
        h |= (((a >> 4) & 1) as u32) << j;
        h |= (((b >> 4) & 1) as u32) << (j + 16);
    }
    *qh = h.to_le_bytes();
}

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const QK: usize = 32;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        unpack5(self.qh, &self.qs, |j, q| {
            out[j] = (q as i32 - 16) as f32 * d
        });
    }
}

impl QuantizeBlock for BlockQ5_0 {
    /// gguf-py's / ggml's reference, as Q4_0 with 16 levels on each side.
    fn quantize(x: &[f32], out: &mut Self) {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.d = f32_to_f16(d);
        let q = |j: usize| ((x[j] * id + 16.5).trunc() as u8).min(31);
        pack5(q, &mut out.qh, &mut out.qs);
    }
}
