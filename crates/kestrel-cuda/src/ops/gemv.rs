//! Decode GEMV over bf16 weights: `y = x W^T (+ bias)`, optionally added into `y` (fused residual).

use crate::dtype::Bf16;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{expect_aligned16, expect_len, launch, shape_error, to_i32, Arg};
use crate::compile::{GEMV_BF16, GEMV_TILED};
use crate::{CudaDevice, Result};

/// Rows per warp and warps per block of `gemv_bf16`; must match `ROWS` in kernels/gemv_bf16.cu.
const ROWS_PER_WARP: usize = 2;
const WARPS_PER_BLOCK: usize = 4;
/// Tokens per launch: the grid's y dimension.
const MAX_TOKENS: usize = 65_535;

/// `gemv_bf16_t{T}`: rows per warp group and warps per block; must match `GEMV_R` / `GEMV_WARPS`.
pub(super) const TILED_ROWS: usize = 2;
pub(super) const TILED_WARPS: usize = 8;
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
const TILED_NORM_NAMES: [&str; TILED_MAX_TOKENS] = [
    "gemv_bf16_t1_norm",
    "gemv_bf16_t2_norm",
    "gemv_bf16_t3_norm",
    "gemv_bf16_t4_norm",
    "gemv_bf16_t5_norm",
    "gemv_bf16_t6_norm",
    "gemv_bf16_t7_norm",
    "gemv_bf16_t8_norm",
];
/// Shared memory a block may use without opting in: the fused norm stages `tokens x in_features`
/// bf16 there, so wider inputs take the unfused path (see [`fused_norm_fits`]).
const NORM_SMEM_LIMIT: usize = 48 * 1024;
/// Blocks wanted per launch (about 2 per SM of a 132-SM H100/H200) before K is split further.
/// Half of what a one-token GEMV can keep resident (4 blocks an SM at 64 registers), so the next
/// kernel's blocks find room to start and prefetch their weights while this one runs (PDL): 512
/// filled every slot and PDL brought nothing. Measured (H100, session 12, one call, tg128 tok/s,
/// 512 -> 256): Qwen3-0.6B BF16 batch 1 1,085 / 1,083 -> 1,110 / 1,113, batch 4 2,895 / 2,897 ->
/// 3,098 / 3,111, batch 8 4,380 / 4,322 -> 4,809 / 4,769; Qwen3-4B batch 1 281.3 / 279.1 -> 291.8 /
/// 291.7, batch 4 873.6 / 872.3 -> 915.1 / 914.6, but batch 8 1,106.0 / 1,107.0 -> 1,072.9 /
/// 1,069.5 (its 120-register kernel holds 2 blocks an SM: the K-split it loses mattered more);
/// 128: 1,062, 3,024, 4,468 at 0.6B. Q8_0 and Q4_K_M 0.6B batch 1 unchanged (another call).
const TARGET_BLOCKS: usize = 256;
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

/// The K-split of the tiled kernel for a `[weight_rows, in_features]` weight: the smallest that gives
/// [`TARGET_BLOCKS`] blocks, unless that would make K-slices thinner than 64 chunks. (Measured on
/// H200: persistent blocks sized by occupancy, one wave, lost to this by 1.5x: many small blocks
/// hide latency better.)
pub fn auto_k_split(weight_rows: usize, in_features: usize) -> usize {
    auto_k_split_for(weight_rows, in_features, target_blocks())
}

/// [`TARGET_BLOCKS`], or `KESTREL_GEMV_BLOCKS` (to measure other grid sizes).
fn target_blocks() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| crate::knobs::positive_usize("KESTREL_GEMV_BLOCKS", TARGET_BLOCKS))
}

fn auto_k_split_for(weight_rows: usize, in_features: usize, target_blocks: usize) -> usize {
    let chunks = in_features / 8;
    let mut ks = 1;
    while ks < TILED_WARPS {
        let blocks = weight_rows.div_ceil(TILED_ROWS * TILED_WARPS / ks);
        if blocks >= target_blocks || chunks.div_ceil(2 * ks) < MIN_SLICE_CHUNKS {
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
    /// SwiGLU over a merged `[gate; up]` weight of `2 * inter` rows: `y [tokens, inter] =
    /// bf16(bf16(silu(bf16(x gate^T))) * bf16(x up^T))`, HF's bf16 MLP rounding. Tiled kernel only.
    SwiGlu,
}

impl Accumulate {
    pub(super) fn kernel_mode(self) -> i32 {
        match self {
            Accumulate::Overwrite => 0,
            Accumulate::AddToOutput => 1,
            Accumulate::SwiGlu => 2,
        }
    }
}

/// The RMSNorm fused in front of a GEMV: `x` is then the residual stream and the kernel multiplies
/// `rms_norm(x) * weight` (HF's rounding, as kernels/rms_norm.cu) with the weight.
#[derive(Clone, Copy)]
pub struct GemvNorm<'a> {
    pub weight: &'a dyn DevicePtr<f32>,
    pub eps: f32,
}

/// Whether the fused norm's staging of `tokens x in_features` bf16 fits a block's shared memory.
pub fn fused_norm_fits(tokens: usize, in_features: usize) -> bool {
    (1..=TILED_MAX_TOKENS).contains(&tokens) && tokens * in_features * 2 <= NORM_SMEM_LIMIT
}

/// The checks a GEMV's epilogue and fused norm need (any weight format): SwiGLU's even rows and no
/// bias, the norm's length and shared memory, `y` and `bias` lengths. Returns the output rows (SwiGLU
/// writes one per gate/up pair).
pub(super) fn check_epilogue(
    op: &'static str,
    (tokens, in_features, out_features): (usize, usize, usize),
    norm: Option<GemvNorm<'_>>,
    bias: Option<&dyn DevicePtr<f32>>,
    y_len: usize,
    mode: Accumulate,
) -> Result<usize> {
    let out_rows = if mode == Accumulate::SwiGlu {
        if !out_features.is_multiple_of(2) || bias.is_some() {
            return Err(shape_error(
                op,
                format!("SwiGLU needs an even number of weight rows ({out_features}) and no bias"),
            ));
        }
        out_features / 2
    } else {
        out_features
    };
    if let Some(n) = &norm {
        expect_len(op, "norm weight", n.weight.len(), in_features)?;
        if !fused_norm_fits(tokens, in_features) {
            return Err(shape_error(
                op,
                format!("a fused norm over {tokens} x {in_features} does not fit shared memory"),
            ));
        }
    }
    expect_len(op, "y", y_len, tokens * out_rows)?;
    if let Some(b) = bias {
        expect_len(op, "bias", b.len(), out_features)?;
    }
    Ok(out_rows)
}

/// The device pointer of an optional buffer (0 for none) and the guard that orders the stream.
pub(super) fn optional_ptr<'a>(
    buf: Option<&'a dyn DevicePtr<f32>>,
    s: &'a std::sync::Arc<cudarc::driver::CudaStream>,
) -> (u64, Option<cudarc::driver::SyncOnDrop<'a>>) {
    match buf {
        Some(b) => {
            let (p, g) = b.device_ptr(s);
            (p, Some(g))
        }
        None => (0, None),
    }
}

/// One launch of a tiled GEMV kernel (gemv_tiled.cuh, any weight format): the grid, block and shared
/// memory its `tokens`, fused norm, mode and `k_split` need; `args` end with the mode, the caller
/// pushes them up to it and this adds `k_split` (and `ldy`, for kernels that take it).
pub(super) struct TiledLaunch {
    pub tokens: usize,
    pub in_features: usize,
    /// Output rows (SwiGLU: half the weight rows).
    pub out_rows: usize,
    pub norm: bool,
    pub mode: Accumulate,
    pub k_split: usize,
    /// Distance between y's rows, for kernels with that argument (the quantized GEMVs).
    pub ldy: Option<usize>,
    /// Dynamic shared memory beyond the fused norm's (the dp4a kernels' quantized x).
    pub extra_smem: usize,
}

impl TiledLaunch {
    pub fn launch(
        &self,
        dev: &CudaDevice,
        kernel: &crate::compile::Kernel,
        name: &'static str,
        mut args: Vec<Arg>,
    ) -> Result<()> {
        // the fused norm stages the tokens' normalised rows in shared memory
        let norm_smem = if self.norm {
            self.tokens * self.in_features * 2
        } else {
            0
        };
        let smem = (norm_smem + self.extra_smem) as u32;
        // a SwiGLU group owns one gate row and its up row
        let rows_per_group = if self.mode == Accumulate::SwiGlu {
            1
        } else {
            TILED_ROWS
        };
        let row_blocks = self
            .out_rows
            .div_ceil(rows_per_group * TILED_WARPS / self.k_split);
        let cfg = LaunchConfig {
            grid_dim: (row_blocks as u32, 1, 1),
            block_dim: ((32 * TILED_WARPS) as u32, 1, 1),
            shared_mem_bytes: smem,
        };
        args.push(Arg::I32(self.k_split as i32));
        if let Some(ldy) = self.ldy {
            args.push(Arg::I32(super::to_i32("gemv", "ldy", ldy)?));
        }
        launch(dev, kernel, name, cfg, &args)
    }
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
    gemv_impl(dev, x, None, w, bias, in_features, y, mode, kernel)
}

/// [`gemv_bf16`] with an RMSNorm of `x` in front (`norm`) and/or the SwiGLU epilogue
/// ([`Accumulate::SwiGlu`]): one launch of the tiled kernel (1..=8 tokens).
#[allow(clippy::too_many_arguments)]
pub fn gemv_bf16_fused(
    dev: &CudaDevice,
    x: &impl DevicePtr<Bf16>,
    norm: Option<GemvNorm<'_>>,
    w: &impl DevicePtr<Bf16>,
    bias: Option<&dyn DevicePtr<f32>>,
    in_features: usize,
    y: &mut impl DevicePtrMut<Bf16>,
    mode: Accumulate,
) -> Result<()> {
    gemv_impl(
        dev,
        x,
        norm,
        w,
        bias,
        in_features,
        y,
        mode,
        GemvKernel::Auto,
    )
}

#[allow(clippy::too_many_arguments)]
fn gemv_impl(
    dev: &CudaDevice,
    x: &impl DevicePtr<Bf16>,
    norm: Option<GemvNorm<'_>>,
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
    let fused = norm.is_some() || mode == Accumulate::SwiGlu;
    let out_rows = check_epilogue(
        OP,
        (tokens, in_features, out_features),
        norm,
        bias,
        y.len(),
        mode,
    )?;
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
    let (bp, _gb) = optional_ptr(bias, s);
    let (np, _gn) = optional_ptr(norm.map(|n| n.weight), s);
    let (yp, _gy) = y.device_ptr_mut(s);
    expect_aligned16(OP, "x", xp)?;
    if norm.is_some() {
        expect_aligned16(OP, "norm weight", np)?;
    }
    expect_aligned16(OP, "w", wp)?;
    // k_split 0: chosen below, once the kernel's occupancy is known
    let kernel = match kernel {
        GemvKernel::Auto if tokens <= TILED_MAX_TOKENS => GemvKernel::Tiled { k_split: 0 },
        GemvKernel::Auto => GemvKernel::WarpRows,
        k => k,
    };
    if fused && !matches!(kernel, GemvKernel::Tiled { .. }) {
        return Err(shape_error(
            OP,
            format!("{tokens} tokens: the fused norm / SwiGLU GEMV takes 1..={TILED_MAX_TOKENS}"),
        ));
    }
    let mut args = vec![Arg::Ptr(yp), Arg::Ptr(xp), Arg::Ptr(wp), Arg::Ptr(bp)];
    let tail = [
        Arg::I32(to_i32(OP, "in_features", in_features)?),
        Arg::I32(to_i32(OP, "out_features", out_rows)?),
        Arg::I32(mode.kernel_mode()),
    ];
    match kernel {
        GemvKernel::Tiled { k_split } => {
            if !matches!(k_split, 0 | 1 | 2 | 4 | 8) {
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
            let name = if norm.is_some() {
                TILED_NORM_NAMES[tokens - 1]
            } else {
                TILED_NAMES[tokens - 1]
            };
            args.push(Arg::Ptr(np));
            args.push(Arg::F32(norm.map_or(0.0, |n| n.eps)));
            args.extend(tail);
            let k_split = match k_split {
                0 => auto_k_split(out_features, in_features),
                k => k,
            };
            let tiled = TiledLaunch {
                tokens,
                in_features,
                out_rows,
                norm: norm.is_some(),
                mode,
                k_split,
                ldy: None,
                extra_smem: 0,
            };
            tiled.launch(dev, &GEMV_TILED, name, args)
        }
        _ => {
            args.extend(tail);
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
    use super::{auto_k_split_for, TARGET_BLOCKS};

    #[test]
    fn k_split_by_shape() {
        // (weight rows, in, k_split): Qwen3-0.6B qkv, gate_up, o, down, lm_head; Qwen3-4B the same
        let cases = [
            (4096, 1024, 1),
            (6144, 1024, 1),
            (1024, 2048, 4),
            (1024, 3072, 4),
            (151_936, 1024, 1),
            (6144, 2560, 1),
            (19_456, 2560, 1),
            (2560, 4096, 2),
            (2560, 9728, 2),
            (5, 8, 1),
        ];
        for (out, inp, want) in cases {
            assert_eq!(
                auto_k_split_for(out, inp, TARGET_BLOCKS),
                want,
                "{out}x{inp}"
            );
        }
    }
}
