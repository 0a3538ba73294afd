//! GGUF writer (version 3, little-endian). For the same metadata and tensors, in the same order, the
//! bytes are those gguf-py's `GGUFWriter` writes: header, metadata, tensor infos, zero padding to the
//! alignment, then each tensor's data padded to the alignment (the last one included). A tensor's data
//! may also be supplied only while the file is written ([`GgufWriter::add_tensor_deferred`]), so a whole
//! quantized model never has to sit in memory at once.

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
    n_bytes: usize,
    /// None: asked of the `fill` callback of [`GgufWriter::write_with`].
    data: Option<Cow<'a, [u8]>>,
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
        let data = data.into();
        let t = Self::pending(name.into(), ty, shape, Some(data.len()))?;
        self.push(PendingTensor {
            data: Some(data),
            ..t
        })
    }

    /// Adds a tensor whose bytes [`Self::write_with`]'s `fill` supplies when the file is written.
    pub fn add_tensor_deferred(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        shape: &[usize],
    ) -> Result<()> {
        let t = Self::pending(name.into(), ty, shape, None)?;
        self.push(t)
    }

    fn pending(
        name: String,
        ty: GgmlType,
        shape: &[usize],
        given: Option<usize>,
    ) -> Result<PendingTensor<'a>> {
        let bad = |msg: String| KestrelError::param(format!("GGUF tensor '{name}'"), msg);
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
            .checked_mul(rows)
            .ok_or_else(|| bad(format!("{shape:?} overflows")))?;
        if given.is_some_and(|n| n != expected) {
            return Err(bad(format!(
                "{ty} {shape:?} needs {expected} bytes, got {}",
                given.unwrap_or(0)
            )));
        }
        Ok(PendingTensor {
            name,
            ty,
            shape: shape.to_vec(),
            n_bytes: expected,
            data: None,
        })
    }

    fn push(&mut self, t: PendingTensor<'a>) -> Result<()> {
        if self.tensors.iter().any(|p| p.name == t.name) {
            return Err(KestrelError::param(
                format!("GGUF tensor '{}'", t.name),
                "added twice",
            ));
        }
        self.tensors.push(t);
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

    /// Writes the file at `path` (created or truncated). Every tensor must have its data.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.write_with(path, |name| Err(Self::no_data(name)))
    }

    /// Writes the file at `path`, asking `fill` for the bytes of each deferred tensor, in file order.
    pub fn write_with(
        &self,
        path: &Path,
        mut fill: impl FnMut(&str) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let align = self.alignment()?;
        let file = File::create(path).map_err(|e| KestrelError::io(path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        self.write_to(&mut w, align, &mut fill, path)?;
        w.flush().map_err(|e| KestrelError::io(path, e))
    }

    /// The whole file in memory (tests, small files).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = self.alignment()?;
        let mut out = Vec::new();
        let mut fill = |name: &str| Err(Self::no_data(name));
        self.write_to(&mut out, align, &mut fill, Path::new("GGUF metadata"))?;
        Ok(out)
    }

    fn no_data(name: &str) -> KestrelError {
        KestrelError::param(
            format!("GGUF tensor '{name}'"),
            "was added without data and written without a fill callback",
        )
    }

    fn header(&self, align: u64) -> io::Result<Vec<u8>> {
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
            offset += pad_to(t.n_bytes as u64, align);
        }
        let data_start = pad_to(head.len() as u64, align);
        head.resize(data_start as usize, 0);
        Ok(head)
    }

    fn write_to(
        &self,
        w: &mut impl Write,
        align: u64,
        fill: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
        path: &Path,
    ) -> Result<()> {
        let io_err = |e| KestrelError::io(path, e);
        w.write_all(&self.header(align).map_err(io_err)?)
            .map_err(io_err)?;
        let zeros = vec![0u8; align as usize];
        for t in &self.tensors {
            let filled;
            let data: &[u8] = match &t.data {
                Some(d) => d,
                None => {
                    filled = fill(&t.name)?;
                    if filled.len() != t.n_bytes {
                        return Err(KestrelError::param(
                            format!("GGUF tensor '{}'", t.name),
                            format!(
                                "{} {:?} needs {} bytes, the fill gave {}",
                                t.ty,
                                t.shape,
                                t.n_bytes,
                                filled.len()
                            ),
                        ));
                    }
                    &filled
                }
            };
            w.write_all(data).map_err(io_err)?;
            let pad = pad_to(data.len() as u64, align) - data.len() as u64;
            w.write_all(&zeros[..pad as usize]).map_err(io_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_tensors_are_filled_in_order_and_checked() {
        let data: Vec<u8> = (0..16u8).collect();
        let mut eager = GgufWriter::new();
        eager
            .add_tensor("a", GgmlType::F32, &[2, 2], &data[..])
            .unwrap();
        eager
            .add_tensor("b", GgmlType::F16, &[4], &data[..8])
            .unwrap();
        let mut lazy = GgufWriter::new();
        lazy.add_tensor("a", GgmlType::F32, &[2, 2], &data[..])
            .unwrap();
        lazy.add_tensor_deferred("b", GgmlType::F16, &[4]).unwrap();
        assert!(lazy.add_tensor_deferred("b", GgmlType::F16, &[4]).is_err());
        assert!(lazy.to_bytes().is_err(), "a deferred tensor needs a fill");
        let dir =
            std::env::temp_dir().join(format!("kestrel-gguf-deferred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.gguf");
        let mut asked = Vec::new();
        lazy.write_with(&path, |name| {
            asked.push(name.to_string());
            Ok(data[..8].to_vec())
        })
        .unwrap();
        assert_eq!(asked, ["b"]);
        assert_eq!(std::fs::read(&path).unwrap(), eager.to_bytes().unwrap());
        let e = lazy
            .write_with(&path, |_| Ok(vec![0; 3]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'b'") && e.contains("needs 8 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
