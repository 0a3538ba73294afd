//! The CUDA backend's device types and the host-side conversion of weights to them.
//!
//! Activations and the residual stream are bf16 `[rows, cols]` (as HF's bf16 model keeps them);
//! weight matrices are bf16 `[out, in]` (converted on the host from F32 / F16 / BF16 files); norm weights
//! and biases stay f32 (bf16 checkpoints convert exactly); the KV cache is bf16.

use cudarc::driver::CudaSlice;
use kestrel::backend::KvCacheSpec;
use kestrel::formats::HostTensor;
use kestrel::quant::GgmlType;
use kestrel::{KestrelError, Result};

use crate::dtype::Bf16;

/// Activations `[rows, cols]`, bf16, row-major.
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<Bf16>,
}

/// A bf16 weight matrix `[rows, cols]` (merged parts stacked by rows in one buffer).
pub struct CudaMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<Bf16>,
}

/// An f32 vector (norm weights, biases).
pub struct CudaVector {
    pub data: CudaSlice<f32>,
}

impl CudaVector {
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }
}

/// K and V for every layer: bf16 `[num_blocks * block_size, num_kv_heads * head_dim]` each.
pub struct CudaKvCache {
    pub spec: KvCacheSpec,
    pub k: Vec<CudaSlice<Bf16>>,
    pub v: Vec<CudaSlice<Bf16>>,
}

/// The host tensors `parts`, stacked by rows and converted to bf16: (rows, cols, values). Quantized
/// tensors are refused, naming the tensor.
pub fn matrix_to_bf16(parts: &[HostTensor]) -> Result<(usize, usize, Vec<Bf16>)> {
    let cols = parts.first().map(HostTensor::cols).unwrap_or(0);
    let rows: usize = parts.iter().map(HostTensor::rows).sum();
    let mut out = Vec::with_capacity(rows * cols);
    for p in parts {
        if p.cols() != cols {
            return Err(KestrelError::ShapeMismatch {
                name: p.name.clone(),
                expected: vec![p.rows(), cols],
                found: p.shape.clone(),
            });
        }
        append_bf16(p, &mut out)?;
    }
    Ok((rows, cols, out))
}

fn append_bf16(t: &HostTensor, out: &mut Vec<Bf16>) -> Result<()> {
    let n = t.numel();
    match t.ty {
        // bf16 bytes go over as they are (little-endian, as the GPU reads them)
        GgmlType::BF16 => {
            let bytes = t.bytes();
            if bytes.len() < 2 * n {
                return Err(short(t, 2 * n));
            }
            out.extend(
                bytes[..2 * n]
                    .chunks_exact(2)
                    .map(|c| Bf16(half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))),
            );
        }
        GgmlType::F32 | GgmlType::F16 => {
            out.extend(t.to_f32()?.into_iter().map(Bf16::from_f32));
        }
        ty => {
            return Err(KestrelError::UnsupportedTensorType {
                tensor: t.name.clone(),
                ty: ty.to_string(),
                hint: " on the CUDA backend, which runs BF16 / F16 / F32 weights for now \
                       (quantized GPU weights come in issue #4); use --device cpu, or a BF16 checkpoint"
                    .to_string(),
            })
        }
    }
    Ok(())
}

fn short(t: &HostTensor, need: usize) -> KestrelError {
    KestrelError::Backend(format!(
        "tensor '{}' has {} bytes, its shape needs {need}",
        t.name,
        t.bytes().len()
    ))
}

/// The f32 values of `parts`, concatenated.
pub fn vector_to_f32(parts: &[HostTensor]) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for p in parts {
        out.extend(p.to_f32()?);
    }
    Ok(out)
}
