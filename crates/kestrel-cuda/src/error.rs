use std::path::PathBuf;

use cudarc::driver::DriverError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("NVRTC is not available: {0}")]
    NvrtcMissing(String),
    #[error("CUDA headers (cuda_bf16.h) not found in {searched:?}; set KESTREL_CUDA_INCLUDE or CUDA_PATH")]
    NoCudaHeaders { searched: Vec<PathBuf> },
    #[error("NVRTC failed to compile kernels/{kernel} (options: {options}):\n{log}")]
    Compile {
        kernel: String,
        options: String,
        log: String,
    },
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    #[error("not a GPU architecture: {0:?} (expected sm_XY or sm_XYa, e.g. sm_90)")]
    BadArch(String),
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CUDA driver: {context}: {source}")]
    Driver {
        context: String,
        source: DriverError,
    },
    #[error("kernel {kernel}: {source}")]
    Launch {
        kernel: &'static str,
        source: DriverError,
    },
    #[error("cuBLAS: {context}: {message}")]
    Cublas { context: String, message: String },
    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },
}

pub type Result<T, E = CudaError> = std::result::Result<T, E>;

impl CudaError {
    pub(crate) fn driver(context: impl Into<String>) -> impl FnOnce(DriverError) -> CudaError {
        let context = context.into();
        move |source| CudaError::Driver { context, source }
    }
}
