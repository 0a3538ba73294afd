//! A tensor as it lies in a model file: its ggml type, shape and raw bytes (usually in a memory map).

use std::sync::Arc;

use memmap2::Mmap;

use crate::quant::GgmlType;
use crate::{KestrelError, Result};

/// Where a tensor's bytes live.
#[derive(Clone)]
pub enum TensorBytes {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl TensorBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            TensorBytes::Mapped { map, start, len } => &map[*start..*start + *len],
            TensorBytes::Owned(v) => v,
        }
    }
}

/// A tensor in host memory. `shape` is in PyTorch order (outermost first: `[rows, cols]` for a matrix),
/// the reverse of GGUF's `ne`. Rows are contiguous and each row holds whole blocks.
#[derive(Clone)]
pub struct HostTensor {
    pub name: String,
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    pub data: TensorBytes,
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostTensor({} {} {:?})", self.name, self.ty, self.shape)
    }
}

impl HostTensor {
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> HostTensor {
        let bytes: Vec<u8> = bytemuck::cast_slice(values).to_vec();
        HostTensor {
            name: name.into(),
            ty: GgmlType::F32,
            shape,
            data: TensorBytes::Owned(Arc::new(bytes)),
        }
    }

    pub fn from_bytes(
        name: impl Into<String>,
        ty: GgmlType,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> HostTensor {
        HostTensor {
            name: name.into(),
            ty,
            shape,
            data: TensorBytes::Owned(Arc::new(bytes)),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per row (the innermost dimension).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows (product of all but the innermost dimension).
    pub fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }

    pub fn row_bytes(&self) -> Result<usize> {
        self.ty.row_bytes(self.cols())
    }

    /// The raw bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.cols()).unwrap_or(0);
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Checks the shape against what the model expects.
    pub fn expect_shape(&self, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(KestrelError::ShapeMismatch {
                name: self.name.clone(),
                expected: expected.to_vec(),
                found: self.shape.clone(),
            });
        }
        Ok(())
    }

    /// Dequantizes the whole tensor to f32 (tests, small tensors such as norms and biases).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.numel()];
        let cols = self.cols();
        for (r, dst) in out.chunks_mut(cols.max(1)).enumerate() {
            crate::quant::dequantize_row(self.ty, self.row(r), dst)?;
        }
        Ok(out)
    }
}
