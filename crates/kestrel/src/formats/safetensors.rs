//! HF safetensors checkpoints: a single `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; tensors are views into the maps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{HostTensor, TensorBytes};
use crate::quant::GgmlType;
use crate::{KestrelError, Result};

struct Entry {
    file: usize,
    ty: GgmlType,
    shape: Vec<usize>,
    start: usize,
    len: usize,
}

/// The tensors of an HF checkpoint directory, by HF name.
pub struct SafetensorsDir {
    pub dir: PathBuf,
    maps: Vec<Arc<Mmap>>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<SafetensorsDir> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| KestrelError::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| KestrelError::format(&index, format!("invalid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| KestrelError::format(&index, "no 'weight_map' object"))?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(KestrelError::format(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        };
        let mut maps = Vec::new();
        let mut entries = HashMap::new();
        for (fi, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| KestrelError::io(path, e))?;
            // SAFETY: the map is read-only; a checkpoint rewritten under a running process is the
            // user's doing, as with every mmap-based loader.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| KestrelError::io(path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map[..])
                .map_err(|e| KestrelError::format(path, explain_invalid(&map, e)))?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let ty = match info.dtype {
                    Dtype::F32 => GgmlType::F32,
                    Dtype::F16 => GgmlType::F16,
                    Dtype::BF16 => GgmlType::BF16,
                    other => {
                        return Err(KestrelError::UnsupportedTensorType {
                            tensor: name,
                            ty: format!("{other:?}"),
                            hint: format!(
                                " in {} (Kestrel reads F32, F16 and BF16 safetensors)",
                                path.display()
                            ),
                        })
                    }
                };
                let (a, b) = info.data_offsets;
                entries.insert(
                    name,
                    Entry {
                        file: fi,
                        ty,
                        shape: info.shape.clone(),
                        start: data_start + a,
                        len: b - a,
                    },
                );
            }
            maps.push(Arc::new(map));
        }
        Ok(SafetensorsDir {
            dir: dir.to_path_buf(),
            maps,
            entries,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| KestrelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.dir.display().to_string(),
            })?;
        Ok(HostTensor {
            name: name.to_string(),
            ty: e.ty,
            shape: e.shape.clone(),
            data: TensorBytes::Mapped {
                map: self.maps[e.file].clone(),
                start: e.start,
                len: e.len,
            },
        })
    }
}

/// The safetensors crate's errors don't say which length or tensor is wrong ("incomplete metadata,
/// file not fully covered"); look at the header ourselves to name it.
fn explain_invalid(bytes: &[u8], err: safetensors::SafeTensorError) -> String {
    let base = format!("not a valid safetensors file: {err}");
    let Some(len_bytes) = bytes.get(..8) else {
        return format!(
            "{base} (the file is only {} bytes: truncated?)",
            bytes.len()
        );
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let Some(data_len) = (bytes.len() as u64).checked_sub(header_len.saturating_add(8)) else {
        return format!(
            "{base} (its first 8 bytes give a header of {header_len} bytes, but the file has {}: \
             truncated, or not a safetensors file)",
            bytes.len()
        );
    };
    let header: serde_json::Map<String, serde_json::Value> =
        match serde_json::from_slice(&bytes[8..8 + header_len as usize]) {
            Ok(h) => h,
            Err(_) => return base,
        };
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        if let Some(end) = info["data_offsets"][1].as_u64().filter(|&e| e > data_len) {
            return format!(
                "{base} (tensor '{name}' ends at byte {end} of the data, but only {data_len} bytes \
                 follow the header: truncated?)"
            );
        }
    }
    base
}
