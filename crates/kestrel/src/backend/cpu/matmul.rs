//! Matrix times activations on the CPU, straight from the weights' storage format.
//!
//! Each weight row is decoded once per call (into a per-thread f32 buffer) and dotted with every token
//! of the batch, so prefill amortises the decoding; f32 weights are used in place.

use rayon::prelude::*;

use super::CpuTensor;
use crate::formats::HostTensor;
use crate::quant::{self, GgmlType};
use crate::{KestrelError, Result};

/// A weight matrix made of one or more source tensors stacked by rows.
pub struct CpuMatrix {
    pub rows: usize,
    pub cols: usize,
    parts: Vec<HostTensor>,
    /// First row of each part.
    starts: Vec<usize>,
}

impl CpuMatrix {
    pub fn new(parts: Vec<HostTensor>) -> Result<CpuMatrix> {
        let cols = parts.first().map(HostTensor::cols).unwrap_or(0);
        let mut starts = Vec::with_capacity(parts.len());
        let mut rows = 0;
        for p in &parts {
            if p.cols() != cols {
                return Err(KestrelError::ShapeMismatch {
                    name: p.name.clone(),
                    expected: vec![p.rows(), cols],
                    found: p.shape.clone(),
                });
            }
            p.row_bytes()?;
            starts.push(rows);
            rows += p.rows();
        }
        Ok(CpuMatrix {
            rows,
            cols,
            parts,
            starts,
        })
    }

    pub fn types(&self) -> Vec<GgmlType> {
        self.parts.iter().map(|p| p.ty).collect()
    }

    fn locate(&self, r: usize) -> (&HostTensor, usize) {
        let i = self.starts.partition_point(|&s| s <= r) - 1;
        (&self.parts[i], r - self.starts[i])
    }

    /// Decodes row `r` to f32.
    pub fn decode_row(&self, r: usize, dst: &mut [f32]) -> Result<()> {
        let (part, local) = self.locate(r);
        quant::dequantize_row(part.ty, part.row(local), dst)
    }

    /// `x · selfᵀ`: `[x.rows, self.rows]`.
    pub fn matmul(&self, x: &CpuTensor) -> Result<CpuTensor> {
        if x.cols != self.cols {
            return Err(KestrelError::Backend(format!(
                "matmul: activations have {} columns, weight '{}' has {}",
                x.cols,
                self.parts.first().map(|p| p.name.as_str()).unwrap_or("?"),
                self.cols
            )));
        }
        let tokens = x.rows;
        // Work in output-row-major order (each task owns whole weight rows), then transpose.
        let mut out_t = vec![0f32; self.rows * tokens];
        const ROWS_PER_TASK: usize = 16;
        out_t
            .par_chunks_mut(tokens * ROWS_PER_TASK)
            .enumerate()
            .try_for_each_init(
                || vec![0f32; self.cols],
                |buf, (chunk, out)| -> Result<()> {
                    for (i, out_row) in out.chunks_mut(tokens).enumerate() {
                        let r = chunk * ROWS_PER_TASK + i;
                        let (part, local) = self.locate(r);
                        let w: &[f32] = match (
                            part.ty,
                            bytemuck::try_cast_slice::<u8, f32>(part.row(local)),
                        ) {
                            (GgmlType::F32, Ok(w)) => w,
                            _ => {
                                quant::dequantize_row(part.ty, part.row(local), buf)?;
                                buf
                            }
                        };
                        for (t, o) in out_row.iter_mut().enumerate() {
                            *o = dot(w, x.row(t));
                        }
                    }
                    Ok(())
                },
            )?;
        let mut out = CpuTensor::zeros(tokens, self.rows);
        for r in 0..self.rows {
            for t in 0..tokens {
                out.data[t * self.rows + r] = out_t[r * tokens + t];
            }
        }
        Ok(out)
    }
}

/// f32 dot product with 8 independent accumulators (vectorises; f32 accumulation as the contract says).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
