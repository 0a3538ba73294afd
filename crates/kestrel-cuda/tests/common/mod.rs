//! What the GPU test files share: opening the GPU (or skipping), and finding testdata/.
//! Each test target compiles this module on its own and uses part of it.
#![allow(dead_code)]

pub mod model_run;

use std::fmt::Display;
use std::path::PathBuf;

/// Non-trivial bf16 values for the benchmarks (small, so sums stay finite) without a slow host RNG.
pub fn bench_pattern(n: usize, seed: u32) -> Vec<kestrel_cuda::Bf16> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            kestrel_cuda::Bf16::from_f32(((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.05)
        })
        .collect()
}

/// Seconds of GPU time from before to after what `work` queues on `dev`'s stream (CUDA events).
pub fn gpu_seconds(dev: &kestrel_cuda::CudaDevice, work: impl FnOnce()) -> f64 {
    use kestrel_cuda::cudarc::driver::sys::CUevent_flags;
    let ctx = dev.context();
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .expect("a CUDA event")
    };
    let (start, end) = (event(), event());
    start.record(dev.stream()).expect("recording an event");
    work();
    end.record(dev.stream()).expect("recording an event");
    start.elapsed_ms(&end).expect("event timing") as f64 * 1e-3
}

/// `x · w` in f64, and the sum of the products' magnitudes (what bounds an f32 sum's rounding error).
pub fn dot_f64(x: &[f32], w: &[f32]) -> (f64, f64) {
    x.iter().zip(w).fold((0.0, 0.0), |(dot, abs), (&a, &b)| {
        let p = a as f64 * b as f64;
        (dot + p, abs + p.abs())
    })
}

/// The outcome of opening GPU 0 as a test wants it: `Some` when there is one; `None` (with a line
/// saying the test skips) when there is none, unless KESTREL_REQUIRE_GPU=1 makes that a failure.
pub fn open_or_skip<T, E: Display>(opened: Result<Option<T>, E>) -> Option<T> {
    let require = std::env::var("KESTREL_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match opened {
        Ok(Some(t)) => Some(t),
        Ok(None) if require => panic!("KESTREL_REQUIRE_GPU=1 but no GPU was found"),
        Err(e) if require => panic!("KESTREL_REQUIRE_GPU=1 but the GPU failed to open: {e}"),
        Ok(None) => {
            eprintln!("skipping: no GPU (KESTREL_REQUIRE_GPU=1 makes this a failure)");
            None
        }
        Err(e) => {
            eprintln!("skipping: the GPU failed to open: {e}");
            None
        }
    }
}

/// `testdata/` of the checkout: $KESTREL_TESTDATA, the source tree this was built from, or
/// `./testdata` (a bundled test run from the root of a copied checkout).
pub fn testdata(rel: &str) -> PathBuf {
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata"));
    let base = match std::env::var_os("KESTREL_TESTDATA") {
        Some(d) => PathBuf::from(d),
        None if built.is_dir() => built,
        None => PathBuf::from("testdata"),
    };
    base.join(rel)
}

/// splitmix64 seeded per run (fresh inputs each time), printed so `KESTREL_TEST_SEED=<seed>` repeats
/// a failing run. Test files add their own value distributions on top of `next_u64`.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = match std::env::var("KESTREL_TEST_SEED") {
            Ok(s) => s.parse().expect("KESTREL_TEST_SEED must be a u64"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("{test}: KESTREL_TEST_SEED={seed}");
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in `lo ..= hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}
