//! The bounds-checked little-endian reader the GGUF parser reads everything through: every read and
//! every claimed count is checked against the bytes left before it is used.

use std::path::Path;

use super::value::{min_encoded_size, type_id, GgufValue};
use crate::{KestrelError, Result};

/// Arrays of arrays nest at most this deep (a bound on recursion, not a GGUF rule).
const MAX_ARRAY_DEPTH: usize = 8;

/// A bounds-checked little-endian reader over the mapped file.
pub(super) struct Cursor<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    pub path: &'a Path,
}

impl<'a> Cursor<'a> {
    pub fn err(&self, msg: impl Into<String>) -> KestrelError {
        KestrelError::format(self.path, msg)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(self.err(format!(
                "truncated GGUF: {what} at byte {} needs {n} bytes but the file ends at {}",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("take returned N bytes"))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// GGUF strings are not required to be UTF-8 (llama.cpp never checks); invalid bytes become U+FFFD
    /// rather than refusing a model llama.cpp would load.
    pub fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        Ok(String::from_utf8_lossy(self.take(len, what)?).into_owned())
    }

    /// Refuses a count whose elements could not possibly fit in the rest of the file, before anything
    /// is allocated for them.
    pub fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(self.err(format!(
                "{what} count {count} at byte {} cannot fit in the {} bytes left: corrupt or truncated file",
                self.pos,
                self.remaining()
            )));
        }
        Ok(())
    }

    pub fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        use GgufValue as V;
        Ok(match ty {
            type_id::U8 => V::U8(self.array::<1>(key)?[0]),
            type_id::I8 => V::I8(self.array::<1>(key)?[0] as i8),
            type_id::U16 => V::U16(u16::from_le_bytes(self.array(key)?)),
            type_id::I16 => V::I16(i16::from_le_bytes(self.array(key)?)),
            type_id::U32 => V::U32(self.u32(key)?),
            type_id::I32 => V::I32(i32::from_le_bytes(self.array(key)?)),
            type_id::F32 => V::F32(f32::from_le_bytes(self.array(key)?)),
            type_id::BOOL => match self.array::<1>(key)?[0] {
                0 => V::Bool(false),
                1 => V::Bool(true),
                b => {
                    return Err(self.err(format!(
                        "metadata '{key}': bool byte {b} is neither 0 nor 1"
                    )))
                }
            },
            type_id::STRING => V::String(self.string(key)?),
            type_id::U64 => V::U64(self.u64(key)?),
            type_id::I64 => V::I64(i64::from_le_bytes(self.array(key)?)),
            type_id::F64 => V::F64(f64::from_le_bytes(self.array(key)?)),
            type_id::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "metadata '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem = self.u32(key)?;
                let min = min_encoded_size(elem).ok_or_else(|| {
                    self.err(format!(
                        "metadata '{key}': unknown array element type {elem}"
                    ))
                })?;
                let count = self.u64(key)?;
                self.check_count(count, min, &format!("metadata '{key}' array"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                V::Array(items)
            }
            other => return Err(self.err(format!("metadata '{key}': unknown value type {other}"))),
        })
    }
}
