//! `Bf16`: bf16 as device buffers hold it.
//!
//! A transparent wrapper of `half::bf16` carrying cudarc's marker traits. (cudarc's own `f16` feature
//! would give them to `half::bf16` directly, but it also turns on features of `half` for the whole
//! workspace, so `kestrel` would be rebuilt each time it is built apart from this crate.)

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

#[derive(Clone, Copy, Default, PartialEq, PartialOrd)]
#[repr(transparent)]
pub struct Bf16(pub half::bf16);

// SAFETY: a plain 2-byte value, bit-compatible with CUDA's __nv_bfloat16; all-zero bits are 0.0.
unsafe impl DeviceRepr for Bf16 {}
unsafe impl ValidAsZeroBits for Bf16 {}

impl Bf16 {
    pub const NAN: Bf16 = Bf16(half::bf16::NAN);
    /// Rounds to nearest even, as CUDA's `__float2bfloat16` and PyTorch do.
    pub fn from_f32(x: f32) -> Bf16 {
        Bf16(half::bf16::from_f32(x))
    }
    pub fn to_f32(self) -> f32 {
        self.0.to_f32()
    }
}

impl std::fmt::Debug for Bf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<half::bf16> for Bf16 {
    fn from(x: half::bf16) -> Bf16 {
        Bf16(x)
    }
}

/// Rounds each value to bf16.
pub fn to_bf16(xs: &[f32]) -> Vec<Bf16> {
    xs.iter().map(|&x| Bf16::from_f32(x)).collect()
}

/// Widens each value to f32 (exact).
pub fn to_f32(xs: &[Bf16]) -> Vec<f32> {
    xs.iter().map(|x| x.to_f32()).collect()
}
