//! `CudaBackend`: kestrel's [`Backend`] on one NVIDIA GPU, in BF16 (weights, activations, residual and
//! KV cache in bf16, every reduction in f32, rounding where HF's bf16 model rounds).
//!
//! Each trait op is one or two launches of the fused kernels in [`crate::ops`]. Invariants:
//! - All work goes to the device's one stream, so ops are ordered without synchronisation; only
//!   `to_host`, `argmax`, `sample` and `decode_step` wait (for their copy to the host).
//! - A forward step's metadata is uploaded once ([`CudaMetadata`]), into a reused buffer.
//! - Greedy decode steps are padded to a batch-size bucket and replayed from CUDA graphs
//!   ([`graphs`]); `set_cuda_graphs(false)` (`--eager`) runs them eagerly.
//! - Decode-sized matmuls (≤ [`linear::GEMV_MAX_TOKENS`] tokens) use the GEMV kernel, larger ones
//!   cuBLAS (bf16 in, f32 compute).

mod async_decode;
mod attention;
pub mod graphs;
mod linear;
pub mod memory;
mod metadata;
pub(crate) mod quant;
mod sampling;
pub mod tensor;
mod trait_impl;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, DeviceRepr};
use kestrel::{KestrelError, Result};

use crate::dtype::Bf16;
use crate::ops::gemm::cublas_handle;
use crate::{CudaDevice, CudaError};

pub use metadata::CudaMetadata;
pub use tensor::{CudaKvCache, CudaMatrix, CudaTensor, CudaVector};

/// A CUDA error as the library's error (its message names the kernel or driver call).
pub(crate) fn be(e: CudaError) -> KestrelError {
    KestrelError::Backend(e.to_string())
}

/// The BF16 CUDA backend on one GPU and one stream.
///
/// Invariant: one forward pass at a time. Ops of a step share the stream, the staged metadata buffer
/// and (in a graph capture) the stream's capture state, so two threads running forwards on the same
/// backend at once fail (a staged step reports "already in use"; a capture is invalidated). The
/// engine's runner owns the backend; tests that share one take turns.
pub struct CudaBackend {
    dev: Arc<CudaDevice>,
    /// Created on the first prefill-sized matmul (decode alone never needs libcublas).
    blas: Mutex<Option<CudaBlas>>,
    meta_pool: metadata::MetaPool,
    /// The attention kernels' scratch, grown as needed.
    attn_workspace: Mutex<Option<graphs::AttnScratch>>,
    /// RoPE inverse frequencies per (head_dim, theta bits).
    inv_freq: Mutex<HashMap<(usize, u32), CudaSlice<f32>>>,
    /// Decode steps replay CUDA graphs (else they run eagerly, padded the same way).
    graphs_enabled: AtomicBool,
    /// The decode graphs and their fixed buffers, per (bucket, table width).
    decode: Mutex<graphs::DecodeGraphs>,
    /// The inputs of the decode step running now, if any (see [`graphs`]).
    staged: Mutex<Option<graphs::Staged>>,
    /// Kernels the last decode step launched or captured.
    step_kernels: AtomicUsize,
    /// Nanoseconds spent in decode steps before their launch (see `HostTiming::decode_prep_s`).
    decode_prep_ns: AtomicU64,
    /// Quantized weights' prefill tile (quant.rs), grown as needed.
    dequant_tile: Mutex<Option<CudaSlice<Bf16>>>,
    /// Decode steps launched and not read back yet (asynchronous scheduling).
    launched: Mutex<async_decode::Launched>,
    /// See [`CudaBackend::set_async_decode`].
    async_decode: AtomicBool,
}

impl CudaBackend {
    pub fn new(dev: Arc<CudaDevice>) -> CudaBackend {
        CudaBackend {
            dev,
            blas: Mutex::new(None),
            meta_pool: Arc::new(Mutex::new(None)),
            attn_workspace: Mutex::new(None),
            inv_freq: Mutex::new(HashMap::new()),
            graphs_enabled: AtomicBool::new(true),
            decode: Mutex::new(graphs::DecodeGraphs::default()),
            staged: Mutex::new(None),
            step_kernels: AtomicUsize::new(0),
            decode_prep_ns: AtomicU64::new(0),
            dequant_tile: Mutex::new(None),
            launched: Mutex::new(async_decode::Launched::default()),
            async_decode: AtomicBool::new(!matches!(
                std::env::var("KESTREL_ASYNC_DECODE").as_deref(),
                Ok("0")
            )),
        }
    }

    /// The backend on GPU `ordinal`; `Ok(None)` when there is no driver or no GPU.
    pub fn open(ordinal: usize) -> Result<Option<CudaBackend>> {
        Ok(CudaDevice::open(ordinal)
            .map_err(be)?
            .map(|d| CudaBackend::new(Arc::new(d))))
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    pub(crate) fn blas(&self) -> Result<MutexGuard<'_, Option<CudaBlas>>> {
        let mut g = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(cublas_handle(&self.dev).map_err(be)?);
        }
        Ok(g)
    }

    /// Uninitialised device memory (every op writes all of its output).
    pub(crate) fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        let s = self.dev.stream();
        // SAFETY: the caller's kernel writes every element before anything reads it.
        let r = if n == 0 {
            s.null::<T>()
        } else {
            unsafe { s.alloc::<T>(n) }
        };
        r.map_err(|e| {
            KestrelError::Backend(format!(
                "allocating {n} elements on GPU {}: {e}",
                self.dev.name()
            ))
        })
    }

    pub(crate) fn tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            data: self.alloc::<Bf16>(rows * cols)?,
        })
    }

    fn upload<T: DeviceRepr>(&self, what: &str, host: &[T]) -> Result<CudaSlice<T>> {
        self.dev.stream().clone_htod(host).map_err(|e| {
            KestrelError::Backend(format!(
                "uploading {what} ({:.1} MiB) to GPU {}: {e}",
                std::mem::size_of_val(host) as f64 / (1 << 20) as f64,
                self.dev.name()
            ))
        })
    }

    /// Runs `f` with the RoPE inverse frequencies of `head_dim` and `theta` on the device.
    fn with_inv_freq<R>(
        &self,
        head_dim: usize,
        theta: f32,
        f: impl FnOnce(&CudaSlice<f32>) -> Result<R>,
    ) -> Result<R> {
        let mut cache = self.inv_freq.lock().unwrap_or_else(|e| e.into_inner());
        let freqs = match cache.entry((head_dim, theta.to_bits())) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                // As HF computes them: 1 / theta^(2i/d), in f64 then rounded to f32.
                let host: Vec<f32> = (0..head_dim / 2)
                    .map(|i| (1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64)) as f32)
                    .collect();
                e.insert(self.upload("RoPE frequencies", &host)?)
            }
        };
        f(freqs)
    }
}
