//! The CUDA backend's device types and the host-side conversion of weights to them.
//!
//! Activations and the residual stream are bf16 `[rows, cols]` (as HF's bf16 model keeps them);
//! weight matrices are bf16 `[out, in]` (converted on the host from F32 / F16 / BF16 files) or GGUF
//! block-quantized as the file has them (Q8_0, Q4_0, ...: [`QuantWeights`]); norm weights and biases
//! stay f32 (bf16 checkpoints convert exactly); the KV cache is bf16.

use cudarc::driver::CudaSlice;
use kestrel::backend::KvCacheSpec;
use kestrel::formats::HostTensor;
use kestrel::quant::GgmlType;
use kestrel::{KestrelError, Result};

use crate::dtype::Bf16;
use crate::ops::quant_layout::{HostPlanes, QuantFormat, QuantWeights};

/// Activations `[rows, cols]`, bf16, row-major.
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<Bf16>,
}

/// A weight matrix `[rows, cols]`, merged parts (q/k/v, gate/up) stacked by rows.
pub struct CudaMatrix {
    pub rows: usize,
    pub cols: usize,
    pub storage: MatrixStorage,
    /// Whether its decode GEMV may quantize the activations to 8 bits (the dp4a kernels): not for q
    /// and k, whose outputs go through Qwen3's q/k norms (gains near 100 amplify any rounding).
    pub int8_activations: bool,
}

/// Whether a matrix made of `parts` may take 8-bit activations (see [`CudaMatrix`]): HF names, and
/// GGUF names as [`kestrel::formats::source::ModelSource`] gives them ("blk.0.attn_q.weight
/// (model.layers.0.self_attn.q_proj.weight)").
pub fn int8_activations_allowed(parts: &[HostTensor]) -> bool {
    !parts
        .iter()
        .any(|p| p.name.contains("q_proj") || p.name.contains("k_proj"))
}

pub enum MatrixStorage {
    /// One bf16 buffer.
    Bf16(CudaSlice<Bf16>),
    /// Block-quantized, stacked by rows: consecutive parts of one format share an entry, so a merged
    /// matrix has one entry unless its parts differ (Q4_K_M gives some layers' v more bits).
    Quant(Vec<QuantWeights>),
}

/// What a matrix's parts become on the device.
#[derive(Debug)]
pub enum HostMatrix {
    Bf16(Vec<Bf16>),
    /// Runs of consecutive parts of one format, their planes stacked.
    Quant(Vec<(QuantFormat, HostPlanes)>),
}

/// The host tensors `parts` stacked by rows, in the form the device keeps them: bf16 for float
/// types, the file's blocks for the quantized formats the GPU reads. A matrix mixing float and
/// quantized parts, or of a quantized type without a GPU kernel, is refused naming the tensor.
pub fn matrix_for_device(parts: &[HostTensor]) -> Result<(usize, usize, HostMatrix)> {
    let quantized = parts.iter().filter(|p| p.ty.is_quantized()).count();
    if quantized == 0 {
        let (rows, cols, values) = matrix_to_bf16(parts)?;
        return Ok((rows, cols, HostMatrix::Bf16(values)));
    }
    let cols = parts.first().map(HostTensor::cols).unwrap_or(0);
    let mut runs: Vec<(QuantFormat, HostPlanes)> = Vec::new();
    let mut rows = 0;
    for p in parts {
        let format = QuantFormat::from_ggml(p.ty).ok_or_else(|| unsupported(p, quantized))?;
        if p.cols() != cols {
            return Err(KestrelError::ShapeMismatch {
                name: p.name.clone(),
                expected: vec![p.rows(), cols],
                found: p.shape.clone(),
            });
        }
        let need = p.row_bytes()? * p.rows();
        if p.bytes().len() < need {
            return Err(short(p, need));
        }
        let planes = format
            .repack(&p.bytes()[..need], cols)
            .map_err(|e| KestrelError::Backend(format!("tensor '{}': {e}", p.name)))?;
        match runs.last_mut() {
            Some((f, acc)) if *f == format => acc.append(planes),
            _ => runs.push((format, planes)),
        }
        rows += p.rows();
    }
    Ok((rows, cols, HostMatrix::Quant(runs)))
}

fn unsupported(t: &HostTensor, quantized: usize) -> KestrelError {
    let hint = if t.ty.is_quantized() {
        format!(
            " on the CUDA backend, which reads {} blocks (and BF16 / F16 / F32); use --device cpu",
            QuantFormat::ALL.map(|f| f.ggml().name()).join(", ")
        )
    } else {
        format!(
            " in a matrix whose other {quantized} part(s) are quantized: the CUDA backend keeps a \
             merged matrix (q/k/v, gate/up) all float or all quantized; use --device cpu"
        )
    };
    KestrelError::UnsupportedTensorType {
        tensor: t.name.clone(),
        ty: t.ty.to_string(),
        hint,
    }
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
        _ => return Err(unsupported(t, 0)),
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
