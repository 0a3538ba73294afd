//! Causal grouped-query attention over the paged KV cache, one (token, head) pair at a time.

use rayon::prelude::*;

use super::{CpuKvCache, CpuTensor};
use crate::backend::{AttnMetadata, AttnParams};
use crate::Result;

pub fn paged_attention(
    q: &CpuTensor,
    p: &AttnParams<'_, Vec<f32>>,
    meta: &AttnMetadata,
    cache: &CpuKvCache,
    layer: usize,
) -> Result<CpuTensor> {
    let (hd, heads, kvd) = (p.head_dim, p.num_heads, p.num_kv_heads * p.head_dim);
    let group = heads / p.num_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let bs = meta.block_size;
    let (k_cache, v_cache) = (&cache.k[layer], &cache.v[layer]);
    let mut out = CpuTensor::zeros(q.rows, heads * hd);
    // Which sequence each batch token belongs to.
    let mut seq_of = vec![0usize; q.rows];
    for (i, s) in meta.seqs.iter().enumerate() {
        seq_of[s.query_start..s.query_start + s.query_len].fill(i);
    }
    out.data.par_chunks_mut(hd).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (idx, o)| {
            let (t, h) = (idx / heads, idx % heads);
            let s = &meta.seqs[seq_of[t]];
            let n_keys = meta.positions[t] as usize + 1;
            let qh = &q.row(t)[h * hd..(h + 1) * hd];
            let kv_off = (h / group) * hd;
            let slot = |j: usize| s.block_table[j / bs] as usize * bs + j % bs;
            scores.clear();
            scores.extend((0..n_keys).map(|j| {
                let k = &k_cache[slot(j) * kvd + kv_off..][..hd];
                super::matmul::dot(qh, k) * scale
            }));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            scores.iter_mut().for_each(|x| {
                *x = (*x - max).exp();
                sum += *x;
            });
            for (j, &w) in scores.iter().enumerate() {
                let v = &v_cache[slot(j) * kvd + kv_off..][..hd];
                o.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
            }
            o.iter_mut().for_each(|x| *x /= sum);
        },
    );
    Ok(out)
}
