//! The backend's matmuls: a few tokens (decode) go through a GEMV kernel (bf16 or block-quantized
//! weights, see quant.rs), more (prefill) through cuBLAS (quantized weights dequantized in tiles); both
//! accumulate in f32 and round the output to bf16 once, as HF's bf16 nn.Linear.
//! Bias (Qwen2's q/k/v) is added before that rounding; the residual add after it (decode) or inside
//! it (prefill: cuBLAS's beta = 1, one kernel fewer per projection).

use cudarc::driver::DevicePtr;
use kestrel::backend::Backend;
use kestrel::{KestrelError, Result};

use super::tensor::{CudaMatrix, CudaTensor, CudaVector, MatrixStorage};
use super::{be, CudaBackend};
use crate::ops::elementwise::bias_add;
use crate::ops::gemm::{gemm_bf16_columns, GemmOutput};
use crate::ops::gemv::{fused_norm_fits, gemv_bf16_fused, Accumulate, GemvNorm};
use crate::ops::gemv_dp4a::Activations;
use crate::ops::silu_mul::silu_mul;

/// The most weight rows a GEMV takes the RMSNorm fused in front: every block recomputes the norm,
/// which pays for one wave of blocks (a layer's projections) but not for the lm_head's many waves.
const FUSED_NORM_MAX_ROWS: usize = 32_768;

/// Whether `rms_norm · w` runs as one fused GEMV (`KESTREL_FUSE_NORM=0` turns fusion off, to
/// measure it).
fn fuse_norm(tokens: usize, in_features: usize, rows: usize) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("KESTREL_FUSE_NORM").map_or(true, |v| v != "0"))
        && rows <= FUSED_NORM_MAX_ROWS
        && fused_norm_fits(tokens, in_features)
}

/// Up to this many tokens a matmul is a GEMV (weights streamed once per token from L2 at worst);
/// beyond, cuBLAS's tensor-core GEMM wins.
pub const GEMV_MAX_TOKENS: usize = 8;

fn check_inner(x: &CudaTensor, w: &CudaMatrix) -> Result<()> {
    if x.cols != w.cols {
        return Err(KestrelError::Backend(format!(
            "matmul: activations [{}, {}] against a weight [{}, {}]",
            x.rows, x.cols, w.rows, w.cols
        )));
    }
    Ok(())
}

fn check_bias(bias: Option<&CudaVector>, w: &CudaMatrix) -> Result<()> {
    match bias {
        Some(b) if b.len() != w.rows => Err(KestrelError::Backend(format!(
            "bias of {} for a weight of {} rows",
            b.len(),
            w.rows
        ))),
        _ => Ok(()),
    }
}

fn check_gate_up(gate_up: &CudaMatrix) -> Result<()> {
    if gate_up.rows.is_multiple_of(2) {
        Ok(())
    } else {
        Err(KestrelError::Backend(format!(
            "gate_up has {} rows, not gate and up of equal size",
            gate_up.rows
        )))
    }
}

impl CudaBackend {
    /// The decode GEMV (1..=8 tokens) into `y`: `[rms_norm(x) with norm] · wᵀ (+ bias)`, finished as
    /// `mode` says (`y` is `[x.rows, w.rows]`, or `[x.rows, w.rows / 2]` for SwiGLU).
    fn gemv_into(
        &self,
        x: &CudaTensor,
        norm: Option<(&CudaVector, f32)>,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        mode: Accumulate,
        y: &mut CudaTensor,
    ) -> Result<()> {
        let norm = norm.map(|(n, eps)| GemvNorm {
            weight: &n.data,
            eps,
        });
        let data = match &w.storage {
            MatrixStorage::Bf16(data) => data,
            MatrixStorage::Quant(parts) => {
                let activations = if w.int8_activations {
                    Activations::Int8Allowed
                } else {
                    Activations::Bf16
                };
                return self.gemv_quantized(x, norm, parts, bias, mode, y, activations);
            }
        };
        let bias = bias.map(|b| &b.data as &dyn DevicePtr<f32>);
        gemv_bf16_fused(
            self.device(),
            &x.data,
            norm,
            data,
            bias,
            w.cols,
            &mut y.data,
            mode,
        )
        .map_err(be)
    }

    /// The prefill matmul `y = x · wᵀ` (`accumulate`: `y = bf16(y + x · wᵀ)`) through cuBLAS.
    fn gemm_into<T: GemmOutput>(
        &self,
        x: &CudaTensor,
        w: &CudaMatrix,
        y: &mut cudarc::driver::CudaSlice<T>,
        accumulate: bool,
    ) -> Result<()> {
        let data = match &w.storage {
            MatrixStorage::Bf16(data) => data,
            MatrixStorage::Quant(parts) => return self.gemm_quantized(x, parts, y, accumulate),
        };
        let dev = self.device();
        let guard = self.blas()?;
        let blas = guard.as_ref().expect("created by blas()");
        let out = (0, w.rows);
        gemm_bf16_columns(dev, blas, &x.data, data, w.cols, y, out, accumulate).map_err(be)
    }

    /// `x · wᵀ (+ bias)` as a new bf16 tensor `[x.rows, w.rows]`.
    pub(crate) fn linear(
        &self,
        x: &CudaTensor,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
    ) -> Result<CudaTensor> {
        check_inner(x, w)?;
        check_bias(bias, w)?;
        let mut y = self.tensor(x.rows, w.rows)?;
        if x.rows <= GEMV_MAX_TOKENS {
            self.gemv_into(x, None, w, bias, Accumulate::Overwrite, &mut y)?;
            return Ok(y);
        }
        match bias {
            None => self.gemm_into(x, w, &mut y.data, false)?,
            Some(b) => {
                let mut acc = self.alloc::<f32>(x.rows * w.rows)?;
                self.gemm_into(x, w, &mut acc, false)?;
                bias_add(self.device(), &acc, &b.data, &mut y.data).map_err(be)?;
            }
        }
        Ok(y)
    }

    /// `residual = bf16(residual + bf16(x · wᵀ))`.
    pub(crate) fn linear_add_residual(
        &self,
        x: &CudaTensor,
        w: &CudaMatrix,
        residual: &mut CudaTensor,
    ) -> Result<()> {
        check_inner(x, w)?;
        if (residual.rows, residual.cols) != (x.rows, w.rows) {
            return Err(KestrelError::Backend(format!(
                "residual [{}, {}] for an output [{}, {}]",
                residual.rows, residual.cols, x.rows, w.rows
            )));
        }
        if x.rows <= GEMV_MAX_TOKENS {
            return self.gemv_into(x, None, w, None, Accumulate::AddToOutput, residual);
        }
        self.gemm_into(x, w, &mut residual.data, true)
    }

    /// `rms_norm(x) · wᵀ (+ bias)`: one fused GEMV launch for a few tokens, a norm kernel and the
    /// matmul otherwise.
    pub(crate) fn norm_linear(
        &self,
        x: &CudaTensor,
        norm: &CudaVector,
        eps: f32,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
    ) -> Result<CudaTensor> {
        check_inner(x, w)?;
        check_bias(bias, w)?;
        if !fuse_norm(x.rows, x.cols, w.rows) {
            return self.linear(&self.rms_norm(x, norm, eps)?, w, bias);
        }
        let mut y = self.tensor(x.rows, w.rows)?;
        self.gemv_into(x, Some((norm, eps)), w, bias, Accumulate::Overwrite, &mut y)?;
        Ok(y)
    }

    /// `silu(rms_norm(x) · gateᵀ) * (rms_norm(x) · upᵀ)`: one fused GEMV launch for a few tokens.
    pub(crate) fn norm_gate_up_silu(
        &self,
        x: &CudaTensor,
        norm: &CudaVector,
        eps: f32,
        gate_up: &CudaMatrix,
    ) -> Result<CudaTensor> {
        check_inner(x, gate_up)?;
        check_gate_up(gate_up)?;
        if !fuse_norm(x.rows, x.cols, gate_up.rows) {
            return self.gate_up_silu_impl(&self.rms_norm(x, norm, eps)?, gate_up);
        }
        let mut y = self.tensor(x.rows, gate_up.rows / 2)?;
        self.gemv_into(
            x,
            Some((norm, eps)),
            gate_up,
            None,
            Accumulate::SwiGlu,
            &mut y,
        )?;
        Ok(y)
    }

    /// `silu(x · gateᵀ) * (x · upᵀ)` over the merged gate/up weight: the GEMV's SwiGLU epilogue for
    /// a few tokens, the matmul and a SiLU·mul kernel otherwise.
    pub(crate) fn gate_up_silu_impl(
        &self,
        x: &CudaTensor,
        gate_up: &CudaMatrix,
    ) -> Result<CudaTensor> {
        check_inner(x, gate_up)?;
        check_gate_up(gate_up)?;
        let inter = gate_up.rows / 2;
        let mut out = self.tensor(x.rows, inter)?;
        if x.rows <= GEMV_MAX_TOKENS {
            self.gemv_into(x, None, gate_up, None, Accumulate::SwiGlu, &mut out)?;
            return Ok(out);
        }
        let gu = self.linear(x, gate_up, None)?;
        silu_mul(self.device(), &gu.data, inter, &mut out.data).map_err(be)?;
        Ok(out)
    }
}
