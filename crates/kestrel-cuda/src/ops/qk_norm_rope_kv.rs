//! Qwen3's per-head q/k RMSNorm + neox RoPE + the paged KV-cache write, in one launch.

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_len, launch, shape_error, to_i32, Arg};
use crate::compile::QK_NORM_ROPE_KV;
use crate::{CudaDevice, Result};

/// The attention layer's head geometry.
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// The read-only inputs of [`qk_norm_rope_kv`].
pub struct QkNormRopeInputs<'a, Q, P, S, F, N> {
    /// `[tokens, (num_heads + 2 * num_kv_heads) * head_dim]`: q heads, then k heads, then v heads.
    pub qkv: &'a Q,
    /// `[tokens]` positions.
    pub positions: &'a P,
    /// `[tokens]` KV-cache slots; a slot `>= num_slots` (use `u32::MAX` for padding) writes nothing.
    pub slot_mapping: &'a S,
    /// `[head_dim / 2]` RoPE inverse frequencies, as HF computes them.
    pub inv_freq: &'a F,
    /// `[head_dim]` q/k norm weights; `None` for models without q/k norms (Qwen2).
    pub q_norm: Option<&'a N>,
    pub k_norm: Option<&'a N>,
    pub rms_norm_eps: f32,
}

/// Normalises (when the norm weights are given) and rotates the q and k heads of `qkv`; writes q to
/// `q_out` `[tokens, num_heads * head_dim]` and k, v to the caches `[num_slots, num_kv_heads * head_dim]`
/// at each token's slot.
pub fn qk_norm_rope_kv<Q, P, S, F, N>(
    dev: &CudaDevice,
    shape: HeadShape,
    inputs: &QkNormRopeInputs<'_, Q, P, S, F, N>,
    q_out: &mut impl DevicePtrMut<Bf16>,
    k_cache: &mut impl DevicePtrMut<Bf16>,
    v_cache: &mut impl DevicePtrMut<Bf16>,
) -> Result<()>
where
    Q: DevicePtr<Bf16>,
    P: DevicePtr<u32>,
    S: DevicePtr<u32>,
    F: DevicePtr<f32>,
    N: DevicePtr<f32>,
{
    const OP: &str = "qk_norm_rope_kv";
    let HeadShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    if head_dim == 0 || !head_dim.is_multiple_of(16) || head_dim > 256 {
        return Err(shape_error(
            OP,
            format!("head_dim {head_dim} must be a multiple of 16 up to 256"),
        ));
    }
    if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(shape_error(
            OP,
            format!("{num_heads} heads over {num_kv_heads} kv heads"),
        ));
    }
    let row = (num_heads + 2 * num_kv_heads) * head_dim;
    let kv_dim = num_kv_heads * head_dim;
    if !inputs.qkv.len().is_multiple_of(row) {
        return Err(shape_error(
            OP,
            format!(
                "qkv has {} elements, not a multiple of {row}",
                inputs.qkv.len()
            ),
        ));
    }
    let tokens = inputs.qkv.len() / row;
    expect_len(OP, "positions", inputs.positions.len(), tokens)?;
    expect_len(OP, "slot_mapping", inputs.slot_mapping.len(), tokens)?;
    expect_len(OP, "inv_freq", inputs.inv_freq.len(), head_dim / 2)?;
    for (what, n) in [("q_norm", inputs.q_norm), ("k_norm", inputs.k_norm)] {
        if let Some(n) = n {
            expect_len(OP, what, n.len(), head_dim)?;
        }
    }
    expect_len(OP, "q_out", q_out.len(), tokens * num_heads * head_dim)?;
    if !k_cache.len().is_multiple_of(kv_dim) || k_cache.len() != v_cache.len() {
        return Err(shape_error(
            OP,
            format!(
                "k_cache ({}) and v_cache ({}) must be equal multiples of {kv_dim}",
                k_cache.len(),
                v_cache.len()
            ),
        ));
    }
    let num_slots = u32::try_from(k_cache.len() / kv_dim)
        .map_err(|_| shape_error(OP, "more than u32::MAX cache slots"))?;
    if tokens == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (qkv, _g1) = inputs.qkv.device_ptr(s);
    let (pos, _g2) = inputs.positions.device_ptr(s);
    let (slots, _g3) = inputs.slot_mapping.device_ptr(s);
    let (freq, _g4) = inputs.inv_freq.device_ptr(s);
    let (qn, _g5) = match inputs.q_norm {
        Some(n) => {
            let (p, g) = n.device_ptr(s);
            (p, Some(g))
        }
        None => (0, None),
    };
    let (kn, _g6) = match inputs.k_norm {
        Some(n) => {
            let (p, g) = n.device_ptr(s);
            (p, Some(g))
        }
        None => (0, None),
    };
    let (q, _g7) = q_out.device_ptr_mut(s);
    let (kc, _g8) = k_cache.device_ptr_mut(s);
    let (vc, _g9) = v_cache.device_ptr_mut(s);
    const WARPS: usize = 4;
    let jobs = tokens * (num_heads + num_kv_heads);
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(jobs.div_ceil(WARPS)).map_err(|_| shape_error(OP, "too many tokens"))?,
            1,
            1,
        ),
        block_dim: ((32 * WARPS) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        &QK_NORM_ROPE_KV,
        "qk_norm_rope_kv_bf16",
        cfg,
        &[
            Arg::Ptr(q),
            Arg::Ptr(kc),
            Arg::Ptr(vc),
            Arg::Ptr(qkv),
            Arg::Ptr(pos),
            Arg::Ptr(slots),
            Arg::Ptr(freq),
            Arg::Ptr(qn),
            Arg::Ptr(kn),
            Arg::F32(inputs.rms_norm_eps),
            Arg::I32(to_i32(OP, "tokens", tokens)?),
            Arg::I32(to_i32(OP, "num_heads", num_heads)?),
            Arg::I32(to_i32(OP, "num_kv_heads", num_kv_heads)?),
            Arg::I32(to_i32(OP, "head_dim", head_dim)?),
            Arg::U32(num_slots),
        ],
    )
}
