//! Q4_K: a 256-weight super-block of 8 sub-blocks of 32, each `x ≈ d*sc*q - dmin*m` with 4-bit q and
//! 6-bit (sc, m) packed into 12 bytes under two f16 super-scales (144 bytes).

use super::search::make_qkx2_quants;
use super::{block_pod, f16_to_f32, f32_to_f16, nearest_int, Block, GgmlType, QuantizeBlock, QK_K};

pub const K_SCALE_SIZE: usize = 12;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
block_pod!(BlockQ4K, 144);

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8). Sub-blocks 0..4 keep
/// theirs in the low 6 bits of bytes j and j+4; 4..8 split theirs between a nibble of byte j+4 and the
/// top 2 bits of bytes j-4 and j.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Inverse of [`scale_min_k4`] for all 8 sub-blocks.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The shared first half of the Q4_K/Q5_K reference quantizers: per-sub-block (scale, min) search
/// weighted by `rms + |x|`, then both quantized to 6 bits under f16 super-scales. Returns the packed
/// scales, `d`, `dmin`; `l` gets the search's values.
pub(crate) fn quantize_scales_k(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> ([u8; K_SCALE_SIZE], [u8; 2], [u8; 2]) {
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut l_aux, mut weights) = ([0u8; 32], [0.0f32; 32]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, (xs, l)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) =
            make_qkx2_quants(nmax, xs, &weights, l, &mut l_aux, rmin, 0.1, nstep);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        // ggml stores nearest_int into a uint8_t before clamping; values are in 0..=63 here anyway.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    (
        pack_scale_min_k4(&ls, &lm),
        f32_to_f16(max_scale / 63.0),
        f32_to_f16(max_min / 63.0),
    )
}

/// Requantizes every value against the final (rounded) sub-block scales, as the reference does; a
/// sub-block whose scale rounded to zero keeps the search's values, as in ggml.
pub(crate) fn quantize_values_k(
    x: &[f32],
    scales: &[u8; K_SCALE_SIZE],
    d: [u8; 2],
    dmin: [u8; 2],
    nmax: i32,
    l: &mut [u8; QK_K],
) {
    let (d, dmin) = (f16_to_f32(d), f16_to_f32(dmin));
    for (j, (xs, ls)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let dj = d * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for (q, &v) in ls.iter_mut().zip(xs) {
            *q = nearest_int((v + dm) / dj).clamp(0, nmax) as u8;
        }
    }
}

impl Block for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const QK: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, min) = (f16_to_f32(self.d), f16_to_f32(self.dmin));
        for (j, (q, y)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * j, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (lo, hi) = y.split_at_mut(32);
            for ((&q, l), h) in q.iter().zip(lo).zip(hi) {
                *l = d1 * (q & 0x0f) as f32 - m1;
                *h = d2 * (q >> 4) as f32 - m2;
            }
        }
    }
}

impl QuantizeBlock for BlockQ4K {
    /// ggml's `quantize_row_q4_K_ref`.
    fn quantize(x: &[f32], out: &mut Self) {
        let mut l = [0u8; QK_K];
        let (scales, d, dmin) = quantize_scales_k(x, 15, -1.0, 20, &mut l);
        quantize_values_k(x, &scales, d, dmin, 15, &mut l);
        (out.d, out.dmin, out.scales) = (d, dmin, scales);
        for (q, ls) in out.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for (i, q) in q.iter_mut().enumerate() {
                *q = ls[i] | (ls[i + 32] << 4);
            }
        }
    }
}
