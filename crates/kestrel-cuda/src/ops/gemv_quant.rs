//! Decode GEMV over GGUF block-quantized weights (kernels/gemv_quant.cu: the tiled kernel of
//! gemv_tiled.cuh with dequantization in registers), and the repacking of the blocks into its layout.
//!
//! Layout: GGUF stores each 32-weight block with its f16 scale in front (Q8_0: 34 bytes, Q4_0: 18),
//! which no 16-byte vector load can stream; at upload a tensor is split into `qs` (the blocks' quant
//! bytes, row-major, rows 16-byte aligned) and `scales` `[rows, in_features / 32]` f16 bits. The bytes
//! are the file's.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use kestrel::quant::q4_0::BlockQ4_0;
use kestrel::quant::q8_0::BlockQ8_0;

use super::gemv::{
    auto_k_split, check_epilogue, optional_ptr, Accumulate, GemvNorm, TiledLaunch, TILED_MAX_TOKENS,
};
use super::{expect_aligned16, expect_len, shape_error, to_i32, Arg};
use crate::compile::GEMV_QUANT;
use crate::dtype::Bf16;
use crate::{CudaDevice, Result};

/// Weights per block (every format here).
pub const QUANT_BLOCK: usize = 32;

/// `[["gemv_{fmt}_t{T}", "gemv_{fmt}_t{T}_norm"]; 8]`.
macro_rules! names {
    ($fmt:literal) => {
        [
            names!(@t $fmt, "1"),
            names!(@t $fmt, "2"),
            names!(@t $fmt, "3"),
            names!(@t $fmt, "4"),
            names!(@t $fmt, "5"),
            names!(@t $fmt, "6"),
            names!(@t $fmt, "7"),
            names!(@t $fmt, "8"),
        ]
    };
    (@t $fmt:literal, $t:literal) => {
        [
            concat!("gemv_", $fmt, "_t", $t),
            concat!("gemv_", $fmt, "_t", $t, "_norm"),
        ]
    };
}

/// A weight format with a GEMV kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    Q8_0,
    Q4_0,
}

impl QuantFormat {
    /// Weights per 16-byte chunk of `qs` (the kernel's `PER_CHUNK`).
    fn weights_per_chunk(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 16,
            QuantFormat::Q4_0 => 32,
        }
    }
    /// `qs` bytes per row of `in_features` weights.
    pub fn row_bytes(self, in_features: usize) -> usize {
        in_features * 16 / self.weights_per_chunk()
    }
    fn kernel_name(self, tokens: usize, norm: bool) -> &'static str {
        const Q8: [[&str; 2]; TILED_MAX_TOKENS] = names!("q8_0");
        const Q4: [[&str; 2]; TILED_MAX_TOKENS] = names!("q4_0");
        let table = match self {
            QuantFormat::Q8_0 => &Q8,
            QuantFormat::Q4_0 => &Q4,
        };
        table[tokens - 1][norm as usize]
    }
}

/// `(qs, scales)` of the kernel's layout from Q8_0 blocks (row-major, `in_features / 32` per row, as
/// GGUF stores them).
pub fn repack_q8_0(blocks: &[BlockQ8_0]) -> (Vec<u8>, Vec<u16>) {
    let qs = blocks.iter().flat_map(|b| b.qs.map(|q| q as u8)).collect();
    (qs, blocks.iter().map(|b| u16::from_le_bytes(b.d)).collect())
}

/// [`repack_q8_0`] for Q4_0 blocks (each block's 16 nibble bytes as they are).
pub fn repack_q4_0(blocks: &[BlockQ4_0]) -> (Vec<u8>, Vec<u16>) {
    let qs = blocks.iter().flat_map(|b| b.qs).collect();
    (qs, blocks.iter().map(|b| u16::from_le_bytes(b.d)).collect())
}

/// `y[t, n] = sum_k x[t, k] * w[n, k]` (+ bias, the fused norm and the modes of [`Accumulate`], as
/// [`super::gemv::gemv_bf16_fused`]) with `w` in `format`, given as [`repack_q8_0`]'s or
/// [`repack_q4_0`]'s `qs` / `scales`, for 1..=8 tokens.
#[allow(clippy::too_many_arguments)]
pub fn gemv_quant(
    dev: &CudaDevice,
    format: QuantFormat,
    x: &impl DevicePtr<Bf16>,
    norm: Option<GemvNorm<'_>>,
    qs: &impl DevicePtr<u8>,
    scales: &impl DevicePtr<u16>,
    bias: Option<&dyn DevicePtr<f32>>,
    in_features: usize,
    y: &mut impl DevicePtrMut<Bf16>,
    mode: Accumulate,
) -> Result<()> {
    const OP: &str = "gemv_quant";
    if in_features == 0 || !in_features.is_multiple_of(QUANT_BLOCK) {
        return Err(shape_error(
            OP,
            format!("in_features {in_features} must be a non-zero multiple of {QUANT_BLOCK}"),
        ));
    }
    let row_bytes = format.row_bytes(in_features);
    if !qs.len().is_multiple_of(row_bytes) || !x.len().is_multiple_of(in_features) {
        return Err(shape_error(
            OP,
            format!(
                "{format:?} weight ({} bytes) and x ({} elements) must be whole rows of {in_features}",
                qs.len(),
                x.len()
            ),
        ));
    }
    let out_features = qs.len() / row_bytes;
    let tokens = x.len() / in_features;
    let blocks = out_features * in_features / QUANT_BLOCK;
    expect_len(OP, "scales", scales.len(), blocks)?;
    if !(1..=TILED_MAX_TOKENS).contains(&tokens) {
        return Err(shape_error(
            OP,
            format!("{tokens} tokens; the {format:?} GEMV takes 1..={TILED_MAX_TOKENS}"),
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
    let name = format.kernel_name(tokens, norm.is_some());
    // split K by 16-byte chunks, as for a bf16 row of as many chunks (8 weights each)
    let chunk_width = in_features / format.weights_per_chunk() * 8;
    let tiled = TiledLaunch {
        tokens,
        in_features,
        out_rows,
        norm: norm.is_some(),
        mode,
        k_split: auto_k_split(out_features, chunk_width),
    };
    tiled.launch(dev, &GEMV_QUANT, name, args)
}
