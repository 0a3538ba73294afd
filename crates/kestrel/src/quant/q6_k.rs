//! Q6_K: a 256-weight super-block of 16 sub-blocks of 16, each `x ≈ d*sc*(q - 32)` with 6-bit q (low
//! nibbles in `ql`, top 2 bits in `qh`), i8 sub-scales and one f16 super-scale (210 bytes).

use super::search::{make_qx_quants, GROUP_MAX_EPS};
use super::{block_pod, f16_to_f32, f32_to_f16, nearest_int, Block, GgmlType, QuantizeBlock, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}
block_pod!(BlockQ6K, 210);

impl Block for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const QK: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        // Each half of 128 elements uses 64 bytes of ql, 32 of qh and 8 sub-scales.
        for (n, y) in out.chunks_exact_mut(128).enumerate() {
            let (ql, qh, sc) = (
                &self.ql[64 * n..],
                &self.qh[32 * n..],
                &self.scales[8 * n..],
            );
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                // (d * sc) * q in this order: the product can need 25 bits, so order matters.
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

impl QuantizeBlock for BlockQ6K {
    /// ggml's `quantize_row_q6_K_ref`.
    fn quantize(x: &[f32], out: &mut Self) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ((xs, ls), s) in x
            .chunks_exact(16)
            .zip(l.chunks_exact_mut(16))
            .zip(&mut scales)
        {
            *s = make_qx_quants(32, xs, ls);
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = *s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *out = bytemuck::Zeroable::zeroed();
            return;
        }
        let iscale = -128.0 / max_scale;
        out.d = f32_to_f16(1.0 / iscale);
        for (o, &s) in out.scales.iter_mut().zip(&scales) {
            *o = nearest_int(iscale * s).min(127) as i8;
        }
        let d = f16_to_f32(out.d);
        for ((xs, ls), &sc) in x
            .chunks_exact(16)
            .zip(l.chunks_exact_mut(16))
            .zip(&out.scales)
        {
            let dj = d * sc as f32;
            if dj == 0.0 {
                continue;
            }
            for (q, &v) in ls.iter_mut().zip(xs) {
                *q = (nearest_int(v / dj).clamp(-32, 31) + 32) as i8;
            }
        }
        for (n, ls) in l.chunks_exact(128).enumerate() {
            let (ql, qh) = (
                &mut out.ql[64 * n..64 * n + 64],
                &mut out.qh[32 * n..32 * n + 32],
            );
            for i in 0..32 {
                let q = |k: usize| ls[i + 32 * k] as u8;
                ql[i] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
                ql[i + 32] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
                qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}
