//! The backend's matmuls and embedding lookups over block-quantized weights ([`MatrixStorage::Quant`]).
//!
//! Decode (1..=8 tokens) reads the blocks in the GEMV (dequantization in registers). Prefill
//! dequantizes row tiles of the weight to bf16 and multiplies them on tensor cores (cuBLAS), each tile
//! into its columns of the output: the tiles bound the scratch memory (the lm_head of a large vocabulary
//! is several tiles). A matrix stacked from parts of different formats runs one launch per part, each
//! into its own columns.
//!
//! [`MatrixStorage::Quant`]: super::tensor::MatrixStorage::Quant

use cudarc::driver::{CudaSlice, DevicePtr};

use super::tensor::{CudaTensor, CudaVector};
use super::{be, CudaBackend};
use crate::ops::dequant::{dequant_rows, RowSelect};
use crate::ops::gemm::{gemm_bf16_columns, GemmOutput};
use crate::ops::gemv::{Accumulate, GemvNorm};
use crate::ops::gemv_dp4a::Activations;
use crate::ops::gemv_quant::{gemv_quant_columns, OutColumns, QuantGemvKernel};
use crate::ops::quant_layout::QuantWeights;
use crate::ops::shape_error;
use crate::ops::silu_mul::silu_mul;
use kestrel::Result;

/// Weights a prefill tile dequantizes at once (64 MiB of bf16): big enough that cuBLAS runs at full
/// speed on it, small enough to sit beside a prefill chunk's activations.
pub const DEQUANT_TILE_ELEMS: usize = 32 << 20;
/// Tile rows are a multiple of this, so that each tile's first output column (cuBLAS's C pointer) stays
/// 16-byte aligned: an odd offset sends cuBLAS to slow unaligned kernels (a 4B gate_up split at row
/// 13,107 made prefill 2.8x slower).
const TILE_ROW_ALIGN: usize = 256;

fn total_rows(parts: &[QuantWeights]) -> usize {
    parts.iter().map(|w| w.rows).sum()
}

impl CudaBackend {
    /// Rows of a prefill tile for weights of `cols` columns.
    fn tile_rows(cols: usize) -> usize {
        (DEQUANT_TILE_ELEMS / cols.max(1) / TILE_ROW_ALIGN * TILE_ROW_ALIGN).max(TILE_ROW_ALIGN)
    }

    /// Grows the kept prefill tile to fit a quantized matrix of `rows` x `cols`. Called at upload, never
    /// during a forward: a decode step of more than 8 sequences runs the prefill path inside CUDA graph
    /// capture, and a buffer allocated (or freed by growing) there would belong to the graph.
    pub(crate) fn reserve_dequant_tile(&self, rows: usize, cols: usize) -> Result<()> {
        let elems = Self::tile_rows(cols).min(rows) * cols;
        let mut g = self.dequant_tile.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_none_or(|t| t.len() < elems) {
            *g = None; // free the smaller one first
            *g = Some(self.alloc::<crate::Bf16>(elems)?);
        }
        Ok(())
    }

    /// `out[t] = bf16(table[ids[t]])` from a quantized embedding table (one tensor: one part).
    pub(crate) fn embed_quantized(
        &self,
        parts: &[QuantWeights],
        ids: &CudaSlice<u32>,
        out: &mut CudaTensor,
    ) -> crate::Result<()> {
        match parts {
            [table] => dequant_rows(self.device(), table, RowSelect::Ids(ids), &mut out.data),
            _ => Err(shape_error(
                "embedding",
                format!("an embedding table of {} parts", parts.len()),
            )),
        }
    }

    /// The decode GEMV (`mode`, optional fused norm and bias) over quantized `parts` into `y`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemv_quantized(
        &self,
        x: &CudaTensor,
        norm: Option<GemvNorm<'_>>,
        parts: &[QuantWeights],
        bias: Option<&CudaVector>,
        mode: Accumulate,
        y: &mut CudaTensor,
        activations: Activations,
    ) -> Result<()> {
        let dev = self.device();
        if parts.len() == 1 || mode != Accumulate::SwiGlu {
            return self.gemv_parts_into_columns(x, norm, parts, bias, mode, y, activations);
        }
        // gate and up in different formats: both projections, then SwiGLU over them
        let rows = total_rows(parts);
        let mut gate_up = self.tensor(x.rows, rows)?;
        let overwrite = Accumulate::Overwrite;
        self.gemv_parts_into_columns(x, norm, parts, None, overwrite, &mut gate_up, activations)?;
        silu_mul(dev, &gate_up.data, rows / 2, &mut y.data).map_err(be)
    }

    /// One GEMV per part, each into its columns of `y` `[tokens, total rows]` (one part: all of `y`,
    /// whatever its mode).
    #[allow(clippy::too_many_arguments)]
    fn gemv_parts_into_columns(
        &self,
        x: &CudaTensor,
        norm: Option<GemvNorm<'_>>,
        parts: &[QuantWeights],
        bias: Option<&CudaVector>,
        mode: Accumulate,
        y: &mut CudaTensor,
        activations: Activations,
    ) -> Result<()> {
        let width = total_rows(parts);
        let mut first = 0;
        for w in parts {
            let bias = bias.map(|b| b.data.slice(first..first + w.rows));
            let out = if parts.len() == 1 {
                OutColumns::All
            } else {
                OutColumns::Slice { first, width }
            };
            let bias = bias.as_ref().map(|b| b as &dyn DevicePtr<f32>);
            gemv_quant_columns(
                self.device(),
                w,
                &x.data,
                norm,
                bias,
                &mut y.data,
                out,
                mode,
                QuantGemvKernel::Auto(activations),
            )
            .map_err(be)?;
            first += w.rows;
        }
        Ok(())
    }

    /// `y = x · wᵀ` (`accumulate`: `y = bf16(y + x · wᵀ)`, one rounding) for prefill: row tiles of
    /// the weight dequantized to bf16, each multiplied by cuBLAS into its columns of `y`.
    pub(crate) fn gemm_quantized<T: GemmOutput>(
        &self,
        x: &CudaTensor,
        parts: &[QuantWeights],
        y: &mut CudaSlice<T>,
        accumulate: bool,
    ) -> Result<()> {
        let (dev, cols) = (self.device(), x.cols);
        let width = total_rows(parts);
        let tile_rows = Self::tile_rows(cols);
        let largest = parts.iter().map(|w| w.rows).max().unwrap_or(0);
        let need = tile_rows.min(largest) * cols;
        let mut kept = self.dequant_tile.lock().unwrap_or_else(|e| e.into_inner());
        // reserved at upload (reserve_dequant_tile); a matrix built some other way gets a tile of its
        // own, freed when this returns
        let mut own;
        let tile = match kept.as_mut() {
            Some(t) if t.len() >= need => t,
            _ => {
                own = self.alloc::<crate::Bf16>(need)?;
                &mut own
            }
        };
        let guard = self.blas()?;
        let blas = guard.as_ref().expect("created by blas()");
        let mut first = 0;
        for w in parts {
            let mut r = 0;
            while r < w.rows {
                let n = tile_rows.min(w.rows - r);
                let mut view = tile.slice_mut(0..n * cols);
                let rows = RowSelect::Range { first: r, count: n };
                dequant_rows(dev, w, rows, &mut view).map_err(be)?;
                let out = (first + r, width);
                gemm_bf16_columns(dev, blas, &x.data, &view, cols, y, out, accumulate)
                    .map_err(be)?;
                r += n;
            }
            first += w.rows;
        }
        Ok(())
    }
}
