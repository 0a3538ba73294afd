//! The memory bandwidth a GPU actually reaches: a device-to-device copy, timed with CUDA events.
//! Benchmarks report their bytes per second as a fraction of it (DESIGN.md, "Performance method").

use cudarc::driver::sys::CUevent_flags;

use crate::{CudaDevice, CudaError, Result};

/// Bytes copied per repetition: far larger than any L2, so the copy streams from HBM.
const COPY_BYTES: usize = 1 << 30;
const REPETITIONS: usize = 5;

/// Device-to-device copy bandwidth in bytes per second, counting bytes read plus bytes written
/// (a 1 GiB copy moves 2 GiB), best of a few timed copies after one warm-up copy.
pub fn measure_copy_bandwidth(dev: &CudaDevice) -> Result<f64> {
    let s = dev.stream();
    let alloc = CudaError::driver("allocating the bandwidth test's buffers");
    let src = s.alloc_zeros::<u8>(COPY_BYTES).map_err(alloc)?;
    let mut dst = s
        .alloc_zeros::<u8>(COPY_BYTES)
        .map_err(CudaError::driver("allocating the bandwidth test's buffers"))?;
    let copy_err = || CudaError::driver("device-to-device copy");
    s.memcpy_dtod(&src, &mut dst).map_err(copy_err())?;
    let event = || {
        dev.context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(CudaError::driver("creating a timing event"))
    };
    let (start, end) = (event()?, event()?);
    let mut best = f64::INFINITY;
    for _ in 0..REPETITIONS {
        start
            .record(s)
            .map_err(CudaError::driver("recording an event"))?;
        s.memcpy_dtod(&src, &mut dst).map_err(copy_err())?;
        end.record(s)
            .map_err(CudaError::driver("recording an event"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(CudaError::driver("reading an event's time"))?;
        best = best.min(ms as f64 * 1e-3);
    }
    Ok(2.0 * COPY_BYTES as f64 / best)
}
