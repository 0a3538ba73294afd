//! GGUF reader (versions 2 and 3, little-endian), as llama.cpp and gguf-py write it.
//!
//! The whole file is memory-mapped; metadata is parsed into owned values, tensors stay in the map and
//! are handed out as zero-copy [`HostTensor`]s. Every length, count and offset read from the file is
//! checked against the bytes that are actually there before it is used, so a truncated or corrupt
//! file gives an error naming the file and what is wrong, never a panic or a huge allocation.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

mod cursor;
pub mod value;
use super::host_tensor::{HostTensor, TensorBytes};
use crate::quant::GgmlType;
use crate::{KestrelError, Result};
use cursor::Cursor;
pub use value::GgufValue;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// PyTorch order: GGUF's `ne` reversed (`[rows, cols]` for a matrix).
    pub shape: Vec<usize>,
    /// Relative to the start of the tensor data section.
    pub offset: u64,
    /// Bytes of data (whole blocks).
    pub n_bytes: usize,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the tensor data section.
    pub data_offset: u64,
    map: Arc<Mmap>,
    by_name: HashMap<String, usize>,
}

fn parse_tensor_info(c: &mut Cursor) -> Result<(GgufTensorInfo, Vec<u64>)> {
    let name = c.string("tensor name")?;
    let n_dims = c.u32("tensor dimension count")? as usize;
    if n_dims > MAX_DIMS {
        return Err(c.err(format!(
            "tensor '{name}' has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}"
        )));
    }
    let mut ne = Vec::with_capacity(n_dims);
    for _ in 0..n_dims {
        ne.push(c.u64("tensor dimension")?);
    }
    let ty_id = c.u32("tensor type")?;
    let ty = GgmlType::from_id(ty_id).ok_or_else(|| KestrelError::UnsupportedTensorType {
        tensor: name.clone(),
        ty: format!("id {ty_id}"),
        hint: format!(
            " in {}: Kestrel reads F32, F16, BF16, Q4_0..Q8_1 and Q2_K..Q8_K",
            c.path.display()
        ),
    })?;
    let offset = c.u64("tensor offset")?;
    let shape = ne.iter().rev().map(|&d| d as usize).collect();
    Ok((
        GgufTensorInfo {
            name,
            ty,
            shape,
            offset,
            n_bytes: 0,
        },
        ne,
    ))
}

/// Bytes of a tensor of type `ty` and GGUF dims `ne`, or why it is invalid.
fn tensor_bytes(ty: GgmlType, ne: &[u64]) -> std::result::Result<usize, String> {
    let ne0 = ne.first().copied().unwrap_or(1);
    if ne0 % ty.block_size() as u64 != 0 {
        return Err(format!(
            "row length {ne0} is not a multiple of the {ty} block size {}",
            ty.block_size()
        ));
    }
    let rows = ne[1.min(ne.len())..]
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d));
    (ne0 / ty.block_size() as u64)
        .checked_mul(ty.type_size() as u64)
        .zip(rows)
        .and_then(|(row, rows)| row.checked_mul(rows))
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("dimensions {ne:?} overflow"))
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| KestrelError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| KestrelError::io(path, e))?
            .len();
        if len < 24 {
            return Err(KestrelError::format(
                path,
                format!("{len} bytes is too short for a GGUF header"),
            ));
        }
        // SAFETY: the map is read-only and private to this process; like every mmap-based model
        // loader we rely on the file not being truncated or rewritten while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| KestrelError::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, map: Arc<Mmap>) -> Result<GgufFile> {
        let mut c = Cursor {
            buf: &map[..],
            pos: 0,
            path,
        };
        let magic = c.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(c.err(format!(
                "not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(
                    c.err("GGUF version 1 is not supported (only 2 and 3); reconvert the model")
                )
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(c.err("big-endian GGUF is not supported"));
            }
            v => {
                return Err(c.err(format!(
                    "unsupported GGUF version {v} (Kestrel reads 2 and 3)"
                )))
            }
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Smallest metadata entry: empty key (8) + type (4) + a u8 (1); smallest tensor info: empty
        // name (8) + n_dims (4) + type (4) + offset (8).
        c.check_count(n_kv, 13, "metadata")?;
        let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(c.err(format!("duplicate metadata key '{key}'")));
            }
            metadata.push((key, value));
        }
        c.check_count(n_tensors, 24, "tensor")?;
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            infos.push(parse_tensor_info(&mut c)?);
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(c.err(format!("general.alignment {v} is not a power of two"))),
            },
        };
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = HashMap::with_capacity(infos.len());
        for (mut info, ne) in infos {
            let bad =
                |msg: String| KestrelError::format(path, format!("tensor '{}': {msg}", info.name));
            info.n_bytes = tensor_bytes(info.ty, &ne).map_err(bad)?;
            if info.offset % alignment != 0 {
                return Err(bad(format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    info.offset
                )));
            }
            let end = data_offset
                .checked_add(info.offset)
                .and_then(|s| s.checked_add(info.n_bytes as u64));
            if end.is_none_or(|e| e > file_len) {
                return Err(bad(format!(
                    "data at {}+{} ({} bytes) runs past the end of the file ({file_len} bytes): truncated?",
                    data_offset, info.offset, info.n_bytes
                )));
            }
            if by_name.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(bad("duplicate tensor name".into()));
            }
            tensors.push(info);
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map,
            by_name,
        })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key).ok_or_else(|| {
            KestrelError::format(&self.path, format!("missing metadata key '{key}'"))
        })
    }

    fn wrong_type(&self, key: &str, v: &GgufValue, expected: &str) -> KestrelError {
        KestrelError::format(
            &self.path,
            format!(
                "metadata '{key}' is {} {v}, expected {expected}",
                v.type_name()
            ),
        )
    }

    /// Any integer type holding a non-negative value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
    }

    /// F32, F64 (rounded) or an integer.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| self.wrong_type(key, v, "a number"))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, v, "a string"))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        let v = self.require(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, v, "an array of strings"))?;
        items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.wrong_type(key, s, "a string element"))
            })
            .collect()
    }

    /// An array of integers that fit in i32 (token types are I32; other integer types are accepted).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        let v = self.require(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, v, "an array of integers"))?;
        items
            .iter()
            .map(|x| {
                x.as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| self.wrong_type(key, x, "an i32 element"))
            })
            .collect()
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// A zero-copy view of the tensor's bytes in the memory map.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| KestrelError::MissingTensor {
                name: name.into(),
                source_desc: self.path.display().to_string(),
            })?;
        Ok(HostTensor {
            name: info.name.clone(),
            ty: info.ty,
            shape: info.shape.clone(),
            data: TensorBytes::Mapped {
                map: Arc::clone(&self.map),
                // In range: checked against the file size in `parse`.
                start: (self.data_offset + info.offset) as usize,
                len: info.n_bytes,
            },
        })
    }

    /// The raw bytes of a tensor (bounds checked at open).
    pub fn tensor_data(&self, info: &GgufTensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.map[start..start + info.n_bytes]
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufFile({} v{}, {} metadata, {} tensors)",
            self.path.display(),
            self.version,
            self.metadata.len(),
            self.tensors.len()
        )
    }
}
