//! GGUF metadata values: the thirteen GGUF value types, their type ids and their encoding.

use std::fmt;
use std::io::{self, Write};

/// GGUF value type ids (`gguf_type`).
pub mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Fewest bytes one value of type `ty` takes in a file (None for an unknown type): bounds how many
/// elements an array count can honestly claim.
pub(crate) fn min_encoded_size(ty: u32) -> Option<u64> {
    use type_id::*;
    Some(match ty {
        U8 | I8 | BOOL => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 | STRING => 8,
        ARRAY => 12,
        _ => return None,
    })
}

#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn type_id(&self) -> u32 {
        use GgufValue as V;
        match self {
            V::U8(_) => type_id::U8,
            V::I8(_) => type_id::I8,
            V::U16(_) => type_id::U16,
            V::I16(_) => type_id::I16,
            V::U32(_) => type_id::U32,
            V::I32(_) => type_id::I32,
            V::U64(_) => type_id::U64,
            V::I64(_) => type_id::I64,
            V::F32(_) => type_id::F32,
            V::F64(_) => type_id::F64,
            V::Bool(_) => type_id::BOOL,
            V::String(_) => type_id::STRING,
            V::Array(_) => type_id::ARRAY,
        }
    }

    pub fn type_name(&self) -> &'static str {
        use GgufValue as V;
        match self {
            V::U8(_) => "u8",
            V::I8(_) => "i8",
            V::U16(_) => "u16",
            V::I16(_) => "i16",
            V::U32(_) => "u32",
            V::I32(_) => "i32",
            V::U64(_) => "u64",
            V::I64(_) => "i64",
            V::F32(_) => "f32",
            V::F64(_) => "f64",
            V::Bool(_) => "bool",
            V::String(_) => "string",
            V::Array(_) => "array",
        }
    }

    /// Any integer type, as i64 (None for a u64 above i64::MAX and for non-integers).
    pub fn as_i64(&self) -> Option<i64> {
        use GgufValue as V;
        match *self {
            V::U8(v) => Some(v.into()),
            V::I8(v) => Some(v.into()),
            V::U16(v) => Some(v.into()),
            V::I16(v) => Some(v.into()),
            V::U32(v) => Some(v.into()),
            V::I32(v) => Some(v.into()),
            V::U64(v) => i64::try_from(v).ok(),
            V::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// Floats and integers.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Writes the value without its type id. Arrays must be homogeneous; an empty array is written
    /// with element type u8 (GGUF has no untyped empty array).
    pub(crate) fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        use GgufValue as V;
        match self {
            V::U8(v) => w.write_all(&[*v]),
            V::I8(v) => w.write_all(&v.to_le_bytes()),
            V::U16(v) => w.write_all(&v.to_le_bytes()),
            V::I16(v) => w.write_all(&v.to_le_bytes()),
            V::U32(v) => w.write_all(&v.to_le_bytes()),
            V::I32(v) => w.write_all(&v.to_le_bytes()),
            V::U64(v) => w.write_all(&v.to_le_bytes()),
            V::I64(v) => w.write_all(&v.to_le_bytes()),
            V::F32(v) => w.write_all(&v.to_le_bytes()),
            V::F64(v) => w.write_all(&v.to_le_bytes()),
            V::Bool(v) => w.write_all(&[*v as u8]),
            V::String(s) => {
                w.write_all(&(s.len() as u64).to_le_bytes())?;
                w.write_all(s.as_bytes())
            }
            V::Array(items) => {
                let elem = items.first().map_or(type_id::U8, GgufValue::type_id);
                if let Some(bad) = items.iter().find(|v| v.type_id() != elem) {
                    let msg = format!(
                        "GGUF array mixes {} and {} elements",
                        items[0].type_name(),
                        bad.type_name()
                    );
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
                }
                w.write_all(&elem.to_le_bytes())?;
                w.write_all(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|v| v.encode(w))
            }
        }
    }
}

/// Human-readable, for `kestrel inspect`: strings quoted, long arrays elided.
impl fmt::Display for GgufValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufValue as V;
        match self {
            V::U8(v) => write!(f, "{v}"),
            V::I8(v) => write!(f, "{v}"),
            V::U16(v) => write!(f, "{v}"),
            V::I16(v) => write!(f, "{v}"),
            V::U32(v) => write!(f, "{v}"),
            V::I32(v) => write!(f, "{v}"),
            V::U64(v) => write!(f, "{v}"),
            V::I64(v) => write!(f, "{v}"),
            V::F32(v) => write!(f, "{v}"),
            V::F64(v) => write!(f, "{v}"),
            V::Bool(v) => write!(f, "{v}"),
            V::String(s) if s.chars().count() > 120 => {
                let head: String = s.chars().take(117).collect();
                write!(f, "{:?}... ({} bytes)", head, s.len())
            }
            V::String(s) => write!(f, "{s:?}"),
            V::Array(items) => {
                const SHOWN: usize = 8;
                f.write_str("[")?;
                for (i, v) in items.iter().take(SHOWN).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if items.len() > SHOWN {
                    write!(f, ", ... {} more", items.len() - SHOWN)?;
                }
                f.write_str("]")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_elides_long_arrays_and_quotes_strings() {
        let a = GgufValue::Array((0..20).map(GgufValue::I32).collect());
        assert_eq!(a.to_string(), "[0, 1, 2, 3, 4, 5, 6, 7, ... 12 more]");
        assert_eq!(GgufValue::String("a\"b".into()).to_string(), "\"a\\\"b\"");
    }

    #[test]
    fn integer_accessors_convert_only_when_exact() {
        assert_eq!(GgufValue::I32(-1).as_u64(), None);
        assert_eq!(GgufValue::U64(u64::MAX).as_u64(), Some(u64::MAX));
        assert_eq!(GgufValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(GgufValue::U8(7).as_f64(), Some(7.0));
        assert_eq!(GgufValue::F32(1.5).as_u64(), None);
    }

    #[test]
    fn mixed_arrays_are_refused() {
        let a = GgufValue::Array(vec![GgufValue::I32(1), GgufValue::U32(2)]);
        assert!(a.encode(&mut Vec::new()).is_err());
    }
}
