//! The tensor-core decode GEMV for 4- to 6-bit weights (kernels/gemv_mma.cu): quants to bf16 by a
//! byte permute and one exact bf16x2 FMA, `mma.m16n8k16` against bf16 x, block scales on the f32
//! results; each warp streams its 16 rows through shared memory by cp.async. Same function and
//! fusions as the dequantizing kernel (gemv_quant.cu) and bf16 activations, so the parity criterion is
//! unchanged (summation order only).
//!
//! Where it runs ([`use_mma`]) is measured (`kestrel_cuda_gpu_quant` timing, H200, Qwen3-4B shapes,
//! batch 1, µs, tiled / mma): Q4_0 qkv 8.9 / 6.9, o_proj 7.4 / 6.9, gate_up 19.8 / 18.9, down 12.0 /
//! 11.5, lm_head 127.7 / 73.7 (3.0 TB/s); Q4_K 10.6 / 8.3, 9.0 / 8.3, 23.8 / 21.8, 14.2 / 14.8, 165.1 /
//! 95.4; Q5_0 and Q6_K win only the lm_head (134.1 / 94.4, 171.8 / 112.0) and lose the layer shapes
//! (Q6_K gate_up 24.9 / 33.4: their side planes are 4-8 bytes a chunk, staged 4 bytes a copy).
//! `KESTREL_MMA=0` turns it off (A/B runs).

use cudarc::driver::LaunchConfig;

use super::gemv::Accumulate;
use super::quant_layout::QuantFormat;
use super::{allow_dynamic_smem, launch, Arg};
use crate::compile::GEMV_MMA;
use crate::{CudaDevice, Result};

/// Warps per block and rows per warp group's tile; must match MMA_WARPS and the 16 of gemv_mma.cu.
const MMA_WARPS: usize = 8;
const TILE_ROWS: usize = 16;
/// Padding of each staged x row (values), and MMA_U: the chunks of a round.
const XPAD: usize = 16;
const CHUNKS_AHEAD: usize = 8;
/// The most tokens one mma covers (its N).
pub const MMA_MAX_TOKENS: usize = 8;
/// Dynamic shared memory a launch may opt in to (H100/H200: 227 KB a block, less the static part).
const SMEM_LIMIT: usize = 200 * 1024;
/// Dynamic shared memory a block gets without opting in: 48 KB with the static part (the K-slice
/// partial sums, up to 8.25 KB) included.
const DEFAULT_SMEM: usize = 48 * 1024 - 9 * 1024;
/// Warps wanted per launch (about 16 per SM of a 132-SM H100/H200) before K is split further.
const TARGET_WARPS: usize = 2048;

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KESTREL_MMA").map_or(true, |v| v != "0"))
}

/// Dynamic shared memory of a launch: the staged x rows and their sums of 16, then each warp's two
/// buffers of staged tiles (MmaStage: 16 rows x 8 chunks of qs, padded, and of the side planes).
pub fn mma_smem(format: QuantFormat, mode: Accumulate, tokens: usize, in_features: usize) -> usize {
    let x = (tokens * ((in_features + XPAD) * 2 + in_features / 16 * 4)).next_multiple_of(16);
    // side-plane bytes per chunk staged (A0 + A1 of gemv_mma.cu's formats)
    let side = match format {
        QuantFormat::Q4_0 | QuantFormat::Q4_K => 2,
        QuantFormat::Q5_0 => 4 + 2,
        QuantFormat::Q6_K => 8 + 2,
        QuantFormat::Q8_0 => 0,
    };
    let tile = TILE_ROWS * (CHUNKS_AHEAD * 16 + 16) + TILE_ROWS * CHUNKS_AHEAD * side;
    let tiles = if mode == Accumulate::SwiGlu { 2 } else { 1 };
    x + MMA_WARPS * 2 * tiles * tile
}

/// The kernel of `format` (the formats whose dequantizing GEMV is bound by its arithmetic), or None.
pub fn mma_kernel(format: QuantFormat, mode: Accumulate, norm: bool) -> Option<&'static str> {
    macro_rules! names {
        ($f:literal) => {
            [
                [concat!("gemv_mma_", $f), concat!("gemv_mma_", $f, "_norm")],
                [
                    concat!("gemv_mma_", $f, "_silu"),
                    concat!("gemv_mma_", $f, "_silu_norm"),
                ],
            ]
        };
    }
    const Q4_0: [[&str; 2]; 2] = names!("q4_0");
    const Q5_0: [[&str; 2]; 2] = names!("q5_0");
    const Q4_K: [[&str; 2]; 2] = names!("q4_k");
    const Q6_K: [[&str; 2]; 2] = names!("q6_k");
    let table = match format {
        QuantFormat::Q4_0 => &Q4_0,
        QuantFormat::Q5_0 => &Q5_0,
        QuantFormat::Q4_K => &Q4_K,
        QuantFormat::Q6_K => &Q6_K,
        QuantFormat::Q8_0 => return None, // streams at bandwidth in the dequantizing kernel
    };
    Some(table[(mode == Accumulate::SwiGlu) as usize][norm as usize])
}

/// Outputs from which Q5_0 / Q6_K GEMVs run on the tensor cores (the lm_head; see the module doc).
const WIDE_OUTPUTS: usize = 65_536;

/// Whether the decode GEMV of `tokens` x `in_features` into `out_rows` outputs over `format` runs on
/// the tensor cores: Q4_0 and Q4_K always, Q5_0 and Q6_K for the vocabulary-sized matrices, where it
/// applies (module doc: measured).
pub fn use_mma(
    format: QuantFormat,
    mode: Accumulate,
    tokens: usize,
    (in_features, out_rows): (usize, usize),
) -> bool {
    let faster = match format {
        QuantFormat::Q4_0 | QuantFormat::Q4_K => true,
        QuantFormat::Q5_0 | QuantFormat::Q6_K => out_rows >= WIDE_OUTPUTS,
        QuantFormat::Q8_0 => false,
    };
    enabled() && faster && mma_applies(format, mode, tokens, in_features)
}

/// [`use_mma`] without the `KESTREL_MMA` switch (tests).
pub fn mma_applies(
    format: QuantFormat,
    mode: Accumulate,
    tokens: usize,
    in_features: usize,
) -> bool {
    mma_kernel(format, mode, false).is_some()
        && (1..=MMA_MAX_TOKENS).contains(&tokens)
        && in_features.is_multiple_of(64)
        && mma_smem(format, mode, tokens, in_features) <= SMEM_LIMIT
}

/// The K-split for `out_rows` outputs of `in_features`: the smallest giving [`TARGET_WARPS`] warps,
/// unless a slice would get fewer than [`CHUNKS_AHEAD`] chunks (one round of loads).
pub fn mma_k_split(out_rows: usize, in_features: usize) -> usize {
    let (tiles, chunks) = (out_rows.div_ceil(TILE_ROWS), in_features / 32);
    let target = target_warps();
    let mut ks = 1;
    while ks < MMA_WARPS && tiles * ks < target && chunks / (2 * ks) >= CHUNKS_AHEAD {
        ks *= 2;
    }
    ks
}

/// [`TARGET_WARPS`], or `KESTREL_MMA_WARPS` (to measure other grid sizes).
fn target_warps() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| crate::knobs::positive_usize("KESTREL_MMA_WARPS", TARGET_WARPS))
}

/// Launches the kernel with the quantized GEMV's arguments (`y` already offset to its first column;
/// everything through `mode`, then k_split and ldy appended here).
#[allow(clippy::too_many_arguments)]
pub(super) fn launch_mma(
    dev: &CudaDevice,
    format: QuantFormat,
    mode: Accumulate,
    norm: bool,
    (tokens, in_features, out_rows): (usize, usize, usize),
    k_split: Option<usize>,
    ldy: i32,
    mut args: Vec<Arg>,
) -> Result<()> {
    let name = mma_kernel(format, mode, norm).expect("use_mma checked the format");
    let k_split = k_split.unwrap_or_else(|| mma_k_split(out_rows, in_features));
    let groups = MMA_WARPS / k_split;
    let smem = mma_smem(format, mode, tokens, in_features);
    if smem > DEFAULT_SMEM {
        // always the same cap (the launch asks for what it needs)
        allow_dynamic_smem(dev, &GEMV_MMA, name, SMEM_LIMIT)?;
    }
    let cfg = LaunchConfig {
        grid_dim: (out_rows.div_ceil(TILE_ROWS * groups) as u32, 1, 1),
        block_dim: ((32 * MMA_WARPS) as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    args.extend([Arg::I32(k_split as i32), Arg::I32(ldy)]);
    launch(dev, &GEMV_MMA, name, cfg, &args)
}
