//! NVRTC: compiles `kernels/*.cu` (embedded in the binary) to CUBIN for one GPU architecture at run
//! time, and caches the result on disk.
//!
//! Invariants:
//! - Kernels are compiled without `--use_fast_math` (the numerics contract: accurate `expf`, `sincosf`,
//!   IEEE division and square roots), as C++17, with the CUDA headers (cuda_bf16.h ...) on the include
//!   path and the shared headers (kernels/*.cuh, listed in HEADERS) given to NVRTC in memory.
//! - A cache entry's name is the SHA-256 of everything that decides its bytes: the kernel source, the
//!   shared headers, the architecture, the options (include path included) and NVRTC's version. Entries
//!   are written to a temporary file and renamed, so a reader never sees half an entry.
//! - Only real architectures (`sm_XY`, `sm_XYa`) are accepted: NVRTC then emits CUBIN, which loads with
//!   no JIT step and no PTX-version mismatch with the driver.

use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::sys;
use sha2::{Digest, Sha256};

use crate::{CudaError, Result};

/// One kernel source file.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// The file name under `kernels/`, used in errors and cache names.
    pub file: &'static str,
    pub source: &'static str,
}

macro_rules! kernel {
    ($file:literal) => {
        Kernel {
            file: $file,
            source: include_str!(concat!("../kernels/", $file)),
        }
    };
}

pub const EMBEDDING: Kernel = kernel!("embedding.cu");
pub const RMS_NORM: Kernel = kernel!("rms_norm.cu");
pub const QK_NORM_ROPE_KV: Kernel = kernel!("qk_norm_rope_kv.cu");
pub const SILU_MUL: Kernel = kernel!("silu_mul.cu");
pub const GEMV_BF16: Kernel = kernel!("gemv_bf16.cu");
pub const GEMV_TILED: Kernel = kernel!("gemv_tiled.cu");
pub const GEMV_QUANT: Kernel = kernel!("gemv_quant.cu");
pub const DEQUANT: Kernel = kernel!("dequant.cu");
pub const GEMV_DP4A: Kernel = kernel!("gemv_dp4a.cu");
pub const GEMV_MMA: Kernel = kernel!("gemv_mma.cu");
pub const ATTENTION_DECODE: Kernel = kernel!("attention_decode.cu");
pub const ATTENTION_DECODE_QK: Kernel = kernel!("attention_decode_qk.cu");
pub const ATTENTION_DECODE_MMA: Kernel = kernel!("attention_decode_mma.cu");
pub const ATTENTION_PREFILL: Kernel = kernel!("attention_prefill.cu");
pub const ATTENTION_PREFILL_MMA: Kernel = kernel!("attention_prefill_mma.cu");
pub const ARGMAX: Kernel = kernel!("argmax.cu");
pub const ELEMENTWISE: Kernel = kernel!("elementwise.cu");
pub const SAMPLING: Kernel = kernel!("sampling.cu");

/// Every kernel file; the NVRTC test compiles each for sm_80 and sm_90.
pub const ALL_KERNELS: &[Kernel] = &[
    EMBEDDING,
    RMS_NORM,
    QK_NORM_ROPE_KV,
    SILU_MUL,
    GEMV_BF16,
    GEMV_TILED,
    GEMV_QUANT,
    DEQUANT,
    GEMV_DP4A,
    GEMV_MMA,
    ARGMAX,
    SAMPLING,
    ELEMENTWISE,
    ATTENTION_DECODE,
    ATTENTION_DECODE_QK,
    ATTENTION_DECODE_MMA,
    ATTENTION_PREFILL,
    ATTENTION_PREFILL_MMA,
];

/// Headers every kernel may include: (name, built-in source).
pub(crate) const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("gemv_tiled.cuh", include_str!("../kernels/gemv_tiled.cuh")),
    (
        "quant_formats.cuh",
        include_str!("../kernels/quant_formats.cuh"),
    ),
    (
        "quant_kformats.cuh",
        include_str!("../kernels/quant_kformats.cuh"),
    ),
    (
        "attention_decode.cuh",
        include_str!("../kernels/attention_decode.cuh"),
    ),
    (
        "attention_decode_kv.cuh",
        include_str!("../kernels/attention_decode_kv.cuh"),
    ),
    (
        "attention_decode_merge.cuh",
        include_str!("../kernels/attention_decode_merge.cuh"),
    ),
    ("gemv_mma.cuh", include_str!("../kernels/gemv_mma.cuh")),
    ("mma_bf16.cuh", include_str!("../kernels/mma_bf16.cuh")),
    (
        "attention_prefill.cuh",
        include_str!("../kernels/attention_prefill.cuh"),
    ),
    ("sampling.cuh", include_str!("../kernels/sampling.cuh")),
    (
        "sampling_flat.cuh",
        include_str!("../kernels/sampling_flat.cuh"),
    ),
];

/// Developers: with `KESTREL_KERNEL_DIR=dir`, `dir/<file>` (where it exists) is compiled instead of the
/// source built into the binary, so a kernel variant can be timed against the built-in one in the
/// same GPU session without rebuilding. The disk cache is keyed by the source either way.
fn source_of(file: &str, built_in: &'static str) -> std::borrow::Cow<'static, str> {
    if let Some(dir) = std::env::var_os("KESTREL_KERNEL_DIR") {
        if let Ok(text) = std::fs::read_to_string(Path::new(&dir).join(file)) {
            return text.into();
        }
    }
    built_in.into()
}

impl Kernel {
    /// This kernel's source as it will be compiled (see [`source_of`]).
    pub fn effective_source(&self) -> std::borrow::Cow<'static, str> {
        source_of(self.file, self.source)
    }
}

/// Each shared header's source as it will be compiled.
fn headers() -> Vec<(&'static str, std::borrow::Cow<'static, str>)> {
    HEADERS
        .iter()
        .map(|&(name, built_in)| (name, source_of(name, built_in)))
        .collect()
}

/// A real GPU architecture such as `sm_80`, `sm_90` or `sm_90a`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Arch(String);

impl Arch {
    pub fn parse(s: &str) -> Result<Arch> {
        let digits = s
            .strip_prefix("sm_")
            .map(|r| r.strip_suffix('a').unwrap_or(r));
        match digits {
            Some(d) if (2..=3).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Arch(s.to_string()))
            }
            _ => Err(CudaError::BadArch(s.to_string())),
        }
    }
    /// The architecture of a GPU of compute capability `major.minor` (plain, not the `a` variant).
    pub fn from_compute_capability(major: u32, minor: u32) -> Arch {
        Arch(format!("sm_{major}{minor}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// NVRTC plus the CUDA headers, found once.
#[derive(Debug)]
pub struct Compiler {
    include_dir: PathBuf,
    nvrtc_version: (i32, i32),
    cache_dir: Option<PathBuf>,
}

impl Compiler {
    /// Loads NVRTC and finds the CUDA headers; caches under [`default_cache_dir`].
    pub fn new() -> Result<Compiler> {
        Compiler::with_cache_dir(default_cache_dir())
    }

    /// As [`Compiler::new`], caching under `cache_dir` (`None`: no disk cache).
    pub fn with_cache_dir(cache_dir: Option<PathBuf>) -> Result<Compiler> {
        load_nvrtc()?;
        let include_dir = find_cuda_include()?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: libnvrtc is loaded (checked above); both out-pointers are valid.
        check(
            unsafe { sys::nvrtcVersion(&mut major, &mut minor) },
            "nvrtcVersion",
        )?;
        Ok(Compiler {
            include_dir,
            nvrtc_version: (major, minor),
            cache_dir,
        })
    }

    pub fn nvrtc_version(&self) -> (i32, i32) {
        self.nvrtc_version
    }
    pub fn include_dir(&self) -> &Path {
        &self.include_dir
    }

    fn options(&self, arch: &Arch) -> Vec<String> {
        vec![
            format!("--gpu-architecture={arch}"),
            "-std=c++17".to_string(),
            "--generate-line-info".to_string(),
            format!("--include-path={}", self.include_dir.display()),
        ]
    }

    /// The CUBIN of `kernel` for `arch`, from the disk cache when it is there.
    pub fn compile(&self, kernel: &Kernel, arch: &Arch) -> Result<Vec<u8>> {
        let options = self.options(arch);
        let Some(dir) = &self.cache_dir else {
            return compile_cubin(kernel, &options);
        };
        let path = dir.join(self.cache_name(kernel, arch, &options));
        if let Ok(bytes) = std::fs::read(&path) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
        let cubin = compile_cubin(kernel, &options)?;
        write_atomically(dir, &path, &cubin)?;
        Ok(cubin)
    }

    /// Compiles without looking at the disk cache (the NVRTC test uses this).
    pub fn compile_uncached(&self, kernel: &Kernel, arch: &Arch) -> Result<Vec<u8>> {
        compile_cubin(kernel, &self.options(arch))
    }

    /// `<kernel stem>-<arch>-<sha256 prefix>.cubin`
    pub fn cache_name(&self, kernel: &Kernel, arch: &Arch, options: &[String]) -> String {
        let mut h = Sha256::new();
        let (source, headers) = (kernel.effective_source(), headers());
        let parts = std::iter::once(&*source)
            .chain(headers.iter().map(|(_, h)| &**h))
            .chain(std::iter::once(arch.as_str()));
        for part in parts {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for o in options {
            h.update((o.len() as u64).to_le_bytes());
            h.update(o.as_bytes());
        }
        h.update(self.nvrtc_version.0.to_le_bytes());
        h.update(self.nvrtc_version.1.to_le_bytes());
        let digest = h.finalize();
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let stem = kernel.file.trim_end_matches(".cu");
        format!("{stem}-{arch}-{hex}.cubin")
    }
}

/// `$KESTREL_CACHE/kernels`, else `~/.cache/kestrel/kernels`; `None` when neither can be named.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("KESTREL_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache/kestrel"),
    };
    Some(base.join("kernels"))
}

/// The first of `$KESTREL_CUDA_INCLUDE`, `$CUDA_PATH/include`, `$CUDA_HOME/include` and
/// `/usr/local/cuda/include` that holds `cuda_bf16.h`. (scripts/ci-nvrtc.sh sets KESTREL_CUDA_INCLUDE
/// to the `nvidia-cuda-runtime` wheel's headers on machines without a toolkit.)
pub fn find_cuda_include() -> Result<PathBuf> {
    let mut searched = Vec::new();
    if let Some(d) = std::env::var_os("KESTREL_CUDA_INCLUDE") {
        searched.push(PathBuf::from(d));
    }
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(d) = std::env::var_os(var) {
            searched.push(PathBuf::from(d).join("include"));
        }
    }
    searched.push(PathBuf::from("/usr/local/cuda/include"));
    match searched.iter().find(|d| d.join("cuda_bf16.h").is_file()) {
        Some(d) => Ok(d.clone()),
        None => Err(CudaError::NoCudaHeaders { searched }),
    }
}

/// Makes sure libnvrtc can be used. cudarc opens it by name (`libnvrtc.so.13` ...), so it must be on
/// the loader's path; failing that, a toolkit's copy is opened by full path first, which the later
/// by-name open then finds already loaded (its soname matches). Never panics, unlike a cudarc call
/// made without the library.
pub fn load_nvrtc() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let r = LOADED.get_or_init(|| {
        // SAFETY: opening NVRTC runs only its (side-effect free) initialisers.
        if unsafe { sys::is_culib_present() } {
            return Ok(());
        }
        let mut dirs = Vec::new();
        for var in ["CUDA_PATH", "CUDA_HOME"] {
            if let Some(d) = std::env::var_os(var) {
                dirs.push(PathBuf::from(d).join("lib64"));
            }
        }
        dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
        dirs.push(PathBuf::from("/usr/local/cuda/targets/x86_64-linux/lib"));
        for dir in &dirs {
            // The builtins library first: libnvrtc opens it by name too.
            for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
                // SAFETY: as above; the library stays loaded for the life of the process.
                if let Ok(lib) = unsafe { libloading::Library::new(dir.join(name)) } {
                    std::mem::forget(lib);
                }
            }
            if unsafe { sys::is_culib_present() } {
                return Ok(());
            }
        }
        Err(format!(
            "libnvrtc.so.13 not found on the library path nor in {dirs:?}; install a CUDA 13 toolkit, \
             or run `eval \"$(bash scripts/ci-nvrtc.sh)\"` (the nvidia-cuda-nvrtc wheel)"
        ))
    });
    r.clone().map_err(CudaError::NvrtcMissing)
}

fn check(r: sys::nvrtcResult, call: &str) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    // SAFETY: nvrtcGetErrorString returns a static string for every result code.
    let msg = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(r)) };
    Err(CudaError::Nvrtc(format!(
        "{call}: {}",
        msg.to_string_lossy()
    )))
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

fn compile_cubin(kernel: &Kernel, options: &[String]) -> Result<Vec<u8>> {
    load_nvrtc()?;
    let cstr = |s: &str| CString::new(s).map_err(|_| CudaError::Nvrtc(format!("NUL in {s:?}")));
    let src = cstr(&kernel.effective_source())?;
    let name = cstr(kernel.file)?;
    let header_list = headers();
    let header_srcs = header_list
        .iter()
        .map(|(_, h)| cstr(h))
        .collect::<Result<Vec<_>>>()?;
    let header_names = header_list
        .iter()
        .map(|(n, _)| cstr(n))
        .collect::<Result<Vec<_>>>()?;
    let headers: Vec<*const c_char> = header_srcs.iter().map(|h| h.as_ptr()).collect();
    let include_names: Vec<*const c_char> = header_names.iter().map(|n| n.as_ptr()).collect();
    let mut prog = Program(std::ptr::null_mut());
    // SAFETY: every pointer refers to a live NUL-terminated string for the duration of the call.
    check(
        unsafe {
            sys::nvrtcCreateProgram(
                &mut prog.0,
                src.as_ptr(),
                name.as_ptr(),
                headers.len() as c_int,
                headers.as_ptr(),
                include_names.as_ptr(),
            )
        },
        "nvrtcCreateProgram",
    )?;
    let opts = options
        .iter()
        .map(|o| cstr(o))
        .collect::<Result<Vec<CString>>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `prog` is valid; the option strings outlive the call.
    let r = unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Compile {
            kernel: kernel.file.to_string(),
            options: options.join(" "),
            log: program_log(&prog),
        });
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; the buffer has the size NVRTC reported.
    check(
        unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) },
        "nvrtcGetCUBINSize",
    )?;
    let mut cubin = vec![0u8; size];
    check(
        unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast()) },
        "nvrtcGetCUBIN",
    )?;
    if cubin.is_empty() {
        return Err(CudaError::Nvrtc(format!(
            "{}: NVRTC produced no CUBIN (options: {})",
            kernel.file,
            options.join(" ")
        )));
    }
    Ok(cubin)
}

fn program_log(prog: &Program) -> String {
    let mut size = 0usize;
    // SAFETY: `prog` is valid; the buffer has the size NVRTC reported.
    if unsafe { sys::nvrtcGetProgramLogSize(prog.0, &mut size) } != sys::nvrtcResult::NVRTC_SUCCESS
    {
        return "(NVRTC gave no log)".to_string();
    }
    let mut log = vec![0u8; size.max(1)];
    unsafe { sys::nvrtcGetProgramLog(prog.0, log.as_mut_ptr().cast()) };
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    String::from_utf8_lossy(&log[..end]).trim_end().to_string()
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| CudaError::Cache {
        path: path.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        for ok in ["sm_80", "sm_90", "sm_90a", "sm_100", "sm_120a"] {
            assert_eq!(Arch::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "80",
            "sm_8",
            "compute_90",
            "sm_9x",
            "sm_90 --foo",
            "sm_1000",
        ] {
            assert!(Arch::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Arch::from_compute_capability(8, 9).as_str(), "sm_89");
    }

    #[test]
    fn every_kernel_is_listed_once_and_small() {
        let mut files: Vec<_> = ALL_KERNELS.iter().map(|k| k.file).collect();
        files.sort();
        files.dedup();
        assert_eq!(files.len(), ALL_KERNELS.len());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cu"))
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, files, "kernels/*.cu and ALL_KERNELS differ");
        let sources = ALL_KERNELS.iter().map(|k| (k.file, k.source));
        for (file, source) in sources.chain(HEADERS.iter().copied()) {
            assert!(source.lines().count() < 300, "{file} is over 300 lines");
        }
    }
}
