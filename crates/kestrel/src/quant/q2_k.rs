//! Q2_K: a 256-weight super-block of 16 sub-blocks of 16, `x ≈ d*(sc & 15)*q - dmin*(sc >> 4)` with
//! 2-bit q (84 bytes). Read only: Kestrel does not write it.

use super::{block_pod, f16_to_f32, Block, GgmlType, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
block_pod!(BlockQ2K, 84);

impl Block for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const QK: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, min) = (f16_to_f32(self.d), f16_to_f32(self.dmin));
        // Element 128n + 32j + 16h + l is bits 2j..2j+2 of qs[32n + 16h + l], sub-scale 8n + 2j + h.
        for (g, y) in out.chunks_exact_mut(16).enumerate() {
            let (n, j, h) = (g / 8, (g / 2) % 4, g % 2);
            let sc = self.scales[g];
            let (dl, ml) = (d * (sc & 0x0f) as f32, min * (sc >> 4) as f32);
            let q = &self.qs[32 * n + 16 * h..32 * n + 16 * h + 16];
            for (o, &q) in y.iter_mut().zip(q) {
                *o = dl * ((q >> (2 * j)) & 3) as f32 - ml;
            }
        }
    }
}
