//! Q3_K: a 256-weight super-block of 16 sub-blocks of 16, `x ≈ d*(sc - 32)*q` with 3-bit signed q (2
//! low bits in `qs`, the third, inverted, in `hmask`) and 6-bit sub-scales in 12 bytes (110 bytes).
//! Read only: Kestrel does not write it.

use super::{block_pod, f16_to_f32, Block, GgmlType, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
block_pod!(BlockQ3K, 110);

/// Sub-scale `k` (0..16): low nibble from bytes 0..8, top 2 bits from bytes 8..12.
#[inline]
fn scale(s: &[u8; 12], k: usize) -> i32 {
    let lo = if k < 8 { s[k] & 0x0f } else { s[k - 8] >> 4 };
    let hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

impl Block for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const QK: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        // Element 128n + 32j + 16h + l: bits 2j.. of qs[32n + 16h + l], hmask bit 4n + j of
        // hmask[16h + l] (set means no -4 offset), sub-scale 8n + 2j + h.
        for (g, y) in out.chunks_exact_mut(16).enumerate() {
            let (n, j, h) = (g / 8, (g / 2) % 4, g % 2);
            let dl = d * scale(&self.scales, g) as f32;
            let m = 1u8 << (4 * n + j);
            for (l, o) in y.iter_mut().enumerate() {
                let q = ((self.qs[32 * n + 16 * h + l] >> (2 * j)) & 3) as i32;
                let off = if self.hmask[16 * h + l] & m != 0 {
                    0
                } else {
                    4
                };
                *o = dl * (q - off) as f32;
            }
        }
    }
}
