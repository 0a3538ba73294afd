//! The prefill matmul of gemm.rs through cuBLASLt, with the algorithm named: cuBLAS's heuristic picks
//! one algorithm per shape, and for the few-hundred-row matmuls of batched decode steps (a 1024 x
//! 2048 o_proj at 256 tokens is 16 tiles of 128 x 128 on 132 SMs) its pick can be far from the
//! fastest of the candidates it lists (different tiles, split-K). [`LtMatmul::candidates`] lists them;
//! a caller times them and runs the one it chose with [`LtMatmul::run`]. Only the benchmark
//! (tests/gpu_gemm_bench.rs) does so far: on H200 the best listed algorithm saved 2% of a 0.6B
//! layer's matmuls over cuBLAS's pick, too little to tune at run time.
//!
//! Same layout as gemm.rs: row-major `y[t, n] = sum_k x[t, k] w[n, k]` is, column-major, `yᵀ = w ·
//! xᵀ` with `w` read transposed: m = out_features, n = tokens, k = in_features, ldc = y's width.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::gemm::GemmOutput;
use crate::dtype::Bf16;
use crate::{CudaDevice, CudaError, Result};

fn lt_error(
    context: impl Into<String>,
) -> impl FnOnce(cudarc::cublaslt::result::CublasError) -> CudaError {
    let context = context.into();
    move |e| CudaError::Cublas {
        context,
        message: format!("{e:?}"),
    }
}

/// A cuBLASLt handle. Errors (never panics) when libcublasLt is missing.
pub struct LtHandle(sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle may be used from any thread (one at a time: callers hold it behind a
// lock or on one thread).
unsafe impl Send for LtHandle {}
unsafe impl Sync for LtHandle {}

impl LtHandle {
    pub fn new() -> Result<Self> {
        // SAFETY: only opens the library to see that it is there.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Cublas {
                context: "loading libcublasLt".into(),
                message: "libcublasLt.so (CUDA 13) not found on the library path".into(),
            });
        }
        lt::create_handle()
            .map(LtHandle)
            .map_err(lt_error("creating a cuBLASLt handle"))
    }
}

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

/// One of cuBLASLt's algorithms for an [`LtMatmul`], with what it says of itself.
#[derive(Clone, Copy, Debug)]
pub struct LtAlgo {
    algo: sys::cublasLtMatmulAlgo_t,
    /// Workspace bytes it needs.
    pub workspace: usize,
    /// cuBLASLt's algorithm id, tile id and split-K factor (for reports).
    pub id: i32,
    pub tile: u32,
    pub split_k: u32,
    /// Waves of CTAs over the GPU, as cuBLASLt estimates them.
    pub waves: f32,
}

/// A matmul shape's cuBLASLt descriptors: `y = bf16|f32(beta * y + x · wᵀ)` for `tokens` rows of
/// `in_features` against `out_features` weight rows, into `width`-wide rows of y.
pub struct LtMatmul {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    out: sys::cudaDataType,
    pub out_features: usize,
    pub tokens: usize,
    pub in_features: usize,
    pub width: usize,
}

// SAFETY: the descriptors are plain host objects, read-only once made.
unsafe impl Send for LtMatmul {}
unsafe impl Sync for LtMatmul {}

impl LtMatmul {
    /// The descriptors for an output of type `T`.
    pub fn new<T: GemmOutput>(
        out_features: usize,
        tokens: usize,
        in_features: usize,
        width: usize,
    ) -> Result<Self> {
        let ctx =
            format!("cuBLASLt matmul ({tokens} x {in_features} by {out_features} x {in_features})");
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(lt_error(ctx.clone()))?;
        let transpose = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T as i32;
        // SAFETY: the attribute is an i32 cublasOperation_t, passed with its size.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&transpose as *const i32).cast(),
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(lt_error(ctx.clone()))?;
        let (m, n, k) = (out_features as u64, tokens as u64, in_features as u64);
        let bf16 = sys::cudaDataType::CUDA_R_16BF;
        // w as stored: k x m column-major (read transposed); x: k x n; y: m x n, leading dim width
        let a = lt::create_matrix_layout(bf16, k, m, k as i64).map_err(lt_error(ctx.clone()))?;
        let b = lt::create_matrix_layout(bf16, k, n, k as i64).map_err(lt_error(ctx.clone()))?;
        let out = lt_output_type::<T>();
        let c = lt::create_matrix_layout(out, m, n, width as i64).map_err(lt_error(ctx))?;
        Ok(LtMatmul {
            desc,
            a,
            b,
            c,
            out,
            out_features,
            tokens,
            in_features,
            width,
        })
    }

    /// Up to `max` algorithms cuBLASLt lists for this shape within `workspace` bytes, its own pick
    /// first.
    pub fn candidates(
        &self,
        handle: &LtHandle,
        workspace: usize,
        max: usize,
    ) -> Result<Vec<LtAlgo>> {
        let ctx = "listing cuBLASLt algorithms";
        let pref = lt::create_matmul_pref().map_err(lt_error(ctx))?;
        let bytes = workspace as u64;
        let mut results: Vec<MaybeUninit<sys::cublasLtMatmulHeuristicResult_t>> =
            (0..max).map(|_| MaybeUninit::uninit()).collect();
        let mut count = 0i32;
        // SAFETY: pref is live until destroyed below; results holds max entries, of which cuBLASLt
        // writes `count`.
        let status = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&bytes as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
            .and_then(|()| {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    handle.0,
                    self.desc,
                    self.a,
                    self.b,
                    self.c,
                    self.c,
                    pref,
                    max as i32,
                    results.as_mut_ptr().cast(),
                    &mut count,
                )
                .result()
            })
        };
        // SAFETY: made above, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        status.map_err(lt_error(ctx))?;
        let mut algos = Vec::new();
        for r in results.iter().take(count.max(0) as usize) {
            // SAFETY: the first `count` entries were written by cuBLASLt.
            let r = unsafe { r.assume_init() };
            if r.state != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                continue;
            }
            algos.push(LtAlgo {
                algo: r.algo,
                workspace: r.workspaceSize,
                id: config_attr(
                    &r.algo,
                    sys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_ID,
                ) as i32,
                tile: config_attr(
                    &r.algo,
                    sys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_TILE_ID,
                ),
                split_k: config_attr(
                    &r.algo,
                    sys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
                ),
                waves: r.wavesCount,
            });
        }
        Ok(algos)
    }

    /// `y = beta * y + x · wᵀ` through `algo` (one of [`Self::candidates`]), on `dev`'s stream;
    /// `workspace` holds at least `algo.workspace` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: GemmOutput>(
        &self,
        dev: &CudaDevice,
        handle: &LtHandle,
        algo: &LtAlgo,
        x: &impl DevicePtr<Bf16>,
        w: &impl DevicePtr<Bf16>,
        y: &mut impl DevicePtrMut<T>,
        beta: f32,
        workspace: &mut impl DevicePtrMut<u8>,
    ) -> Result<()> {
        const OP: &str = "gemm_lt";
        let shape = |what: &str, got: usize, want: usize| {
            if got < want {
                Err(super::shape_error(
                    OP,
                    format!("{what} has {got} elements, needs {want}"),
                ))
            } else {
                Ok(())
            }
        };
        shape("x", x.len(), self.tokens * self.in_features)?;
        shape("w", w.len(), self.out_features * self.in_features)?;
        shape(
            "y",
            y.len(),
            (self.tokens.max(1) - 1) * self.width + self.out_features,
        )?;
        shape("workspace", workspace.len(), algo.workspace)?;
        if lt_output_type::<T>() != self.out {
            return Err(super::shape_error(
                OP,
                "output type differs from the descriptor's",
            ));
        }
        let s = dev.stream();
        let (wp, _gw) = w.device_ptr(s);
        let (xp, _gx) = x.device_ptr(s);
        let (yp, _gy) = y.device_ptr_mut(s);
        let (sp, _gs) = workspace.device_ptr_mut(s);
        let alpha = 1.0f32;
        // SAFETY: the lengths checked above bound every access; alpha and beta are f32 as the
        // descriptor's scale type says; the algorithm was listed for these descriptors.
        unsafe {
            lt::matmul(
                handle.0,
                self.desc,
                (&alpha as *const f32).cast::<c_void>(),
                (&beta as *const f32).cast::<c_void>(),
                wp as *const c_void,
                self.a,
                xp as *const c_void,
                self.b,
                yp as *const c_void,
                self.c,
                yp as *mut c_void,
                self.c,
                &algo.algo,
                sp as *mut c_void,
                algo.workspace,
                s.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(lt_error(format!(
            "{OP} ({} x {} by {} x {})",
            self.tokens, self.in_features, self.out_features, self.in_features
        )))?;
        dev.count_launch();
        Ok(())
    }
}

impl Drop for LtMatmul {
    fn drop(&mut self) {
        // SAFETY: made in new, destroyed once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

fn lt_output_type<T: GemmOutput>() -> sys::cudaDataType {
    match T::DATA_TYPE {
        cudarc::cublas::sys::cudaDataType::CUDA_R_32F => sys::cudaDataType::CUDA_R_32F,
        _ => sys::cudaDataType::CUDA_R_16BF,
    }
}

/// One u32-sized attribute of an algorithm's configuration (0 if cuBLASLt does not say).
fn config_attr(
    algo: &sys::cublasLtMatmulAlgo_t,
    attr: sys::cublasLtMatmulAlgoConfigAttributes_t,
) -> u32 {
    let mut v = 0u32;
    let mut written = 0usize;
    // SAFETY: reads at most 4 bytes into v.
    let _ = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            attr,
            (&mut v as *mut u32).cast(),
            4,
            &mut written,
        )
    };
    v
}
