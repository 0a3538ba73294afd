//! ggml tensor types and their block formats.
//!
//! Block layouts are ggml's byte for byte, so GGUF files move both ways between Kestrel and llama.cpp.
//! Each block format lives in a file of its own; this module is the table of types and the dispatch.

use rayon::prelude::*;

use crate::{KestrelError, Result};

pub mod float;
pub mod plan;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
mod search;

pub use plan::{QuantPlan, QuantType};
pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4K;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::BlockQ8_0;
pub use q8_1::BlockQ8_1;
pub use q8_k::BlockQ8K;

/// A ggml tensor type, numbered as in GGUF (`ggml_type`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
}

impl GgmlType {
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::BF16,
    ];

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::BF16 => "BF16",
        }
    }

    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block (1 for plain float types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
            GgmlType::Q8_K => 292,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by `n` elements; `n` must be a multiple of the block size.
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return Err(KestrelError::param(
                "tensor row",
                format!(
                    "{} elements is not a multiple of the {} block size {}",
                    n,
                    self.name(),
                    self.block_size()
                ),
            ));
        }
        Ok(n / self.block_size() * self.type_size())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// A ggml block: a `#[repr(C)]` struct of byte arrays laid out exactly as in ggml, so a row of raw
/// file bytes casts to `&[Self]` with no copy and no alignment requirement.
pub trait Block: bytemuck::Pod {
    const TYPE: GgmlType;
    /// Elements per block.
    const QK: usize;
    /// Writes the block's `QK` values into `out` (`out.len() == QK`).
    fn dequantize(&self, out: &mut [f32]);
}

/// A block format with a reference quantizer.
pub trait QuantizeBlock: Block {
    /// Quantizes `src` (`QK` values) into `out`, overwriting every byte of it.
    fn quantize(src: &[f32], out: &mut Self);
}

/// Implements `Pod` for a block struct made only of `u8`/`i8` arrays and checks its size at compile time.
macro_rules! block_pod {
    ($t:ty, $size:expr) => {
        // SAFETY: `$t` is `#[repr(C)]` and holds only u8/i8 arrays: alignment 1, no padding (the size
        // assertion below proves it), and every bit pattern is a valid value.
        unsafe impl bytemuck::Zeroable for $t {}
        unsafe impl bytemuck::Pod for $t {}
        const _: () =
            assert!(std::mem::size_of::<$t>() == $size && std::mem::align_of::<$t>() == 1);
    };
}
pub(crate) use block_pod;

#[inline]
pub(crate) fn f16_to_f32(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}

/// Round-to-nearest-even f32 -> f16, as ggml's `GGML_FP32_TO_FP16` and numpy's `astype(np.float16)`.
#[inline]
pub(crate) fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// ggml's `nearest_int`: round half to even (its float trick gives that for |x| < 2^22; beyond, where
/// ggml's result is garbage, this saturates instead).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

fn check_len(ty: GgmlType, what: &str, elems: usize, bytes: usize) -> Result<()> {
    let need = ty.row_bytes(elems)?;
    if need != bytes {
        return Err(KestrelError::param(
            what,
            format!("{elems} {ty} elements take {need} bytes, the buffer has {bytes}"),
        ));
    }
    Ok(())
}

fn dequantize_blocks<B: Block>(src: &[u8], dst: &mut [f32]) {
    // Lengths were checked by the caller; align 1 makes the cast infallible.
    let blocks: &[B] = bytemuck::cast_slice(src);
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(B::QK)) {
        b.dequantize(out);
    }
}

fn quantize_blocks<B: QuantizeBlock>(src: &[f32], dst: &mut [u8]) {
    let blocks: &mut [B] = bytemuck::cast_slice_mut(dst);
    for (x, b) in src.chunks_exact(B::QK).zip(blocks.iter_mut()) {
        B::quantize(x, b);
    }
}

/// Dequantizes one row (whole blocks) of type `ty` into `dst` (`dst.len()` elements).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_len(ty, "dequantize_row", dst.len(), src.len())?;
    match ty {
        GgmlType::F32 => float::dequantize_f32(src, dst),
        GgmlType::F16 => float::dequantize_f16(src, dst),
        GgmlType::BF16 => float::dequantize_bf16(src, dst),
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1>(src, dst),
        GgmlType::Q5_0 => dequantize_blocks::<BlockQ5_0>(src, dst),
        GgmlType::Q5_1 => dequantize_blocks::<BlockQ5_1>(src, dst),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0>(src, dst),
        GgmlType::Q8_1 => dequantize_blocks::<BlockQ8_1>(src, dst),
        GgmlType::Q2_K => dequantize_blocks::<BlockQ2K>(src, dst),
        GgmlType::Q3_K => dequantize_blocks::<BlockQ3K>(src, dst),
        GgmlType::Q4_K => dequantize_blocks::<BlockQ4K>(src, dst),
        GgmlType::Q5_K => dequantize_blocks::<BlockQ5K>(src, dst),
        GgmlType::Q6_K => dequantize_blocks::<BlockQ6K>(src, dst),
        GgmlType::Q8_K => dequantize_blocks::<BlockQ8K>(src, dst),
    }
    Ok(())
}

/// Whether [`quantize_row`] can produce `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::Q2_K | GgmlType::Q3_K)
}

/// Quantizes one row (`src.len()` a multiple of the block size) into `dst` (exactly its byte size).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    if !can_quantize(ty) {
        return Err(KestrelError::UnsupportedTensorType {
            tensor: String::new(),
            ty: ty.name().into(),
            hint: ": Kestrel cannot quantize to this type (it only reads it)".into(),
        });
    }
    check_len(ty, "quantize_row", src.len(), dst.len())?;
    match ty {
        GgmlType::F32 => float::quantize_f32(src, dst),
        GgmlType::F16 => float::quantize_f16(src, dst),
        GgmlType::BF16 => float::quantize_bf16(src, dst),
        GgmlType::Q4_0 => quantize_blocks::<BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => quantize_blocks::<BlockQ4_1>(src, dst),
        GgmlType::Q5_0 => quantize_blocks::<BlockQ5_0>(src, dst),
        GgmlType::Q5_1 => quantize_blocks::<BlockQ5_1>(src, dst),
        GgmlType::Q8_0 => quantize_blocks::<BlockQ8_0>(src, dst),
        GgmlType::Q8_1 => quantize_blocks::<BlockQ8_1>(src, dst),
        GgmlType::Q4_K => quantize_blocks::<BlockQ4K>(src, dst),
        GgmlType::Q5_K => quantize_blocks::<BlockQ5K>(src, dst),
        GgmlType::Q6_K => quantize_blocks::<BlockQ6K>(src, dst),
        GgmlType::Q8_K => quantize_blocks::<BlockQ8K>(src, dst),
        GgmlType::Q2_K | GgmlType::Q3_K => unreachable!("rejected by can_quantize"),
    }
    Ok(())
}

fn rows_of(ty: GgmlType, elems: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !elems.is_multiple_of(cols) {
        return Err(KestrelError::param(
            "cols",
            format!("{elems} elements do not form rows of {cols}"),
        ));
    }
    ty.row_bytes(cols)
}

/// Quantizes a row-major matrix of `cols` columns, rows in parallel.
pub fn quantize_tensor(ty: GgmlType, src: &[f32], cols: usize) -> Result<Vec<u8>> {
    let row_bytes = rows_of(ty, src.len(), cols)?;
    let mut out = vec![0u8; src.len() / cols * row_bytes];
    out.par_chunks_mut(row_bytes.max(1))
        .zip(src.par_chunks(cols))
        .try_for_each(|(dst, row)| quantize_row(ty, row, dst))?;
    Ok(out)
}

/// Dequantizes a row-major matrix of `cols` columns (`src` holds whole rows), rows in parallel.
pub fn dequantize_tensor(ty: GgmlType, src: &[u8], cols: usize) -> Result<Vec<f32>> {
    let row_bytes = rows_of(ty, 0, cols)?;
    if row_bytes == 0 || !src.len().is_multiple_of(row_bytes) {
        return Err(KestrelError::param(
            "dequantize_tensor",
            format!(
                "{} bytes are not whole rows of {cols} {ty} elements",
                src.len()
            ),
        ));
    }
    let mut out = vec![0f32; src.len() / row_bytes * cols];
    out.par_chunks_mut(cols)
        .zip(src.par_chunks(row_bytes))
        .try_for_each(|(dst, row)| dequantize_row(ty, row, dst))?;
    Ok(out)
}

/// Converts a row-major matrix of `cols` columns from type `from` to type `to` (e.g. BF16 to Q4_K),
/// rows in parallel, each row through an f32 buffer of its own: [`quantize_tensor`] without an f32
/// copy of the whole tensor (the embedding table of an 8B model is 2.5 GB in f32).
pub fn convert_tensor(from: GgmlType, src: &[u8], to: GgmlType, cols: usize) -> Result<Vec<u8>> {
    let (in_row, out_row) = (rows_of(from, 0, cols)?, rows_of(to, 0, cols)?);
    if !src.len().is_multiple_of(in_row) {
        return Err(KestrelError::param(
            "convert_tensor",
            format!(
                "{} bytes are not whole rows of {cols} {from} elements",
                src.len()
            ),
        ));
    }
    let mut out = vec![0u8; src.len() / in_row * out_row];
    out.par_chunks_mut(out_row)
        .zip(src.par_chunks(in_row))
        .try_for_each_init(
            || vec![0f32; cols],
            |buf, (dst, row)| {
                dequantize_row(from, row, buf)?;
                quantize_row(to, buf, dst)
            },
        )?;
    Ok(out)
}
