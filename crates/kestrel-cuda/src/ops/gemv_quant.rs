//! Decode GEMV over GGUF block-quantized weights (kernels/gemv_quant.cu: the tiled kernel of
//! gemv_tiled.cuh with dequantization in registers), for the formats of [`QuantFormat`] in the planes
//! of [`super::quant_layout`].

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::gemv::{
    auto_k_split, check_epilogue, optional_ptr, Accumulate, GemvNorm, TiledLaunch, TILED_MAX_TOKENS,
};
use super::gemv_dp4a::{dp4a_smem, use_dp4a, Activations};
use super::gemv_mma::{launch_mma, mma_applies, use_mma};
use super::quant_layout::QuantWeights;
use super::{expect_aligned16, shape_error, to_i32, Arg};
use crate::compile::{GEMV_DP4A, GEMV_QUANT};
use crate::dtype::Bf16;
use crate::{CudaDevice, Result};

/// `y[t, n] = sum_k x[t, k] * w[n, k]` (+ bias, the fused norm and the modes of [`Accumulate`], as
/// [`super::gemv::gemv_bf16_fused`]) with `w` block-quantized, for 1..=8 tokens.
pub fn gemv_quant(
    dev: &CudaDevice,
    w: &QuantWeights,
    x: &impl DevicePtr<Bf16>,
    norm: Option<GemvNorm<'_>>,
    bias: Option<&dyn DevicePtr<f32>>,
    y: &mut impl DevicePtrMut<Bf16>,
    mode: Accumulate,
) -> Result<()> {
    let auto = QuantGemvKernel::Auto(Activations::Bf16);
    gemv_quant_columns(dev, w, x, norm, bias, y, OutColumns::All, mode, auto)
}

/// Where a GEMV's outputs go in `y`.
#[derive(Clone, Copy, Debug)]
pub enum OutColumns {
    /// `y` is `[tokens, outputs]`.
    All,
    /// `y` is `[tokens, width]` and the outputs are its columns `first ..` (the parts of a matrix
    /// stacked from tensors of different formats, one launch each).
    Slice { first: usize, width: usize },
}

/// Which kernel a quantized decode GEMV runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantGemvKernel {
    /// Chosen by format and shape: the integer-dot-product kernel where [`use_dp4a`] picks it for
    /// these activations, else the tensor-core kernel where [`use_mma`] does, else the tiled one.
    Auto(Activations),
    /// gemv_quant.cu: blocks decoded to f32 in registers.
    Tiled,
    /// gemv_mma.cu with this K-split (None: its own choice); tests compare it with the tiled kernel.
    Mma { k_split: Option<usize> },
}

/// [`gemv_quant`] into the columns `out` of a wider `y`, through `kernel` (the backend: `Auto`).
#[allow(clippy::too_many_arguments)]
pub fn gemv_quant_columns(
    dev: &CudaDevice,
    w: &QuantWeights,
    x: &impl DevicePtr<Bf16>,
    norm: Option<GemvNorm<'_>>,
    bias: Option<&dyn DevicePtr<f32>>,
    y: &mut impl DevicePtrMut<Bf16>,
    out: OutColumns,
    mode: Accumulate,
    kernel: QuantGemvKernel,
) -> Result<()> {
    const OP: &str = "gemv_quant";
    let (format, in_features, out_features) = (w.format, w.in_features, w.rows);
    if !x.len().is_multiple_of(in_features) {
        return Err(shape_error(
            OP,
            format!(
                "x ({} elements) is not whole rows of {in_features}",
                x.len()
            ),
        ));
    }
    let tokens = x.len() / in_features;
    if !(1..=TILED_MAX_TOKENS).contains(&tokens) {
        return Err(shape_error(
            OP,
            format!("{tokens} tokens; the {format:?} GEMV takes 1..={TILED_MAX_TOKENS}"),
        ));
    }
    let out_width = if mode == Accumulate::SwiGlu {
        out_features / 2
    } else {
        out_features
    };
    let (first, width) = match out {
        OutColumns::All => (0, out_width),
        OutColumns::Slice { first, width } => (first, width),
    };
    if first + out_width > width || y.len() != tokens * width {
        return Err(shape_error(
            OP,
            format!(
                "outputs {first}..{} of rows of {width}: y has {} elements for {tokens} tokens",
                first + out_width,
                y.len()
            ),
        ));
    }
    let out_rows = check_epilogue(
        OP,
        (tokens, in_features, out_features),
        norm,
        bias,
        tokens * out_width,
        mode,
    )?;
    if out_features == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (xp, _gx) = x.device_ptr(s);
    let (planes, _gw) = w.pointers(s);
    let (bp, _gb) = optional_ptr(bias, s);
    let (np, _gn) = optional_ptr(norm.map(|n| n.weight), s);
    let (yp, _gy) = y.device_ptr_mut(s);
    expect_aligned16(OP, "x", xp)?;
    expect_aligned16(OP, "qs", planes[0])?;
    if norm.is_some() {
        expect_aligned16(OP, "norm weight", np)?;
    }
    let mut args = vec![Arg::Ptr(yp + 2 * first as u64), Arg::Ptr(xp)];
    args.extend(planes.map(Arg::Ptr));
    args.extend([
        Arg::Ptr(bp),
        Arg::Ptr(np),
        Arg::F32(norm.map_or(0.0, |n| n.eps)),
    ]);
    let tail = [
        Arg::I32(to_i32(OP, "in_features", in_features)?),
        Arg::I32(to_i32(OP, "out_features", out_rows)?),
        Arg::I32(mode.kernel_mode()),
    ];
    let (dp4a, mma) = match kernel {
        QuantGemvKernel::Auto(activations) => {
            let dp4a = use_dp4a(format, activations, tokens, in_features);
            (
                dp4a,
                !dp4a && use_mma(format, mode, tokens, (in_features, out_rows)),
            )
        }
        QuantGemvKernel::Tiled => (false, false),
        QuantGemvKernel::Mma { .. } => (false, true),
    };
    if mma {
        if !mma_applies(format, mode, tokens, in_features) {
            return Err(shape_error(
                OP,
                format!("no tensor-core GEMV for {format:?} with {tokens} tokens of {in_features}"),
            ));
        }
        let k_split = match kernel {
            QuantGemvKernel::Mma { k_split } => k_split,
            _ => None,
        };
        args.push(Arg::I32(tokens as i32));
        args.extend(tail);
        let ldy = to_i32(OP, "y width", width)?;
        let shape = (tokens, in_features, out_rows);
        return launch_mma(dev, format, mode, norm.is_some(), shape, k_split, ldy, args);
    }
    args.extend(tail);
    let (kernel, name, extra_smem) = match format.dp4a_kernel(tokens, norm.is_some()) {
        Some(name) if dp4a => (&GEMV_DP4A, name, dp4a_smem(tokens, in_features)),
        _ => (&GEMV_QUANT, format.gemv_kernel(tokens, norm.is_some()), 0),
    };
    // split K by 16-byte chunks, as for a bf16 row of as many chunks (8 weights each)
    let chunk_width = in_features / format.weights_per_chunk() * 8;
    let tiled = TiledLaunch {
        tokens,
        in_features,
        out_rows,
        norm: norm.is_some(),
        mode,
        k_split: auto_k_split(out_features, chunk_width),
        ldy: Some(width),
        extra_smem,
    };
    tiled.launch(dev, kernel, name, args)
}
