//! Causal grouped-query attention over the paged KV cache: flash-decoding (split-K over the context,
//! merged in the kernel by the last partition to finish) when every sequence decodes one token,
//! flash-attention tiles otherwise.
//!
//! Invariants:
//! - The decode launches' grids depend only on `num_seqs`, the shape and `max_partitions`, never on
//!   the context lengths (read from device memory), so a captured CUDA graph replays right as the
//!   sequences grow. A sequence splits its context into at most `max_partitions` partitions of at
//!   least 64 keys; partitions past its end exit at once.
//! - Device-resident metadata (`cu_seqlens_q`, `context_lens`, `block_tables`) can't be checked here:
//!   the caller guarantees `cu_seqlens_q` ascends from 0 to `num_tokens`, no query length exceeds
//!   `max_query_len`, `query_len <= context_len`, and the first `ceil(context_len / block_size)`
//!   entries of each block table name blocks inside the caches. A sequence with query length 0 writes
//!   nothing (padding); a query with no keys yields zeros.
//! - f32 scores, softmax (running max, `expf`) and P.V accumulation; the output is rounded to bf16
//!   once.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::{allow_dynamic_smem, expect_aligned16, expect_len, launch, shape_error, to_i32, Arg};
use crate::compile::{
    ATTENTION_DECODE, ATTENTION_DECODE_MMA, ATTENTION_DECODE_QK, ATTENTION_PREFILL,
    ATTENTION_PREFILL_MMA,
};
use crate::dtype::Bf16;
use crate::ops::qk_norm_rope_kv::QkNormRopeInputs;
use crate::{CudaDevice, Result};

/// The attention layer's geometry and the paged cache's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// One of [`HEAD_DIMS`].
    pub head_dim: usize,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// Row length of the block tables.
    pub max_blocks_per_seq: usize,
}

/// One step's batch: `num_seqs` sequences whose new tokens are the `num_tokens` rows of `q`.
#[derive(Clone, Copy, Debug)]
pub struct AttnBatch<'a, U> {
    pub num_seqs: usize,
    pub num_tokens: usize,
    /// The longest query length in the batch (host-known); 1 means every sequence decodes, which
    /// takes the split-K decode path.
    pub max_query_len: usize,
    /// In a mixed step (`max_query_len > 1`), how many sequences have exactly one query: when
    /// non-zero the split-K decode kernel takes those and the prefill kernel the rest (two launches;
    /// a one-query row in prefill tiles reads its keys once per q head, in one CTA). 0 = the
    /// prefill kernel takes every row.
    pub single_query_seqs: usize,
    /// Which decode-attention kernel takes the one-query rows.
    pub decode_kernel: DecodeKernel,
    /// Which prefill-attention kernel takes the other rows.
    pub prefill_kernel: PrefillKernel,
    /// `[num_seqs + 1]`: sequence `s` owns query rows `cu_seqlens_q[s] .. cu_seqlens_q[s + 1]`.
    pub cu_seqlens_q: &'a U,
    /// `[num_seqs]`: keys in the cache after this step, the new tokens included.
    pub context_lens: &'a U,
    /// `[num_seqs * max_blocks_per_seq]`: cache block of each `block_size` keys of each sequence.
    pub block_tables: &'a U,
}

/// The decode-attention kernels (one query per sequence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeKernel {
    /// The tensor-core kernel: [`DecodeKernel::MmaApart`] (3 slots, bulk copies) for small grids,
    /// [`DecodeKernel::Mma`] with 2 stages above (`DecodeKernel::mma_ring` says which;
    /// `KESTREL_ATTN_MMA` overrides it, `0` = the lane kernel). The tensor-core kernel took nano-vllm's bench.py workload from 13,976
    /// to 19,814 output tok/s (Qwen3-0.6B BF16, H200, session 8); 3 stages measured the same there
    /// (19,770) and 3% faster at 64 sequences, 9% slower at 256.
    #[default]
    Auto,
    /// kernels/attention_decode.cuh: lane groups own keys, f32 FMAs and shuffle reductions.
    Lanes,
    /// kernels/attention_decode_mma.cu: a GQA group's heads as the rows of mma.m16n8k16 against
    /// 16-key tiles, each warp's K/V ring `stages` (2 or 3) tiles deep. For head dims in
    /// [`MMA_HEAD_DIMS`] (others take the lane kernel).
    Mma { stages: usize },
    /// The same kernel with each warp's K and V tiles copied and waited for apart, in a ring of
    /// `slots` (3 or 4) halves (the `_h3` / `_h4` instances, `KESTREL_ATTN_MMA=h3|h4`), filled by
    /// 16-byte cp.async or (`tma`, sm_90 and later; cp.async before) by Hopper's bulk copies, one
    /// per key row completing on a barrier per slot (`_h3tma` / `_h4tma`); bit-identical results.
    /// 3 slots: as many bytes in flight as two stages in 3/4 of the shared memory (4 CTAs an SM at
    /// head_dim 128, not 3); bench.py (H100, 0.6B, session 10) 19,390 output tok/s vs 19,480 with
    /// two stages, but where a decode grid is just over one wave of 3 CTAs an SM (64 sequences x 8
    /// kv heads = 512 CTAs on 396 slots) it gains, with bulk copies most (session 11: +9%; ncu,
    /// H100: the cp.async copies ask L2 for 1.5x the sectors they need). 4 slots: the two stages'
    /// shared memory with three halves in flight instead of two (not measured yet).
    MmaApart { slots: usize, tma: bool },
}

/// A tensor-core decode kernel's ring per warp: `halves` slots of 16-key K or V tiles, K and V of
/// a tile copied together or (`split`) apart; kernels/attention_decode_mma.cu's H and SPLIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MmaRing {
    halves: usize,
    split: bool,
    /// The ring filled by Hopper's bulk copies (sm_90), one per key row, not by cp.async.
    tma: bool,
}

impl MmaRing {
    const fn stages(stages: usize) -> Self {
        MmaRing {
            halves: 2 * stages,
            split: false,
            tma: false,
        }
    }
    /// K and V apart in `slots` halves, filled by bulk copies if `tma`.
    const fn apart(slots: usize, tma: bool) -> Self {
        MmaRing {
            halves: slots,
            split: true,
            tma,
        }
    }
    /// Its instances' name suffix in kernels/attention_decode_mma.cu (none: two stages).
    fn suffix(self) -> &'static str {
        match (self.split, self.halves, self.tma) {
            (false, 6, _) => "_s3",
            (false, _, _) => "",
            (true, 3, false) => "_h3",
            (true, 3, true) => "_h3tma",
            (true, _, false) => "_h4",
            (true, _, true) => "_h4tma",
        }
    }
}

/// Head dimensions with a tensor-core decode instance (`attention_decode_mma_d{D}`) and prefill
/// instance (`attention_prefill_mma_d{D}`).
pub const MMA_HEAD_DIMS: [usize; 2] = [64, 128];

/// The prefill-attention kernels (rows of sequences with more than one query, and in unsplit mixed
/// steps the one-query rows too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefillKernel {
    /// [`PrefillKernel::Mma`]; `KESTREL_PREFILL_MMA=0` gives [`PrefillKernel::Scalar`]. The
    /// tensor-core kernel took pp512 of Qwen3-0.6B BF16 from 108,470 to 178,005 tok/s and nano-vllm's
    /// bench.py workload from 22,040 to 23,941 output tok/s (H200, session 9).
    #[default]
    Auto,
    /// kernels/attention_prefill.cu: f32 FMAs on the CUDA cores, every head dim in [`HEAD_DIMS`].
    Scalar,
    /// kernels/attention_prefill_mma.cu: flash-attention 2 on mma.m16n8k16, for head dims in
    /// [`MMA_HEAD_DIMS`] (others take the scalar kernel).
    Mma,
}

impl PrefillKernel {
    /// Whether this choice runs the tensor-core kernel for `head_dim`.
    fn mma(self, head_dim: usize) -> bool {
        static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = match self {
            PrefillKernel::Scalar => false,
            PrefillKernel::Mma => true,
            PrefillKernel::Auto => *ENV.get_or_init(|| {
                !matches!(std::env::var("KESTREL_PREFILL_MMA").as_deref(), Ok("0"))
            }),
        };
        on && MMA_HEAD_DIMS.contains(&head_dim)
    }
}

impl DecodeKernel {
    /// The tensor-core kernel's ring when this choice runs it for `head_dim`, in a grid of `ctas`
    /// (sequence, head group) CTAs a partition, on a device with bulk copies (`hopper`) or not.
    /// Auto: `KESTREL_ATTN_MMA` when set (0 = the lane kernel, 2, 3, h3, h3tma, h4, h4tma; bulk
    /// copies only where the device has them); else K and V apart in 3 slots (4 CTAs an SM), filled
    /// by bulk copies on sm_90 (by cp.async before: H100 measured that +6% at 64 sequences too), for
    /// grids of at most `KESTREL_ATTN_SMALL_CTAS` (default [`SMALL_DECODE_CTAS`]) CTAs, two cp.async
    /// stages above.
    fn mma_ring(self, head_dim: usize, ctas: usize, hopper: bool) -> Option<MmaRing> {
        let ring = match self {
            DecodeKernel::Lanes => None,
            DecodeKernel::Mma { stages } => Some(MmaRing::stages(if stages == 3 { 3 } else { 2 })),
            DecodeKernel::MmaApart { slots, tma } => Some(MmaRing::apart(
                if slots == 4 { 4 } else { 3 },
                tma && hopper,
            )),
            DecodeKernel::Auto => match forced_ring() {
                Some(choice) => choice.map(|r| MmaRing {
                    tma: r.tma && hopper,
                    ..r
                }),
                None if ctas <= small_decode_ctas() => Some(MmaRing::apart(3, hopper)),
                None => Some(MmaRing::stages(2)),
            },
        };
        ring.filter(|_| MMA_HEAD_DIMS.contains(&head_dim))
    }
}

/// `KESTREL_ATTN_MMA`'s choice, read once: `Some(None)` = the lane kernel, `None` = not set (or
/// not understood: warned).
fn forced_ring() -> Option<Option<MmaRing>> {
    static ENV: std::sync::OnceLock<Option<Option<MmaRing>>> = std::sync::OnceLock::new();
    *ENV.get_or_init(|| match std::env::var("KESTREL_ATTN_MMA").as_deref() {
        Ok("0") => Some(None),
        Ok("2") => Some(Some(MmaRing::stages(2))),
        Ok("3") => Some(Some(MmaRing::stages(3))),
        Ok("h3") => Some(Some(MmaRing::apart(3, false))),
        Ok("h3tma") => Some(Some(MmaRing::apart(3, true))),
        Ok("h4") => Some(Some(MmaRing::apart(4, false))),
        Ok("h4tma") => Some(Some(MmaRing::apart(4, true))),
        Ok(other) => {
            eprintln!(
                "warning: KESTREL_ATTN_MMA={other} is none of 0, 2, 3, h3, h3tma, h4, h4tma; \
                 decode attention keeps its default rings"
            );
            None
        }
        Err(_) => None,
    })
}

/// The largest decode grid on the 3-slot ring: `KESTREL_ATTN_SMALL_CTAS` or [`SMALL_DECODE_CTAS`],
/// read once.
fn small_decode_ctas() -> usize {
    static SMALL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // 0: no grid takes it
    *SMALL.get_or_init(|| {
        crate::knobs::usize_at_least("KESTREL_ATTN_SMALL_CTAS", 0, SMALL_DECODE_CTAS)
    })
}

/// Decode grids of at most this many (sequence, head group) CTAs a partition take the 3-slot ring
/// (see [`DecodeKernel::mma_ring`]).
const SMALL_DECODE_CTAS: usize = 512;

/// Warps per decode CTA; must match kernels/attention_decode_merge.cuh.
const DECODE_WARPS: usize = 4;
/// Keys per warp tile of the tensor-core decode kernel, and its heads per CTA; must match
/// kernels/attention_decode_mma.cu.
const MMA_ATT_KT: usize = 16;
const MMA_ATT_G: usize = 8;
/// Query/key tile sizes and threads of the prefill kernel; must match kernels/attention_prefill.cu.
const PREFILL_BQ: usize = 64;
const PREFILL_BK: usize = 64;
const PREFILL_THREADS: u32 = 256;
/// The same for the tensor-core prefill kernel (kernels/attention_prefill_mma.cu).
const PREFILL_MMA_BQ: usize = 64;
const PREFILL_MMA_BK: usize = 64;
const PREFILL_MMA_THREADS: u32 = 128;
/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SMEM: usize = 48 * 1024;
/// Grid y / z limit.
const MAX_GRID_YZ: usize = 65_535;

/// f32 elements of scratch the decode path needs for `num_seqs` sequences: each (sequence, head,
/// partition) keeps a running max, a sum and `head_dim` accumulators. The prefill path needs none.
pub fn attention_workspace_len(shape: &AttnShape, num_seqs: usize, max_partitions: usize) -> usize {
    num_seqs * shape.num_heads * max_partitions * (shape.head_dim + 2)
}

/// u32 counters the decode path needs for `num_seqs` sequences: one per (sequence, head group) counts
/// its finished partitions. They must be zero before the first launch (allocate them zeroed, and use
/// the buffer for nothing else); every launch leaves them zero.
pub fn attention_counters_len(shape: &AttnShape, num_seqs: usize) -> usize {
    num_seqs * shape.num_heads
}

/// Bytes of dynamic shared memory of the prefill kernel: Q, K, V tiles (bf16, rows padded by 8) and
/// the probabilities (f32, rows padded by 16).
fn prefill_smem_bytes(head_dim: usize) -> usize {
    (PREFILL_BQ + 2 * PREFILL_BK) * (head_dim + 8) * 2 + PREFILL_BQ * (PREFILL_BK + 16) * 4
}

/// Bytes of dynamic shared memory of the tensor-core prefill kernel: the Q tile and two stages of K
/// and V tiles (bf16, rows padded by 8).
fn prefill_mma_smem_bytes(head_dim: usize) -> usize {
    (PREFILL_MMA_BQ + 2 * 2 * PREFILL_MMA_BK) * (head_dim + 8) * 2
}

/// Q heads a decode CTA handles for a GQA group of `group` heads: `decode_g{1,2,4,8}`.
fn decode_heads_per_cta(group: usize) -> usize {
    group.next_power_of_two().min(8)
}

/// Keys in flight per lane group of `decode_g{g}` (its `U`; must match the instances in
/// kernels/attention_decode*.cu).
fn decode_keys_per_lane_group(g: usize) -> usize {
    if g >= 8 {
        2
    } else {
        4
    }
}

/// Stages of the K/V cp.async ring of `decode_g{g}` (its `S`, 0 = none; must match the instances).
fn decode_ring_stages(g: usize) -> usize {
    if g == 4 {
        3
    } else {
        0
    }
}

/// Bytes of dynamic shared memory of `decode_g{g}`: the K/V ring (16 bytes per thread per key slot,
/// K and V, per stage), the CTA's partials, its partition's block-table entries.
fn decode_smem_bytes(g: usize, head_dim: usize, max_blocks_per_seq: usize) -> usize {
    let ring = decode_ring_stages(g) * decode_keys_per_lane_group(g) * 2 * 32 * DECODE_WARPS * 16;
    ring + DECODE_WARPS * g * (head_dim + 2) * 4 + (max_blocks_per_seq + 1) * 4
}

/// Bytes of dynamic shared memory of `attention_decode_mma*_d{head_dim}`: each warp's ring of
/// 16-key K or V tiles (rows padded by 8 bf16), the group's q heads (padded alike), the
/// partition's block-table entries, then (bulk copies) each warp's slot barriers, 8-byte aligned.
fn decode_mma_smem_bytes(head_dim: usize, ring: MmaRing, max_blocks_per_seq: usize) -> usize {
    (DECODE_WARPS * ring.halves * MMA_ATT_KT + MMA_ATT_G) * (head_dim + 8) * 2
        + (max_blocks_per_seq + 1) * 4
        + if ring.tma {
            8 + DECODE_WARPS * ring.halves * 8
        } else {
            0
        }
}

/// The tensor-core decode kernel's name: `attention_decode_mma[_qk]{suffix}_d{head_dim}` (the
/// instances of kernels/attention_decode_mma.cu). Each name is made once and kept for the process
/// (functions are looked up by `&'static str`; there are 24 at most).
fn decode_mma_name(fused: bool, head_dim: usize, ring: MmaRing) -> &'static str {
    type Key = (bool, usize, &'static str);
    static NAMES: std::sync::Mutex<Vec<(Key, &'static str)>> = std::sync::Mutex::new(Vec::new());
    let key = (fused, head_dim, ring.suffix());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, name)) = names.iter().find(|(k, _)| *k == key) {
        return name;
    }
    let qk = if fused { "_qk" } else { "" };
    let name = format!("attention_decode_mma{qk}{}_d{head_dim}", ring.suffix());
    let name: &'static str = Box::leak(name.into_boxed_str());
    names.push((key, name));
    name
}

/// Shared memory a CTA may opt in to (sm_80 and sm_90 give at least this).
const MAX_SMEM: usize = 163 * 1024;

/// Causal GQA attention of the batch's query rows `q` `[num_tokens, num_heads * head_dim]` over the
/// paged caches `k_cache`, `v_cache` `[num_slots, num_kv_heads * head_dim]` (key `pos` of sequence
/// `s` at slot `block_tables[s][pos / block_size] * block_size + pos % block_size`), into `out`
/// (same shape as `q`). The decode path (`max_query_len == 1`) uses `workspace`, which must hold at
/// least [`attention_workspace_len`]`(shape, num_seqs, max_partitions)` elements, and `counters`
/// ([`attention_counters_len`], zero at rest); `max_partitions`
/// (1 ..= 65535) bounds its split of each context. The prefill path ignores both.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention<U: DevicePtr<u32>>(
    dev: &CudaDevice,
    shape: &AttnShape,
    batch: &AttnBatch<'_, U>,
    max_partitions: usize,
    q: &impl DevicePtr<Bf16>,
    k_cache: &impl DevicePtr<Bf16>,
    v_cache: &impl DevicePtr<Bf16>,
    workspace: &mut impl DevicePtrMut<f32>,
    counters: &mut impl DevicePtrMut<u32>,
    out: &mut impl DevicePtrMut<Bf16>,
) -> Result<()> {
    let lens = (
        k_cache.len(),
        v_cache.len(),
        workspace.len(),
        counters.len(),
        out.len(),
    );
    let s = dev.stream();
    let (qp, _gq) = q.device_ptr(s);
    let (kp, _gk) = k_cache.device_ptr(s);
    let (vp, _gv) = v_cache.device_ptr(s);
    let (wp, _gw) = workspace.device_ptr_mut(s);
    let (cp, _gc) = counters.device_ptr_mut(s);
    let (op, _go) = out.device_ptr_mut(s);
    let bufs = Buffers {
        k: (kp, lens.0),
        v: (vp, lens.1),
        workspace: (wp, lens.2),
        counters: (cp, lens.3),
        out: (op, lens.4),
    };
    run(
        dev,
        shape,
        batch,
        max_partitions,
        Queries::Given(qp, q.len()),
        &bufs,
    )
}

/// [`paged_attention`] for a decode step (`max_query_len == 1`) whose queries are still raw rows of
/// the QKV projection (`inputs.qkv`): the kernel applies the q/k RMSNorm and RoPE exactly as
/// [`crate::ops::qk_norm_rope_kv::qk_norm_rope_kv`] does and writes each new key and value into the
/// caches at `inputs.slot_mapping` before attending, so a decode layer needs no launch for that.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_attention_qk<U, Q, P, S, F, N>(
    dev: &CudaDevice,
    shape: &AttnShape,
    batch: &AttnBatch<'_, U>,
    max_partitions: usize,
    inputs: &QkNormRopeInputs<'_, Q, P, S, F, N>,
    k_cache: &mut impl DevicePtrMut<Bf16>,
    v_cache: &mut impl DevicePtrMut<Bf16>,
    workspace: &mut impl DevicePtrMut<f32>,
    counters: &mut impl DevicePtrMut<u32>,
    out: &mut impl DevicePtrMut<Bf16>,
) -> Result<()>
where
    U: DevicePtr<u32>,
    Q: DevicePtr<Bf16>,
    P: DevicePtr<u32>,
    S: DevicePtr<u32>,
    F: DevicePtr<f32>,
    N: DevicePtr<f32>,
{
    const OP: &str = "paged_decode_attention_qk";
    let (nh, nkv, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    if batch.max_query_len != 1 {
        return Err(shape_error(
            OP,
            format!(
                "decode steps only (max_query_len {} != 1)",
                batch.max_query_len
            ),
        ));
    }
    let n = batch.num_tokens;
    expect_len(OP, "qkv", inputs.qkv.len(), n * (nh + 2 * nkv) * hd)?;
    expect_len(OP, "positions", inputs.positions.len(), n)?;
    expect_len(OP, "slot_mapping", inputs.slot_mapping.len(), n)?;
    expect_len(OP, "inv_freq", inputs.inv_freq.len(), hd / 2)?;
    for norm in [inputs.q_norm, inputs.k_norm].into_iter().flatten() {
        expect_len(OP, "q/k norm weight", norm.len(), hd)?;
    }
    let lens = (
        k_cache.len(),
        v_cache.len(),
        workspace.len(),
        counters.len(),
        out.len(),
    );
    let s = dev.stream();
    let (kp, _gk) = k_cache.device_ptr_mut(s);
    let (vp, _gv) = v_cache.device_ptr_mut(s);
    let (wp, _gw) = workspace.device_ptr_mut(s);
    let (cp, _gc) = counters.device_ptr_mut(s);
    let (op, _go) = out.device_ptr_mut(s);
    let (qkv, _g1) = inputs.qkv.device_ptr(s);
    let (positions, _g2) = inputs.positions.device_ptr(s);
    let (slots, _g3) = inputs.slot_mapping.device_ptr(s);
    let (inv_freq, _g4) = inputs.inv_freq.device_ptr(s);
    let q_norm = inputs.q_norm.map(|w| w.device_ptr(s));
    let k_norm = inputs.k_norm.map(|w| w.device_ptr(s));
    let num_slots = u32::try_from(lens.0 / (nkv * hd).max(1))
        .map_err(|_| shape_error(OP, "more than u32::MAX cache slots"))?;
    let fused = FusedQk {
        qkv,
        positions,
        slots,
        inv_freq,
        q_norm: q_norm.as_ref().map_or(0, |w| w.0),
        k_norm: k_norm.as_ref().map_or(0, |w| w.0),
        eps: inputs.rms_norm_eps,
        num_slots,
    };
    let bufs = Buffers {
        k: (kp, lens.0),
        v: (vp, lens.1),
        workspace: (wp, lens.2),
        counters: (cp, lens.3),
        out: (op, lens.4),
    };
    run(
        dev,
        shape,
        batch,
        max_partitions,
        Queries::Fused(fused),
        &bufs,
    )
}

/// Where the queries come from.
enum Queries {
    /// `q` rows (device pointer, elements).
    Given(CUdeviceptr, usize),
    /// Raw QKV rows, normalised and rotated in the decode kernel (`attention_decode_qk_g*`).
    Fused(FusedQk),
}

/// The fused decode kernel's extra arguments (kernels/attention_decode.cuh's `FusedQk`).
struct FusedQk {
    qkv: CUdeviceptr,
    positions: CUdeviceptr,
    slots: CUdeviceptr,
    inv_freq: CUdeviceptr,
    /// 0 = none (Qwen2).
    q_norm: CUdeviceptr,
    k_norm: CUdeviceptr,
    eps: f32,
    num_slots: u32,
}

/// The caches, scratch and output: (device pointer, elements).
struct Buffers {
    k: (CUdeviceptr, usize),
    v: (CUdeviceptr, usize),
    workspace: (CUdeviceptr, usize),
    counters: (CUdeviceptr, usize),
    out: (CUdeviceptr, usize),
}

fn run<U: DevicePtr<u32>>(
    dev: &CudaDevice,
    shape: &AttnShape,
    batch: &AttnBatch<'_, U>,
    max_partitions: usize,
    queries: Queries,
    bufs: &Buffers,
) -> Result<()> {
    const OP: &str = "paged_attention";
    let AttnShape {
        num_heads,
        num_kv_heads,
        head_dim,
        block_size,
        max_blocks_per_seq,
    } = *shape;
    let (num_seqs, num_tokens) = (batch.num_seqs, batch.num_tokens);
    let Some(prefill_name) = prefill_kernel_name(head_dim) else {
        return Err(shape_error(
            OP,
            format!("head_dim {head_dim} is not one of {HEAD_DIMS:?}"),
        ));
    };
    if num_heads == 0
        || num_kv_heads == 0
        || !num_heads.is_multiple_of(num_kv_heads)
        || num_heads > MAX_GRID_YZ
    {
        return Err(shape_error(
            OP,
            format!("{num_heads} heads over {num_kv_heads} kv heads"),
        ));
    }
    if block_size == 0 || max_blocks_per_seq == 0 {
        return Err(shape_error(
            OP,
            format!("block_size {block_size} and max_blocks_per_seq {max_blocks_per_seq} must be positive"),
        ));
    }
    if max_partitions == 0 || max_partitions > MAX_GRID_YZ || num_seqs > MAX_GRID_YZ {
        return Err(shape_error(
            OP,
            format!("max_partitions {max_partitions} and num_seqs {num_seqs} must be 1 ..= {MAX_GRID_YZ}"),
        ));
    }
    if num_tokens > num_seqs * batch.max_query_len
        || (num_tokens > 0 && batch.max_query_len > num_tokens)
    {
        return Err(shape_error(
            OP,
            format!(
                "{num_tokens} tokens can't be {num_seqs} sequences of at most {} queries each",
                batch.max_query_len
            ),
        ));
    }
    let q_dim = num_heads * head_dim;
    let kv_dim = num_kv_heads * head_dim;
    if let Queries::Given(_, q_len) = queries {
        expect_len(OP, "q", q_len, num_tokens * q_dim)?;
    }
    expect_len(OP, "out", bufs.out.1, num_tokens * q_dim)?;
    expect_len(OP, "cu_seqlens_q", batch.cu_seqlens_q.len(), num_seqs + 1)?;
    expect_len(OP, "context_lens", batch.context_lens.len(), num_seqs)?;
    expect_len(
        OP,
        "block_tables",
        batch.block_tables.len(),
        num_seqs * max_blocks_per_seq,
    )?;
    let block_elems = block_size * kv_dim;
    let (k_len, v_len) = (bufs.k.1, bufs.v.1);
    if k_len != v_len || !k_len.is_multiple_of(block_elems) {
        return Err(shape_error(
            OP,
            format!(
                "k_cache ({k_len}) and v_cache ({v_len}) must be equal whole numbers of blocks of {block_size} x {kv_dim}"
            ),
        ));
    }
    // The kernels index with i32 positions, block numbers and sizes.
    to_i32(OP, "num_tokens * num_heads", num_tokens * num_heads)?;
    to_i32(OP, "num_slots", k_len / kv_dim)?;
    to_i32(
        OP,
        "num_seqs * max_blocks_per_seq",
        batch.block_tables.len(),
    )?;
    let decode = batch.max_query_len == 1;
    let split = !decode && batch.single_query_seqs > 0;
    if decode || split {
        let want = attention_workspace_len(shape, num_seqs, max_partitions);
        if bufs.workspace.1 < want {
            return Err(shape_error(
                OP,
                format!("workspace has {} elements, decode needs at least {want} ({num_seqs} sequences, {max_partitions} partitions)", bufs.workspace.1),
            ));
        }
        let want = attention_counters_len(shape, num_seqs);
        if bufs.counters.1 < want {
            return Err(shape_error(
                OP,
                format!(
                    "counters has {} elements, decode needs at least {want}",
                    bufs.counters.1
                ),
            ));
        }
    }
    if num_seqs == 0 || num_tokens == 0 {
        return Ok(());
    }

    let s = dev.stream();
    let (kp, vp, op) = (bufs.k.0, bufs.v.0, bufs.out.0);
    let (cu, _gc) = batch.cu_seqlens_q.device_ptr(s);
    let (ctx, _gx) = batch.context_lens.device_ptr(s);
    let (bt, _gb) = batch.block_tables.device_ptr(s);
    let qp = match &queries {
        Queries::Given(qp, _) => *qp,
        Queries::Fused(f) => f.qkv,
    };
    for (what, p) in [("q", qp), ("k_cache", kp), ("v_cache", vp), ("out", op)] {
        expect_aligned16(OP, what, p)?;
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let i32_of = |what: &str, v: usize| to_i32(OP, what, v).map(Arg::I32);
    let (nh, nkv, hd) = (
        i32_of("num_heads", num_heads)?,
        i32_of("num_kv_heads", num_kv_heads)?,
        i32_of("head_dim", head_dim)?,
    );
    let (bs, mb) = (
        i32_of("block_size", block_size)?,
        i32_of("max_blocks_per_seq", max_blocks_per_seq)?,
    );

    if !decode {
        if matches!(queries, Queries::Fused(_)) {
            return Err(shape_error(OP, "fused q/k norm is for decode steps only"));
        }
        let (kernel, name, smem, bq, threads) = if batch.prefill_kernel.mma(head_dim) {
            (
                &ATTENTION_PREFILL_MMA,
                prefill_mma_name(head_dim),
                prefill_mma_smem_bytes(head_dim),
                PREFILL_MMA_BQ,
                PREFILL_MMA_THREADS,
            )
        } else {
            (
                &ATTENTION_PREFILL,
                prefill_name,
                prefill_smem_bytes(head_dim),
                PREFILL_BQ,
                PREFILL_THREADS,
            )
        };
        if smem > DEFAULT_SMEM {
            allow_dynamic_smem(dev, kernel, name, smem)?;
        }
        let cfg = LaunchConfig {
            grid_dim: (
                batch.max_query_len.div_ceil(bq) as u32,
                num_heads as u32,
                num_seqs as u32,
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let args = [
            Arg::Ptr(op),
            Arg::Ptr(qp),
            Arg::Ptr(kp),
            Arg::Ptr(vp),
            Arg::Ptr(cu),
            Arg::Ptr(ctx),
            Arg::Ptr(bt),
            nh,
            nkv,
            bs,
            mb,
            Arg::F32(scale),
            Arg::I32(split as i32),
        ];
        launch(dev, kernel, name, cfg, &args)?;
        if !split {
            return Ok(());
        }
    }

    let group = num_heads / num_kv_heads;
    let fused = matches!(queries, Queries::Fused(_));
    let mma = batch.decode_kernel.mma_ring(
        head_dim,
        num_seqs * num_kv_heads * group.div_ceil(MMA_ATT_G),
        dev.compute_capability().0 >= 9,
    );
    let g = if mma.is_some() {
        MMA_ATT_G
    } else {
        decode_heads_per_cta(group)
    };
    let (kernel, name) = match (fused, g, mma) {
        (_, _, Some(ring)) => (
            &ATTENTION_DECODE_MMA,
            decode_mma_name(fused, head_dim, ring),
        ),
        (false, 1, _) => (&ATTENTION_DECODE, "attention_decode_g1"),
        (false, 2, _) => (&ATTENTION_DECODE, "attention_decode_g2"),
        (false, 4, _) => (&ATTENTION_DECODE, "attention_decode_g4"),
        (false, _, _) => (&ATTENTION_DECODE, "attention_decode_g8"),
        (true, 1, _) => (&ATTENTION_DECODE_QK, "attention_decode_qk_g1"),
        (true, 2, _) => (&ATTENTION_DECODE_QK, "attention_decode_qk_g2"),
        (true, 4, _) => (&ATTENTION_DECODE_QK, "attention_decode_qk_g4"),
        (true, _, _) => (&ATTENTION_DECODE_QK, "attention_decode_qk_g8"),
    };
    let ml = bufs.workspace.0;
    let acc = ml + (num_seqs * num_heads * max_partitions * 2 * std::mem::size_of::<f32>()) as u64;
    let done = bufs.counters.0;
    let (mp, maxp) = (i32_of("max_partitions", max_partitions)?, max_partitions);
    let decode_smem = if let Some(ring) = mma {
        decode_mma_smem_bytes(head_dim, ring, max_blocks_per_seq)
    } else {
        decode_smem_bytes(g, head_dim, max_blocks_per_seq)
    };
    if decode_smem > MAX_SMEM {
        return Err(shape_error(
            OP,
            format!("block tables of {max_blocks_per_seq} entries do not fit the decode kernel's shared memory"),
        ));
    }
    if decode_smem > DEFAULT_SMEM {
        // always the same cap (the launch asks for what it needs)
        allow_dynamic_smem(dev, kernel, name, MAX_SMEM)?;
    }
    let decode_smem = decode_smem as u32;
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(num_kv_heads * group.div_ceil(g))
                .map_err(|_| shape_error(OP, "too many kv heads"))?,
            num_seqs as u32,
            maxp as u32,
        ),
        block_dim: ((32 * DECODE_WARPS) as u32, 1, 1),
        shared_mem_bytes: decode_smem,
    };
    let mut args = vec![
        Arg::Ptr(op),
        Arg::Ptr(ml),
        Arg::Ptr(acc),
        Arg::Ptr(done),
        Arg::Ptr(qp),
        Arg::Ptr(kp),
        Arg::Ptr(vp),
        Arg::Ptr(cu),
        Arg::Ptr(ctx),
        Arg::Ptr(bt),
    ];
    if let Queries::Fused(f) = &queries {
        args.extend([
            Arg::Ptr(f.positions),
            Arg::Ptr(f.slots),
            Arg::Ptr(f.inv_freq),
            Arg::Ptr(f.q_norm),
            Arg::Ptr(f.k_norm),
            Arg::F32(f.eps),
            Arg::U32(f.num_slots),
        ]);
    }
    args.extend([nh, nkv, hd, bs, mb, mp, Arg::F32(scale)]);
    launch(dev, kernel, name, cfg, &args)
}

/// The head dimensions with a prefill kernel instance, `attention_prefill_d{head_dim}` (each instance
/// adds NVRTC time, so not every multiple of 16).
pub const HEAD_DIMS: [usize; 7] = [16, 32, 64, 96, 128, 192, 256];

/// `attention_prefill_mma_d{head_dim}` (head_dim in [`MMA_HEAD_DIMS`]).
fn prefill_mma_name(head_dim: usize) -> &'static str {
    if head_dim == 64 {
        "attention_prefill_mma_d64"
    } else {
        "attention_prefill_mma_d128"
    }
}

fn prefill_kernel_name(head_dim: usize) -> Option<&'static str> {
    const NAMES: [&str; 7] = [
        "attention_prefill_d16",
        "attention_prefill_d32",
        "attention_prefill_d64",
        "attention_prefill_d96",
        "attention_prefill_d128",
        "attention_prefill_d192",
        "attention_prefill_d256",
    ];
    HEAD_DIMS
        .iter()
        .position(|&d| d == head_dim)
        .map(|i| NAMES[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel source defines each `(name, value)` as the host's constant.
    fn assert_defines(src: &str, defines: &[(&str, usize)]) {
        for (name, v) in defines {
            assert!(src.contains(&format!("#define {name} {v}\n")), "{name}");
        }
    }

    #[test]
    fn prefill_names_and_shared_memory() {
        for d in HEAD_DIMS {
            let name = prefill_kernel_name(d).unwrap();
            assert_eq!(name, format!("attention_prefill_d{d}"));
            assert!(ATTENTION_PREFILL
                .source
                .contains(&format!("PREFILL_KERNEL({d})\n")));
            // sm_80 allows 163 KiB per block after opting in
            assert!(prefill_smem_bytes(d) <= 163 * 1024, "{d}");
        }
        assert_defines(
            ATTENTION_PREFILL.source,
            &[
                ("BQ", PREFILL_BQ),
                ("BK", PREFILL_BK),
                ("PREFILL_THREADS", PREFILL_THREADS as usize),
            ],
        );
        let (_, merge_header) = crate::compile::HEADERS
            .iter()
            .find(|(name, _)| *name == "attention_decode_merge.cuh")
            .unwrap();
        assert!(merge_header.contains(&format!("#define DECODE_WARPS {DECODE_WARPS}\n")));
        let pm = ATTENTION_PREFILL_MMA.source;
        assert_defines(
            pm,
            &[
                ("PM_BQ", PREFILL_MMA_BQ),
                ("PM_BK", PREFILL_MMA_BK),
                ("PM_THREADS", PREFILL_MMA_THREADS as usize),
            ],
        );
        for d in MMA_HEAD_DIMS {
            assert!(pm.contains(&format!("PREFILL_MMA_KERNEL({d})\n")));
            assert_eq!(prefill_mma_name(d), format!("attention_prefill_mma_d{d}"));
            assert!(prefill_mma_smem_bytes(d) <= MAX_SMEM, "{d}");
        }
        let mma = ATTENTION_DECODE_MMA.source;
        for (name, v) in [("MMA_ATT_G", MMA_ATT_G), ("MMA_ATT_KT", MMA_ATT_KT)] {
            assert!(mma.contains(&format!("#define {name} {v}\n")), "{name}");
        }
        for d in MMA_HEAD_DIMS {
            let rings = [
                (MmaRing::stages(2), ""),
                (MmaRing::stages(3), "_s3"),
                (MmaRing::apart(3, false), "_h3"),
                (MmaRing::apart(3, true), "_h3tma"),
                (MmaRing::apart(4, false), "_h4"),
                (MmaRing::apart(4, true), "_h4tma"),
            ];
            for (ring, suffix) in rings {
                let (h, split, tma) = (ring.halves, ring.split, ring.tma);
                let instance = format!("DECODE_MMA_KERNELS({d}, {h}, {split}, {tma}, {suffix})\n");
                assert!(mma.contains(&instance), "{instance}");
                for fused in [false, true] {
                    let qk = if fused { "_qk" } else { "" };
                    let want = format!("attention_decode_mma{qk}{suffix}_d{d}");
                    assert_eq!(decode_mma_name(fused, d, ring), want);
                }
                assert!(decode_mma_smem_bytes(d, ring, 256) <= MAX_SMEM);
            }
            // the split ring's point: 4 CTAs of 128 threads in an SM's 228 KB (1 KB each reserved)
            // with block tables of up to 256 entries
            if d == 128 {
                for ring in [MmaRing::apart(3, false), MmaRing::apart(3, true)] {
                    assert!(4 * (decode_mma_smem_bytes(d, ring, 256) + 1024) <= 228 * 1024);
                }
            }
        }
    }

    #[test]
    fn decode_groups() {
        let got: Vec<usize> = (1..=16).map(decode_heads_per_cta).collect();
        assert_eq!(got, [1, 2, 4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]);
        let shape = AttnShape {
            num_heads: 16,
            num_kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            max_blocks_per_seq: 4,
        };
        assert_eq!(attention_workspace_len(&shape, 3, 5), 3 * 16 * 5 * 130);
        assert_eq!(attention_counters_len(&shape, 3), 3 * 16);
    }
}
