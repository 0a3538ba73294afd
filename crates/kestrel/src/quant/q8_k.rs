//! Q8_K: 256 activations as i8 times an f32 scale, plus the 16 sums of each group of 16 (292 bytes),
//! the activation format of ggml's K-quant dot products (the sums fold the weights' minimums in).

use super::{block_pod, nearest_int, Block, GgmlType, QuantizeBlock, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}
block_pod!(BlockQ8K, 292);

impl BlockQ8K {
    pub fn scale(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    pub fn bsum(&self, i: usize) -> i16 {
        i16::from_le_bytes(self.bsums[i])
    }
}

impl Block for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const QK: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.scale();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = d * q as f32;
        }
    }
}

impl QuantizeBlock for BlockQ8K {
    /// ggml's `quantize_row_q8_K_ref`: the extreme value maps to -127 (not -128, which keeps the AVX
    /// kernels' sign tricks in range), round half to even.
    fn quantize(x: &[f32], out: &mut Self) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *out = bytemuck::Zeroable::zeroed();
            return;
        }
        let iscale = -127.0 / max;
        for (q, &v) in out.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, group) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
            *s = (group.iter().map(|&q| q as i16).sum::<i16>()).to_le_bytes();
        }
        out.d = (1.0 / iscale).to_le_bytes();
    }
}
