//! Decode GEMV over GGUF Q8_0 weights (kernels/gemv_q8_0.cu: the tiled kernel of gemv_tiled.cuh with
//! dequantization in registers), and the repacking of Q8_0 blocks into its layout.
//!
//! Layout: GGUF stores 34-byte blocks (an f16 scale, then 32 i8), which no 16-byte vector load can
//! stream; at upload they are split into `qs` `[rows, in_features]` i8 (rows 16-byte aligned) and
//! `scales` `[rows, in_features / 32]` f16 bits. The values are the file's, byte for byte.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use kestrel::quant::q8_0::BlockQ8_0;

use super::gemv::{
    auto_k_split, check_epilogue, optional_ptr, Accumulate, GemvNorm, TiledLaunch, TILED_MAX_TOKENS,
};
use super::{expect_aligned16, expect_len, shape_error, to_i32, Arg};
use crate::compile::GEMV_Q8_0;
use crate::dtype::Bf16;
use crate::{CudaDevice, Result};

/// Weights per Q8_0 block.
pub const Q8_0_BLOCK: usize = 32;

const NAMES: [&str; TILED_MAX_TOKENS] = [
    "gemv_q8_0_t1",
    "gemv_q8_0_t2",
    "gemv_q8_0_t3",
    "gemv_q8_0_t4",
    "gemv_q8_0_t5",
    "gemv_q8_0_t6",
    "gemv_q8_0_t7",
    "gemv_q8_0_t8",
];
const NORM_NAMES: [&str; TILED_MAX_TOKENS] = [
    "gemv_q8_0_t1_norm",
    "gemv_q8_0_t2_norm",
    "gemv_q8_0_t3_norm",
    "gemv_q8_0_t4_norm",
    "gemv_q8_0_t5_norm",
    "gemv_q8_0_t6_norm",
    "gemv_q8_0_t7_norm",
    "gemv_q8_0_t8_norm",
];

/// `(qs, scales)` of the kernel's layout from a `[rows, in_features]` tensor's Q8_0 blocks (row-major,
/// `in_features / 32` blocks per row, as GGUF stores them).
pub fn repack_q8_0(blocks: &[BlockQ8_0], in_features: usize) -> Result<(Vec<i8>, Vec<u16>)> {
    if in_features == 0 || !in_features.is_multiple_of(Q8_0_BLOCK) {
        return Err(shape_error(
            "repack_q8_0",
            format!("in_features {in_features} must be a non-zero multiple of {Q8_0_BLOCK}"),
        ));
    }
    let mut qs = Vec::with_capacity(blocks.len() * Q8_0_BLOCK);
    let mut scales = Vec::with_capacity(blocks.len());
    for b in blocks {
        qs.extend_from_slice(&b.qs);
        scales.push(u16::from_le_bytes(b.d));
    }
    Ok((qs, scales))
}

/// `y[t, n] = sum_k x[t, k] * w[n, k]` (+ bias, the fused norm and the modes of [`Accumulate`], as
/// [`super::gemv::gemv_bf16_fused`]) with `w` given as [`repack_q8_0`]'s `qs` / `scales`, for 1..=8
/// tokens.
#[allow(clippy::too_many_arguments)]
pub fn gemv_q8_0(
    dev: &CudaDevice,
    x: &impl DevicePtr<Bf16>,
    norm: Option<GemvNorm<'_>>,
    qs: &impl DevicePtr<i8>,
    scales: &impl DevicePtr<u16>,
    bias: Option<&dyn DevicePtr<f32>>,
    in_features: usize,
    y: &mut impl DevicePtrMut<Bf16>,
    mode: Accumulate,
) -> Result<()> {
    const OP: &str = "gemv_q8_0";
    if in_features == 0 || !in_features.is_multiple_of(Q8_0_BLOCK) {
        return Err(shape_error(
            OP,
            format!("in_features {in_features} must be a non-zero multiple of {Q8_0_BLOCK}"),
        ));
    }
    if !qs.len().is_multiple_of(in_features) || !x.len().is_multiple_of(in_features) {
        return Err(shape_error(
            OP,
            format!(
                "weight ({} values) and x ({} elements) must be multiples of in_features {in_features}",
                qs.len(),
                x.len()
            ),
        ));
    }
    let out_features = qs.len() / in_features;
    let tokens = x.len() / in_features;
    expect_len(
        OP,
        "scales",
        scales.len(),
        out_features * in_features / Q8_0_BLOCK,
    )?;
    if !(1..=TILED_MAX_TOKENS).contains(&tokens) {
        return Err(shape_error(
            OP,
            format!("{tokens} tokens; the Q8_0 GEMV takes 1..={TILED_MAX_TOKENS}"),
        ));
    }
    let out_rows = check_epilogue(
        OP,
        (tokens, in_features, out_features),
        norm,
        bias,
        y.len(),
        mode,
    )?;
    if out_features == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (xp, _gx) = x.device_ptr(s);
    let (qp, _gq) = qs.device_ptr(s);
    let (dp, _gd) = scales.device_ptr(s);
    let (bp, _gb) = optional_ptr(bias, s);
    let (np, _gn) = optional_ptr(norm.map(|n| n.weight), s);
    let (yp, _gy) = y.device_ptr_mut(s);
    expect_aligned16(OP, "x", xp)?;
    expect_aligned16(OP, "qs", qp)?;
    if norm.is_some() {
        expect_aligned16(OP, "norm weight", np)?;
    }
    let args = vec![
        Arg::Ptr(yp),
        Arg::Ptr(xp),
        Arg::Ptr(qp),
        Arg::Ptr(dp),
        Arg::Ptr(bp),
        Arg::Ptr(np),
        Arg::F32(norm.map_or(0.0, |n| n.eps)),
        Arg::I32(to_i32(OP, "in_features", in_features)?),
        Arg::I32(to_i32(OP, "out_features", out_rows)?),
        Arg::I32(mode.kernel_mode()),
    ];
    let name = if norm.is_some() {
        NORM_NAMES[tokens - 1]
    } else {
        NAMES[tokens - 1]
    };
    // a 16-byte chunk is 16 weights here (8 in bf16): split K as for a bf16 row of half the width
    let tiled = TiledLaunch {
        tokens,
        in_features,
        out_rows,
        norm: norm.is_some(),
        mode,
        k_split: auto_k_split(out_features, in_features / 2),
    };
    tiled.launch(dev, &GEMV_Q8_0, name, args)
}
