//! GGUF writer (version 3, little-endian). For the same metadata and tensors, in the same order, the
//! bytes are those gguf-py's `GGUFWriter` writes: header, metadata, tensor infos, zero padding to the
//! alignment, then each tensor's data padded to the alignment (the last one included).

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::gguf::{GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::quant::GgmlType;
use crate::{KestrelError, Result};

struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    /// PyTorch order.
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

/// Collects metadata and tensors, then writes them in insertion order. Tensor data may be borrowed
/// (e.g. straight from another file's memory map) to avoid copying a whole model.
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor<'a>>,
}

fn pad_to(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry; a key given twice keeps its first position and its last value (as
    /// gguf-py does). `general.alignment` (u32, a power of two) sets the data alignment.
    pub fn add_kv(&mut self, key: impl Into<String>, value: GgufValue) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// Adds a tensor; `shape` is in PyTorch order and `data` must hold exactly its bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        shape: &[usize],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let (name, data) = (name.into(), data.into());
        let bad = |msg: String| KestrelError::param(format!("GGUF tensor '{name}'"), msg);
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        if shape.len() > MAX_DIMS {
            return Err(bad(format!(
                "{} dimensions, GGUF allows {MAX_DIMS}",
                shape.len()
            )));
        }
        let cols = shape.last().copied().unwrap_or(1);
        let rows: usize = shape.iter().rev().skip(1).product();
        let expected = ty
            .row_bytes(cols)
            .map_err(|e| bad(e.to_string()))?
            .checked_mul(rows);
        if expected != Some(data.len()) {
            return Err(bad(format!(
                "{ty} {shape:?} needs {expected:?} bytes, got {}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            ty,
            shape: shape.to_vec(),
            data,
        });
        Ok(())
    }

    fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => Ok(*a as u64),
            Some((_, v)) => Err(KestrelError::param(
                "general.alignment",
                format!("{v} is not a u32 power of two"),
            )),
        }
    }

    /// Writes the file at `path` (created or truncated).
    pub fn write(&self, path: &Path) -> Result<()> {
        let align = self.alignment()?;
        let file = File::create(path).map_err(|e| KestrelError::io(path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        self.write_to(&mut w, align)
            .and_then(|()| w.flush())
            .map_err(|e| KestrelError::io(path, e))
    }

    /// The whole file in memory (tests, small files).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = self.alignment()?;
        let mut out = Vec::new();
        self.write_to(&mut out, align)
            .map_err(|e| KestrelError::param("GGUF metadata", e.to_string()))?;
        Ok(out)
    }

    fn write_to(&self, w: &mut impl Write, align: u64) -> io::Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            GgufValue::String(key.clone()).encode(&mut head)?;
            head.extend_from_slice(&value.type_id().to_le_bytes());
            value.encode(&mut head)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            GgufValue::String(t.name.clone()).encode(&mut head)?;
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset += pad_to(t.data.len() as u64, align);
        }
        let data_start = pad_to(head.len() as u64, align);
        head.resize(data_start as usize, 0);
        w.write_all(&head)?;
        let zeros = vec![0u8; align as usize];
        for t in &self.tensors {
            w.write_all(&t.data)?;
            let pad = pad_to(t.data.len() as u64, align) - t.data.len() as u64;
            w.write_all(&zeros[..pad as usize])?;
        }
        Ok(())
    }
}
