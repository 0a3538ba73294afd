//! The backend's matmuls: a few tokens (decode) go through the bf16 GEMV kernel, more (prefill)
//! through cuBLAS; both accumulate in f32 and round the output to bf16 once, as HF's bf16 nn.Linear.
//! Bias (Qwen2's q/k/v) is added before that rounding; the residual add after it (decode) or inside
//! it (prefill: cuBLAS's beta = 1, one kernel fewer per projection).

use cudarc::driver::DevicePtr;
use kestrel::{KestrelError, Result};

use super::tensor::{CudaMatrix, CudaTensor, CudaVector};
use super::{be, CudaBackend};
use crate::ops::elementwise::bias_add;
use crate::ops::gemm::{gemm_bf16, gemm_bf16_accumulate};
use crate::ops::gemv::{fused_norm_fits, gemv_bf16, gemv_bf16_fused, Accumulate, GemvNorm};
use crate::ops::norm::rms_norm;
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

impl CudaBackend {
    /// `x · wᵀ (+ bias)` as a new bf16 tensor `[x.rows, w.rows]`.
    pub(crate) fn linear(
        &self,
        x: &CudaTensor,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
    ) -> Result<CudaTensor> {
        check_inner(x, w)?;
        if let Some(b) = bias {
            if b.len() != w.rows {
                return Err(KestrelError::Backend(format!(
                    "bias of {} for a weight of {} rows",
                    b.len(),
                    w.rows
                )));
            }
        }
        let dev = self.device();
        let mut y = self.tensor(x.rows, w.rows)?;
        if x.rows <= GEMV_MAX_TOKENS {
            let bias = bias.map(|b| &b.data as &dyn DevicePtr<f32>);
            gemv_bf16(
                dev,
                &x.data,
                &w.data,
                bias,
                w.cols,
                &mut y.data,
                Accumulate::Overwrite,
            )
            .map_err(be)?;
            return Ok(y);
        }
        let guard = self.blas()?;
        let blas = guard.as_ref().expect("created by blas()");
        match bias {
            None => gemm_bf16(dev, blas, &x.data, &w.data, w.cols, &mut y.data).map_err(be)?,
            Some(b) => {
                let mut acc = self.alloc::<f32>(x.rows * w.rows)?;
                gemm_bf16(dev, blas, &x.data, &w.data, w.cols, &mut acc).map_err(be)?;
                bias_add(dev, &acc, &b.data, &mut y.data).map_err(be)?;
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
            return gemv_bf16(
                self.device(),
                &x.data,
                &w.data,
                None,
                w.cols,
                &mut residual.data,
                Accumulate::AddToOutput,
            )
            .map_err(be);
        }
        let guard = self.blas()?;
        let blas = guard.as_ref().expect("created by blas()");
        gemm_bf16_accumulate(
            self.device(),
            blas,
            &x.data,
            &w.data,
            w.cols,
            &mut residual.data,
        )
        .map_err(be)
    }

    /// `rms_norm(x) · wᵀ (+ bias)`: one fused GEMV launch for a few tokens, a norm kernel and the
    /// GEMM for more.
    pub(crate) fn norm_linear(
        &self,
        x: &CudaTensor,
        norm: &CudaVector,
        eps: f32,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
    ) -> Result<CudaTensor> {
        check_inner(x, w)?;
        if !fuse_norm(x.rows, x.cols, w.rows) {
            let normed = self.rms_norm_plain(x, norm, eps)?;
            return self.linear(&normed, w, bias);
        }
        if let Some(b) = bias {
            if b.len() != w.rows {
                return Err(KestrelError::Backend(format!(
                    "bias of {} for a weight of {} rows",
                    b.len(),
                    w.rows
                )));
            }
        }
        let mut y = self.tensor(x.rows, w.rows)?;
        let gnorm = GemvNorm {
            weight: &norm.data,
            eps,
        };
        let bias = bias.map(|b| &b.data as &dyn DevicePtr<f32>);
        gemv_bf16_fused(
            self.device(),
            &x.data,
            Some(gnorm),
            &w.data,
            bias,
            w.cols,
            &mut y.data,
            Accumulate::Overwrite,
        )
        .map_err(be)?;
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
        if !fuse_norm(x.rows, x.cols, gate_up.rows) {
            let normed = self.rms_norm_plain(x, norm, eps)?;
            return self.gate_up_silu_impl(&normed, gate_up);
        }
        let inter = gate_up.rows / 2;
        let mut y = self.tensor(x.rows, inter)?;
        let gnorm = GemvNorm {
            weight: &norm.data,
            eps,
        };
        gemv_bf16_fused(
            self.device(),
            &x.data,
            Some(gnorm),
            &gate_up.data,
            None,
            gate_up.cols,
            &mut y.data,
            Accumulate::SwiGlu,
        )
        .map_err(be)?;
        Ok(y)
    }

    fn rms_norm_plain(&self, x: &CudaTensor, norm: &CudaVector, eps: f32) -> Result<CudaTensor> {
        let mut out = self.tensor(x.rows, x.cols)?;
        rms_norm(self.device(), &x.data, &norm.data, eps, &mut out.data).map_err(be)?;
        Ok(out)
    }

    /// `silu(x · gateᵀ) * (x · upᵀ)` over the merged gate/up weight.
    pub(crate) fn gate_up_silu_impl(
        &self,
        x: &CudaTensor,
        gate_up: &CudaMatrix,
    ) -> Result<CudaTensor> {
        if !gate_up.rows.is_multiple_of(2) {
            return Err(KestrelError::Backend(format!(
                "gate_up has {} rows, not gate and up of equal size",
                gate_up.rows
            )));
        }
        let inter = gate_up.rows / 2;
        if x.rows <= GEMV_MAX_TOKENS {
            check_inner(x, gate_up)?;
            let mut y = self.tensor(x.rows, inter)?;
            gemv_bf16_fused(
                self.device(),
                &x.data,
                None,
                &gate_up.data,
                None,
                gate_up.cols,
                &mut y.data,
                Accumulate::SwiGlu,
            )
            .map_err(be)?;
            return Ok(y);
        }
        let gu = self.linear(x, gate_up, None)?;
        let mut out = self.tensor(x.rows, inter)?;
        silu_mul(self.device(), &gu.data, inter, &mut out.data).map_err(be)?;
        Ok(out)
    }
}
