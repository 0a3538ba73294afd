//! One GPU: its context and stream, what it is, and the kernels loaded on it.
//!
//! Invariants:
//! - Opening never panics for want of a driver: cudarc opens libcuda lazily and panics when it is
//!   missing, so its presence is checked first and "no driver" / "no GPU" are `Ok(None)`.
//! - Each kernel file is compiled (or read from the disk cache) and loaded at most once per device;
//!   functions are looked up once and kept.
//! - All work goes to one non-default stream (graph capture needs one). cudarc's per-buffer event
//!   tracking (two events created per allocation, recorded and waited on at every use) only orders
//!   work across streams, so it is turned off: it costs host time on every op and its waits on
//!   events recorded outside a CUDA graph capture would break the capture.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DeviceRepr};
use cudarc::nvrtc::Ptx;

use crate::compile::{Arch, Compiler, Kernel, ALL_KERNELS};
use crate::{CudaError, Result};

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (u32, u32),
    total_memory: usize,
    arch: Arch,
    compiler: Mutex<Option<Arc<Compiler>>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    /// Kernels launched (or captured into a graph) on this device so far.
    launches: AtomicUsize,
    /// Whether kernels launch with programmatic dependent launch now (see `ops::launch_pdl`).
    pdl: AtomicBool,
    /// Whether they may: Hopper or later, and not turned off by `KESTREL_PDL=0`.
    pdl_allowed: bool,
    /// Nanoseconds the host spent blocked in [`Self::download`], waiting for queued work.
    waited_ns: AtomicU64,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("total_memory", &self.total_memory)
            .field("arch", &self.arch)
            .finish()
    }
}

/// Whether libcuda (the driver) can be opened at all.
pub fn driver_present() -> bool {
    // SAFETY: only opens the library (running its initialisers) to see that it is there.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of GPUs the driver sees: 0 with no driver or no device.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Ok(0);
    }
    match CudaContext::device_count() {
        Ok(n) => Ok(n.max(0) as usize),
        Err(e) if e.0 == CUresult::CUDA_ERROR_NO_DEVICE => Ok(0),
        Err(e) => Err(CudaError::driver("counting GPUs")(e)),
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`: `Ok(None)` when there is no driver or no GPU at all, an error when that
    /// GPU is not there or the driver fails. Kernels are built for the GPU's own architecture, or for
    /// `$KESTREL_CUDA_ARCH` (e.g. `sm_90a`) when set.
    pub fn open(ordinal: usize) -> Result<Option<CudaDevice>> {
        let count = device_count()?;
        if count == 0 {
            return Ok(None);
        }
        if ordinal >= count {
            return Err(CudaError::Shape {
                op: "CudaDevice::open",
                message: format!("GPU {ordinal} requested but the driver sees {count}"),
            });
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(CudaError::driver(format!("opening GPU {ordinal}")))?;
        // SAFETY: every buffer is used on the one stream created below, so stream order alone keeps
        // each use after its allocation and before its free.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(CudaError::driver("creating a stream"))?;
        let name = ctx.name().map_err(CudaError::driver("device name"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(CudaError::driver("compute capability"))?;
        let total_memory = ctx
            .total_mem()
            .map_err(CudaError::driver("device memory"))?;
        let arch = match std::env::var("KESTREL_CUDA_ARCH") {
            Ok(a) if !a.is_empty() => Arch::parse(&a)?,
            _ => Arch::from_compute_capability(major as u32, minor as u32),
        };
        Ok(Some(CudaDevice {
            ctx,
            stream,
            name,
            compute_capability: (major as u32, minor as u32),
            total_memory,
            arch,
            compiler: Mutex::new(None),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            launches: AtomicUsize::new(0),
            waited_ns: AtomicU64::new(0),
            pdl: AtomicBool::new(false),
            // Hopper and later; `KESTREL_PDL=0` turns it off (to measure what it brings)
            pdl_allowed: major >= 9 && std::env::var("KESTREL_PDL").map_or(true, |v| v != "0"),
        }))
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }
    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn compute_capability(&self) -> (u32, u32) {
        self.compute_capability
    }
    /// Total device memory in bytes.
    pub fn total_memory(&self) -> usize {
        self.total_memory
    }
    /// `(free, total)` device memory in bytes, now.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(CudaError::driver("device memory info"))
    }
    /// The architecture kernels are compiled for.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// Whether kernels launch with programmatic dependent launch now (off until [`Self::set_pdl`]).
    pub fn pdl(&self) -> bool {
        self.pdl.load(Ordering::Relaxed)
    }
    /// Turns programmatic dependent launch on or off for later launches: on only on sm_90+ and
    /// unless `KESTREL_PDL=0`. It pays where kernels are short (decode); it slowed prefill (measured),
    /// whose big kernels lose SM slots to the next kernel's early-launched, waiting blocks.
    pub fn set_pdl(&self, on: bool) {
        self.pdl.store(on && self.pdl_allowed, Ordering::Relaxed);
    }
    /// Kernels launched (or captured) so far: the launch wrappers and cuBLAS calls count themselves.
    pub fn launches(&self) -> usize {
        self.launches.load(Ordering::Relaxed)
    }
    pub(crate) fn count_launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }
    /// Copies `src` to the host once the work queued before it is done, counting the time the host
    /// spent blocked (see [`Self::waited_seconds`]). `what` names the data in the error.
    pub fn download<T: DeviceRepr, S: DevicePtr<T>>(&self, src: &S, what: &str) -> Result<Vec<T>> {
        let start = std::time::Instant::now();
        let out = self
            .stream
            .clone_dtoh(src)
            .map_err(CudaError::driver(format!("copying {what} to the host")));
        self.count_wait(start.elapsed());
        out
    }
    /// Adds time the host spent blocked on the device (a download, an asynchronous copy's wait).
    pub(crate) fn count_wait(&self, d: std::time::Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        self.waited_ns.fetch_add(ns, Ordering::Relaxed);
    }
    /// Seconds the host has spent blocked in downloads so far. Every step of the engine ends in one
    /// (its tokens or logits), so a step's wall time minus this is the host's own work while the GPU
    /// waits for it (scheduling, metadata, launches): `kestrel bench --throughput` reports it.
    pub fn waited_seconds(&self) -> f64 {
        self.waited_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }
    /// Hands the stream-ordered pool's unused memory back to the driver, so that free memory can be
    /// measured (memory freed while loading may still sit in the pool).
    pub fn trim_memory_pool(&self) -> Result<()> {
        self.synchronize()?;
        // SAFETY: the context's device, and its own default pool.
        unsafe {
            let pool = cudarc::driver::result::device::get_default_mem_pool(self.ctx.cu_device())
                .map_err(CudaError::driver("the device's memory pool"))?;
            cudarc::driver::result::mem_pool::trim_to(pool, 0)
                .map_err(CudaError::driver("trimming the memory pool"))
        }
    }
    /// Waits for all work queued on the device's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(CudaError::driver("synchronizing the stream"))
    }

    fn compiler(&self) -> Result<Arc<Compiler>> {
        let mut c = self.compiler.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let new = Arc::new(Compiler::new()?);
        *c = Some(new.clone());
        Ok(new)
    }

    fn module(&self, kernel: &Kernel) -> Result<Arc<CudaModule>> {
        if let Some(m) = self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kernel.file)
        {
            return Ok(m.clone());
        }
        // compiled outside the lock, so files compile in parallel (load_all_kernels); a file two
        // threads compile at once is loaded twice and one copy kept
        let cubin = self.compiler()?.compile(kernel, &self.arch)?;
        let module = self
            .ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(CudaError::driver(format!(
                "loading kernels/{} ({})",
                kernel.file, self.arch
            )))?;
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        Ok(modules.entry(kernel.file).or_insert(module).clone())
    }

    /// Compiles (or reads from the disk cache) and loads every kernel file, one thread per file.
    /// Callers run it beside model loading, so a first run pays NVRTC up front on idle cores rather
    /// than in the middle of the first step that needs each file (which also made a fresh machine's
    /// first benchmark run read low: bench.py 10,981 vs 14,022 output tok/s on H100 at 48be858).
    pub fn load_all_kernels(&self) -> Result<()> {
        std::thread::scope(|s| {
            let threads: Vec<_> = ALL_KERNELS
                .iter()
                .map(|k| s.spawn(move || self.module(k).map(|_| ())))
                .collect();
            threads.into_iter().try_for_each(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(CudaError::Nvrtc("a kernel compile thread panicked".into()))
                })
            })
        })
    }

    /// The `extern "C"` function `name` of `kernel`, compiling and loading the file on first use.
    pub fn function(&self, kernel: &Kernel, name: &'static str) -> Result<CudaFunction> {
        let key = (kernel.file, name);
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let f = self
            .module(kernel)?
            .load_function(name)
            .map_err(CudaError::driver(format!(
                "kernels/{}: function {name}",
                kernel.file
            )))?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, f.clone());
        Ok(f)
    }
}
