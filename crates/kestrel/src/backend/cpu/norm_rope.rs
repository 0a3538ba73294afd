//! RMSNorm, Qwen3's per-head q/k norm, neox RoPE and the KV-cache write, step by step as HF does them.

use super::{CpuKvCache, CpuTensor};
use crate::backend::{AttnMetadata, AttnParams};
use crate::{KestrelError, Result};

/// `x * rsqrt(mean(x²) + eps) * w`, in f32 (HF computes the norm in f32 too).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter_mut().zip(w).for_each(|(v, w)| *v = *v * inv * w);
}

/// Inverse frequencies as HF computes them: `1 / theta^(2i/d)` in f32.
pub fn rope_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect()
}

/// Neox (rotate-half) RoPE of one head at position `pos`.
pub fn rope_in_place(x: &mut [f32], pos: u32, inv_freq: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let angle = pos as f32 * inv_freq[i];
        let (sin, cos) = angle.sin_cos();
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos - b * sin;
        x[i + half] = b * cos + a * sin;
    }
}

pub fn qk_norm_rope_store_kv(
    qkv: &CpuTensor,
    p: &AttnParams<'_, Vec<f32>>,
    meta: &AttnMetadata,
    cache: &mut CpuKvCache,
    layer: usize,
) -> Result<CpuTensor> {
    let (hd, qd, kvd) = (
        p.head_dim,
        p.num_heads * p.head_dim,
        p.num_kv_heads * p.head_dim,
    );
    if qkv.cols != qd + 2 * kvd || qkv.rows != meta.num_tokens() {
        return Err(KestrelError::Backend(format!(
            "qkv is [{}, {}], expected [{}, {}]",
            qkv.rows,
            qkv.cols,
            meta.num_tokens(),
            qd + 2 * kvd
        )));
    }
    let slots = cache.spec.num_blocks * cache.spec.block_size;
    let inv_freq = rope_inv_freq(hd, p.rope_theta);
    let mut q_out = CpuTensor::zeros(qkv.rows, qd);
    let (k_cache, v_cache) = (&mut cache.k[layer], &mut cache.v[layer]);
    for t in 0..qkv.rows {
        let row = qkv.row(t);
        let pos = meta.positions[t];
        let slot = meta.slot_mapping[t] as usize;
        if slot >= slots {
            return Err(KestrelError::Backend(format!(
                "cache slot {slot} past the {slots} slots"
            )));
        }
        let q = &mut q_out.data[t * qd..(t + 1) * qd];
        q.copy_from_slice(&row[..qd]);
        for head in q.chunks_mut(hd) {
            if let Some(w) = p.q_norm {
                rms_norm_in_place(head, w, p.rms_norm_eps);
            }
            rope_in_place(head, pos, &inv_freq);
        }
        let k = &mut k_cache[slot * kvd..(slot + 1) * kvd];
        k.copy_from_slice(&row[qd..qd + kvd]);
        for head in k.chunks_mut(hd) {
            if let Some(w) = p.k_norm {
                rms_norm_in_place(head, w, p.rms_norm_eps);
            }
            rope_in_place(head, pos, &inv_freq);
        }
        v_cache[slot * kvd..(slot + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
    }
    Ok(q_out)
}
