//! Decode GEMV over bf16 weights: `y = x W^T (+ bias)`, optionally added into `y` (fused residual).

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_aligned16, expect_len, launch, shape_error, to_i32, Arg};
use crate::compile::GEMV_BF16;
use crate::{CudaDevice, Result};

/// Rows per warp and warps per block of `gemv_bf16`; must match `ROWS` in kernels/gemv_bf16.cu.
const ROWS_PER_WARP: usize = 2;
const WARPS_PER_BLOCK: usize = 4;
/// Tokens per launch: the grid's y dimension.
const MAX_TOKENS: usize = 65_535;

/// `gemv_bf16_t{T}`: rows per warp group and warps per block; must match `GEMV_R` / `GEMV_WARPS`.
const TILED_ROWS: usize = 2;
const TILED_WARPS: usize = 8;
/// The most tokens the tiled kernels take (one instantiation per count).
pub const TILED_MAX_TOKENS: usize = 8;
const TILED_NAMES: [&str; TILED_MAX_TOKENS] = [
    "gemv_bf16_t1",
    "gemv_bf16_t2",
    "gemv_bf16_t3",
    "gemv_bf16_t4",
    "gemv_bf16_t5",
    "gemv_bf16_t6",
    "gemv_bf16_t7",
    "gemv_bf16_t8",
];
/// Blocks wanted per launch (about 4 per SM of a 132-SM H100/H200) before K is split further.
const TARGET_BLOCKS: usize = 512;
/// A K-slice of fewer 16-byte chunks than this (2 per lane) is not worth a warp.
const MIN_SLICE_CHUNKS: usize = 64;

/// Which kernel computes a GEMV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvKernel {
    /// Chosen by shape: [`GemvKernel::Tiled`] up to [`TILED_MAX_TOKENS`] tokens with the split of
    /// [`auto_k_split`], [`GemvKernel::WarpRows`] beyond.
    Auto,
    /// The original kernel: each warp owns 2 rows, one block of 4 warps per 8 rows, any token count.
    WarpRows,
    /// `gemv_bf16_t{T}`: blocks of 8 warps, `k_split` (1, 2, 4 or 8) warps sharing each row pair's
    /// K range; 1..=8 tokens.
    Tiled { k_split: usize },
}

/// The K-split of the tiled kernel for a `[out_features, in_features]` weight: the smallest that
/// gives [`TARGET_BLOCKS`] blocks, unless that would make K-slices thinner than 64 chunks.
pub fn auto_k_split(out_features: usize, in_features: usize) -> usize {
    let chunks = in_features / 8;
    let mut ks = 1;
    while ks < TILED_WARPS {
        let blocks = out_features.div_ceil(TILED_ROWS * TILED_WARPS / ks);
        if blocks >= TARGET_BLOCKS || chunks.div_ceil(2 * ks) < MIN_SLICE_CHUNKS {
            break;
        }
        ks *= 2;
    }
    ks
}

/// What to do with the existing contents of `y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    /// `y = bf16(x W^T + bias)`
    Overwrite,
    /// `y = bf16(y + bf16(x W^T + bias))`: o_proj / down_proj with the residual add fused in.
    AddToOutput,
}

/// `y[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n])` with `w` `[out_features, in_features]` (HF's
/// nn.Linear layout), `x` `[tokens, in_features]` and `y` `[tokens, out_features]`.
pub fn gemv_bf16(
    dev: &CudaDevice,
    x: &impl DevicePtr<Bf16>,
    w: &impl DevicePtr<Bf16>,
    bias: Option<&dyn DevicePtr<f32>>,
    in_features: usize,
    y: &mut impl DevicePtrMut<Bf16>,
    mode: Accumulate,
) -> Result<()> {
    gemv_bf16_with(dev, x, w, bias, in_features, y, mode, GemvKernel::Auto)
}

/// [`gemv_bf16`] with the kernel named (tests and benchmarks compare them).
#[allow(clippy::too_many_arguments)]
pub fn gemv_bf16_with(
    dev: &CudaDevice,
    x: &impl DevicePtr<Bf16>,
    w: &impl DevicePtr<Bf16>,
    bias: Option<&dyn DevicePtr<f32>>,
    in_features: usize,
    y: &mut impl DevicePtrMut<Bf16>,
    mode: Accumulate,
    kernel: GemvKernel,
) -> Result<()> {
    const OP: &str = "gemv_bf16";
    if in_features == 0 || !in_features.is_multiple_of(8) {
        return Err(shape_error(
            OP,
            format!("in_features {in_features} must be a non-zero multiple of 8"),
        ));
    }
    if !w.len().is_multiple_of(in_features) || !x.len().is_multiple_of(in_features) {
        return Err(shape_error(
            OP,
            format!(
                "weight ({} elements) and x ({} elements) must be multiples of in_features {in_features}",
                w.len(),
                x.len()
            ),
        ));
    }
    let out_features = w.len() / in_features;
    let tokens = x.len() / in_features;
    expect_len(OP, "y", y.len(), tokens * out_features)?;
    if let Some(b) = bias {
        expect_len(OP, "bias", b.len(), out_features)?;
    }
    if tokens > MAX_TOKENS {
        return Err(shape_error(
            OP,
            format!("{tokens} tokens; a GEMV launch takes at most {MAX_TOKENS}"),
        ));
    }
    if tokens == 0 || out_features == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (xp, _gx) = x.device_ptr(s);
    let (wp, _gw) = w.device_ptr(s);
    let (bp, _gb) = match bias {
        Some(b) => {
            let (p, g) = b.device_ptr(s);
            (p, Some(g))
        }
        None => (0, None),
    };
    let (yp, _gy) = y.device_ptr_mut(s);
    expect_aligned16(OP, "x", xp)?;
    expect_aligned16(OP, "w", wp)?;
    let kernel = match kernel {
        GemvKernel::Auto if tokens <= TILED_MAX_TOKENS => GemvKernel::Tiled {
            k_split: auto_k_split(out_features, in_features),
        },
        GemvKernel::Auto => GemvKernel::WarpRows,
        k => k,
    };
    let mut args = vec![
        Arg::Ptr(yp),
        Arg::Ptr(xp),
        Arg::Ptr(wp),
        Arg::Ptr(bp),
        Arg::I32(to_i32(OP, "in_features", in_features)?),
        Arg::I32(to_i32(OP, "out_features", out_features)?),
        Arg::I32((mode == Accumulate::AddToOutput) as i32),
    ];
    match kernel {
        GemvKernel::Tiled { k_split } => {
            if !matches!(k_split, 1 | 2 | 4 | 8) {
                return Err(shape_error(
                    OP,
                    format!("k_split {k_split} must be 1, 2, 4 or 8"),
                ));
            }
            if tokens > TILED_MAX_TOKENS {
                return Err(shape_error(
                    OP,
                    format!("{tokens} tokens; the tiled GEMV takes at most {TILED_MAX_TOKENS}"),
                ));
            }
            let rows_per_block = TILED_ROWS * TILED_WARPS / k_split;
            let cfg = LaunchConfig {
                grid_dim: (out_features.div_ceil(rows_per_block) as u32, 1, 1),
                block_dim: ((32 * TILED_WARPS) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            args.push(Arg::I32(k_split as i32));
            launch(dev, &GEMV_BF16, TILED_NAMES[tokens - 1], cfg, &args)
        }
        _ => {
            let rows_per_block = ROWS_PER_WARP * WARPS_PER_BLOCK;
            let cfg = LaunchConfig {
                grid_dim: (
                    out_features.div_ceil(rows_per_block) as u32,
                    tokens as u32,
                    1,
                ),
                block_dim: ((32 * WARPS_PER_BLOCK) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            launch(dev, &GEMV_BF16, "gemv_bf16", cfg, &args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::auto_k_split;

    #[test]
    fn k_split_by_shape() {
        // (out, in, k_split): Qwen3-0.6B qkv, gate_up, o, down, lm_head; Qwen3-4B the same
        let cases = [
            (4096, 1024, 2),
            (6144, 1024, 2),
            (1024, 2048, 4),
            (1024, 3072, 4),
            (151_936, 1024, 1),
            (6144, 2560, 2),
            (19_456, 2560, 1),
            (2560, 4096, 4),
            (2560, 9728, 4),
            (5, 8, 1),
        ];
        for (out, inp, want) in cases {
            assert_eq!(auto_k_split(out, inp), want, "{out}x{inp}");
        }
    }
}
