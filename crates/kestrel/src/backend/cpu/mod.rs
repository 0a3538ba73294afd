//! The CPU backend: the reference for every op. Plain, step-by-step f32 arithmetic (rayon across rows and
//! heads); weights stay in their file format (memory-mapped) and are decoded row by row as they are used.

mod attention;
mod matmul;
mod norm_rope;
mod qdot;

use rayon::prelude::*;

use super::{AttnMetadata, AttnParams, Backend, KvCacheSpec};
use crate::formats::HostTensor;
use crate::{KestrelError, Result};

pub use matmul::CpuMatrix;

/// Activations `[rows, cols]`, f32 row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuTensor {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> CpuTensor {
        debug_assert_eq!(data.len(), rows * cols);
        CpuTensor { rows, cols, data }
    }
    pub fn zeros(rows: usize, cols: usize) -> CpuTensor {
        CpuTensor::new(rows, cols, vec![0.0; rows * cols])
    }
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// K and V for every layer: `[slots, kv_heads * head_dim]` with `slots = num_blocks * block_size`.
pub struct CpuKvCache {
    pub spec: KvCacheSpec,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    threads: usize,
    /// See [`Backend::decode_longest_first`] (off; tests turn it on to check the engine's reordering).
    longest_first: bool,
    /// See [`Backend::async_decode`] (off; tests turn it on to check the engine's pipelining).
    async_decode: bool,
}

impl CpuBackend {
    /// A backend using rayon's global pool (sized by `RAYON_NUM_THREADS` or `--threads`).
    pub fn new() -> CpuBackend {
        CpuBackend {
            threads: rayon::current_num_threads(),
            longest_first: false,
            async_decode: false,
        }
    }

    /// Asks the engine to list decode steps' sequences longest first (as a GPU may).
    pub fn with_decode_longest_first(mut self, on: bool) -> CpuBackend {
        self.longest_first = on;
        self
    }

    /// Lets the engine launch decode steps before reading the previous one's tokens (the CPU runs
    /// each step at launch, so this checks the engine's side of asynchronous scheduling).
    pub fn with_async_decode(mut self, on: bool) -> CpuBackend {
        self.async_decode = on;
        self
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type KvCache = CpuKvCache;
    type Metadata = AttnMetadata;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn decode_longest_first(&self) -> bool {
        self.longest_first
    }

    fn async_decode(&self) -> bool {
        self.async_decode
    }

    fn upload_matrix(&self, parts: &[HostTensor]) -> Result<CpuMatrix> {
        CpuMatrix::new(parts.to_vec())
    }

    fn matrix_bytes(&self, m: &CpuMatrix) -> usize {
        m.storage_bytes()
    }

    fn upload_vector(&self, parts: &[HostTensor]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for p in parts {
            out.extend(p.to_f32()?);
        }
        Ok(out)
    }

    fn alloc_kv_cache(&self, spec: &KvCacheSpec) -> Result<CpuKvCache> {
        let len = spec
            .num_blocks
            .checked_mul(spec.block_size * spec.num_kv_heads * spec.head_dim)
            .ok_or_else(|| KestrelError::Backend("KV cache size overflows".into()))?;
        Ok(CpuKvCache {
            spec: *spec,
            k: (0..spec.num_layers).map(|_| vec![0.0; len]).collect(),
            v: (0..spec.num_layers).map(|_| vec![0.0; len]).collect(),
        })
    }

    fn prepare_metadata(&self, meta: &AttnMetadata) -> Result<AttnMetadata> {
        Ok(meta.clone())
    }

    fn embed(&self, table: &CpuMatrix, tokens: &[u32]) -> Result<CpuTensor> {
        let cols = table.cols;
        let mut out = CpuTensor::zeros(tokens.len(), cols);
        for (&t, dst) in tokens.iter().zip(out.data.chunks_mut(cols)) {
            if t as usize >= table.rows {
                return Err(KestrelError::param(
                    "token id",
                    format!("{t} is outside the vocabulary of {} tokens", table.rows),
                ));
            }
            table.decode_row(t as usize, dst)?;
        }
        Ok(out)
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &Vec<f32>, eps: f32) -> Result<CpuTensor> {
        check_len("rms_norm weight", weight.len(), x.cols)?;
        let mut out = x.clone();
        out.data
            .par_chunks_mut(x.cols)
            .for_each(|row| norm_rope::rms_norm_in_place(row, weight, eps));
        Ok(out)
    }

    fn matmul(&self, x: &CpuTensor, w: &CpuMatrix, bias: Option<&Vec<f32>>) -> Result<CpuTensor> {
        let mut out = w.matmul(x)?;
        if let Some(b) = bias {
            check_len("bias", b.len(), out.cols)?;
            for row in out.data.chunks_mut(out.cols) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
        Ok(out)
    }

    fn matmul_add_residual(
        &self,
        x: &CpuTensor,
        w: &CpuMatrix,
        residual: &mut CpuTensor,
    ) -> Result<()> {
        let out = w.matmul(x)?;
        check_len("residual", residual.data.len(), out.data.len())?;
        residual
            .data
            .iter_mut()
            .zip(&out.data)
            .for_each(|(r, o)| *r += o);
        Ok(())
    }

    fn gate_up_silu(&self, x: &CpuTensor, gate_up: &CpuMatrix) -> Result<CpuTensor> {
        let gu = gate_up.matmul(x)?;
        let inter = gu.cols / 2;
        let mut out = CpuTensor::zeros(gu.rows, inter);
        for (src, dst) in gu.data.chunks(gu.cols).zip(out.data.chunks_mut(inter)) {
            let (g, u) = src.split_at(inter);
            for ((d, &g), &u) in dst.iter_mut().zip(g).zip(u) {
                *d = g / (1.0 + (-g).exp()) * u;
            }
        }
        Ok(out)
    }

    fn qk_norm_rope_store_kv(
        &self,
        qkv: &CpuTensor,
        p: &AttnParams<'_, Vec<f32>>,
        meta: &AttnMetadata,
        cache: &mut CpuKvCache,
        layer: usize,
    ) -> Result<CpuTensor> {
        norm_rope::qk_norm_rope_store_kv(qkv, p, meta, cache, layer)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        p: &AttnParams<'_, Vec<f32>>,
        meta: &AttnMetadata,
        cache: &CpuKvCache,
        layer: usize,
    ) -> Result<CpuTensor> {
        attention::paged_attention(q, p, meta, cache, layer)
    }

    fn select_rows(&self, x: &CpuTensor, rows: &[usize]) -> Result<CpuTensor> {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r >= x.rows {
                return Err(KestrelError::Backend(format!(
                    "row {r} of a {}-row tensor",
                    x.rows
                )));
            }
            data.extend_from_slice(x.row(r));
        }
        Ok(CpuTensor::new(rows.len(), x.cols, data))
    }

    fn to_host(&self, x: &CpuTensor) -> Result<(usize, usize, Vec<f32>)> {
        Ok((x.rows, x.cols, x.data.clone()))
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(KestrelError::Backend(format!(
            "{what}: length {got}, expected {want}"
        )));
    }
    Ok(())
}
