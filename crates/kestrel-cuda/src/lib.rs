//! Kestrel's CUDA backend.
//!
//! Kernels are CUDA C in `kernels/*.cu`, compiled at run time by NVRTC for the GPU found and cached on
//! disk ([`compile`]); cudarc opens libcuda, libnvrtc and libcublas at run time, so building needs no
//! CUDA toolkit. [`device::CudaDevice`] opens a GPU and loads kernels; [`ops`] holds the launch
//! wrappers, which check shapes before launching (the kernels check nothing).
//!
//! Tests: `tests/nvrtc_compile.rs` compiles every kernel for sm_80 / sm_90 / sm_90a with no GPU
//! (`eval "$(bash scripts/ci-nvrtc.sh)"` first, for NVRTC and the headers from PyPI);
//! `tests/gpu_ops.rs` runs every op against a CPU reference and skips without a GPU unless
//! `KESTREL_REQUIRE_GPU=1`. For a GPU machine without Rust:
//! `../shared/tools/gpu-bundle --features kestrel-cli/cuda --tests kestrel_cuda`, then there
//! `bash .gpu/run-tests.sh`.

pub mod backend;
pub mod bandwidth;
pub mod compile;
pub mod device;
pub mod dtype;
mod error;
mod knobs;
pub mod ops;
#[cfg(test)]
mod pdl_lint;

pub use device::CudaDevice;
pub use dtype::Bf16;
pub use error::{CudaError, Result};

/// Re-exported so users of the crate name the same device-buffer types.
pub use cudarc;
