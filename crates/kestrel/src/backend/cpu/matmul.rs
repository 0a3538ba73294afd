//! Matrix times activations on the CPU, straight from the weights' storage format.
//!
//! Quantized weights never become f32: the activations are quantized once per call into the format the
//! weight type's integer kernel reads (see [`super::qdot`]) and every row is dotted with that, several
//! tokens per pass over a weight row so prefill loads each block once per 4 to 8 tokens. Output rows
//! are split into chunks, one rayon task each, writing its rows' outputs in place for every token; a
//! chunk is small enough to stay in cache while all token groups pass over it. Types without a kernel
//! (Q2_K, Q3_K, Q4_1, Q5_1...) decode each row to f32 once per call and dot it with every token.

use rayon::prelude::*;

use super::qdot::{self, ActFormat, RowDot, SimdLevel, MAX_TOKENS_ANY};
use super::CpuTensor;
use crate::formats::HostTensor;
use crate::quant::{self, GgmlType};
use crate::{KestrelError, Result};

/// Weight bytes a task covers at most when several token groups pass over its rows (about half an L2).
const TASK_BYTES: usize = 256 * 1024;

/// A weight matrix made of one or more source tensors stacked by rows.
pub struct CpuMatrix {
    pub rows: usize,
    pub cols: usize,
    parts: Vec<HostTensor>,
    /// First row of each part.
    starts: Vec<usize>,
    /// Each part's integer/float dot kernel and the activation format it reads, if it has one.
    kernels: Vec<Option<(RowDot, ActFormat)>>,
}

impl CpuMatrix {
    pub fn new(parts: Vec<HostTensor>) -> Result<CpuMatrix> {
        CpuMatrix::with_level(parts, SimdLevel::best())
    }

    /// A matrix whose kernels are those of `level` (tests compare levels).
    pub(crate) fn with_level(parts: Vec<HostTensor>, level: SimdLevel) -> Result<CpuMatrix> {
        let cols = parts.first().map(HostTensor::cols).unwrap_or(0);
        let mut starts = Vec::with_capacity(parts.len());
        let mut kernels = Vec::with_capacity(parts.len());
        let mut rows = 0;
        for p in &parts {
            if p.cols() != cols {
                return Err(KestrelError::ShapeMismatch {
                    name: p.name.clone(),
                    expected: vec![p.rows(), cols],
                    found: p.shape.clone(),
                });
            }
            let need = p.row_bytes()? * p.rows();
            if p.bytes().len() < need {
                return Err(KestrelError::Backend(format!(
                    "tensor '{}' has {} bytes, its shape needs {need}",
                    p.name,
                    p.bytes().len()
                )));
            }
            kernels.push(qdot::kernel(p.ty, level).zip(qdot::act_type(p.ty)));
            starts.push(rows);
            rows += p.rows();
        }
        Ok(CpuMatrix {
            rows,
            cols,
            parts,
            starts,
            kernels,
        })
    }

    /// Bytes of the weights as stored (quantized blocks read straight from the file).
    pub fn storage_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.bytes().len()).sum()
    }

    pub fn types(&self) -> Vec<GgmlType> {
        self.parts.iter().map(|p| p.ty).collect()
    }

    fn locate(&self, r: usize) -> (&HostTensor, usize) {
        let i = self.starts.partition_point(|&s| s <= r) - 1;
        (&self.parts[i], r - self.starts[i])
    }

    /// Decodes row `r` to f32.
    pub fn decode_row(&self, r: usize, dst: &mut [f32]) -> Result<()> {
        let (part, local) = self.locate(r);
        quant::dequantize_row(part.ty, part.row(local), dst)
    }

    /// `x · selfᵀ`: `[x.rows, self.rows]`.
    pub fn matmul(&self, x: &CpuTensor) -> Result<CpuTensor> {
        if x.cols != self.cols {
            return Err(KestrelError::Backend(format!(
                "matmul: activations have {} columns, weight '{}' has {}",
                x.cols,
                self.parts.first().map(|p| p.name.as_str()).unwrap_or("?"),
                self.cols
            )));
        }
        let tokens = x.rows;
        let acts = Activations::new(x, self.kernels.iter().flatten().map(|k| k.1))?;
        let mut out = CpuTensor::zeros(tokens, self.rows);
        let dst = OutPtr(out.data.as_mut_ptr());
        // Each task owns whole weight rows, i.e. a range of output columns for every token.
        let mut tasks = Vec::new();
        let threads = rayon::current_num_threads().max(1);
        for (i, p) in self.parts.iter().enumerate() {
            let row_bytes = p.row_bytes()?;
            let mut per = self.rows.div_ceil(threads * 8).max(4);
            if tokens > qdot::max_tokens(p.ty) {
                per = per.min((TASK_BYTES / row_bytes.max(1)).max(1));
            }
            let mut r0 = 0;
            while r0 < p.rows() {
                let n = per.min(p.rows() - r0);
                tasks.push((i, r0, n));
                r0 += n;
            }
        }
        tasks
            .into_par_iter()
            .try_for_each_init(Vec::new, |buf, (i, r0, n)| {
                self.run_task(i, r0, n, &dst, &acts, x, buf)
            })?;
        Ok(out)
    }

    /// Rows `r0..r0 + n` of part `i`, for every token, into `dst` (`[tokens, self.rows]`).
    #[allow(clippy::too_many_arguments)]
    fn run_task(
        &self,
        i: usize,
        r0: usize,
        n: usize,
        dst: &OutPtr,
        acts: &Activations,
        x: &CpuTensor,
        buf: &mut Vec<f32>,
    ) -> Result<()> {
        let part = &self.parts[i];
        let tokens = x.rows;
        let row_bytes = part.row_bytes()?;
        let bytes = &part.bytes()[r0 * row_bytes..][..n * row_bytes];
        let first = self.starts[i] + r0;
        // SAFETY: output (t, r) is in bounds (t < tokens, r < self.rows), and only the task owning row
        // r writes it; nothing reads the output until every task is done.
        let put = |r: usize, t: usize, v: f32| unsafe { *dst.0.add(t * self.rows + first + r) = v };
        let Some((kernel, act_ty)) = self.kernels[i] else {
            // No kernel for this type: decode each row once and dot it with every token.
            buf.resize(self.cols, 0.0);
            for (r, w) in bytes.chunks_exact(row_bytes).enumerate() {
                quant::dequantize_row(part.ty, w, buf)?;
                for t in 0..tokens {
                    put(r, t, dot(buf, x.row(t)));
                }
            }
            return Ok(());
        };
        let a = acts.get(act_ty);
        let a_bytes = a.len() / tokens.max(1);
        let group = qdot::max_tokens(part.ty);
        for t0 in (0..tokens).step_by(group) {
            let m = group.min(tokens - t0);
            let mut rows: [&[u8]; MAX_TOKENS_ANY] = [&[]; MAX_TOKENS_ANY];
            for (k, r) in rows[..m].iter_mut().enumerate() {
                *r = &a[(t0 + k) * a_bytes..][..a_bytes];
            }
            for (r, w) in bytes.chunks_exact(row_bytes).enumerate() {
                let mut o = [0f32; MAX_TOKENS_ANY];
                kernel(w, &rows[..m], &mut o[..m]);
                for (k, &v) in o[..m].iter().enumerate() {
                    put(r, t0 + k, v);
                }
            }
        }
        Ok(())
    }
}

/// The output's base pointer, shared by the tasks (each writes only its own rows' columns).
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements through it, and the owner waits for all of them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The activations in every format the matrix's kernels read, each made once per call.
struct Activations<'a> {
    f32: &'a [u8],
    q8x: Vec<u8>,
    q8_k: Vec<u8>,
}

impl<'a> Activations<'a> {
    fn new(x: &'a CpuTensor, types: impl Iterator<Item = ActFormat>) -> Result<Activations<'a>> {
        let mut acts = Activations {
            f32: bytemuck::cast_slice(&x.data),
            q8x: Vec::new(),
            q8_k: Vec::new(),
        };
        for ty in types {
            let dst = match ty {
                ActFormat::Q8x => &mut acts.q8x,
                ActFormat::Q8K => &mut acts.q8_k,
                ActFormat::F32 => continue,
            };
            if dst.is_empty() && x.rows > 0 {
                *dst = quantize_rows(ty, x)?;
            }
        }
        Ok(acts)
    }

    fn get(&self, ty: ActFormat) -> &[u8] {
        match ty {
            ActFormat::Q8x => &self.q8x,
            ActFormat::Q8K => &self.q8_k,
            ActFormat::F32 => self.f32,
        }
    }
}

fn quantize_rows(ty: ActFormat, x: &CpuTensor) -> Result<Vec<u8>> {
    let row_bytes = ty.row_bytes(x.cols)?;
    let mut out = vec![0u8; row_bytes * x.rows];
    if x.rows <= 4 {
        for (dst, src) in out.chunks_mut(row_bytes).zip(x.data.chunks(x.cols)) {
            ty.quantize_row(src, dst)?;
        }
    } else {
        out.par_chunks_mut(row_bytes)
            .zip(x.data.par_chunks(x.cols))
            .try_for_each(|(dst, src)| ty.quantize_row(src, dst))?;
    }
    Ok(out)
}

/// f32 dot product with 8 independent accumulators (vectorises; f32 accumulation as the contract says).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
