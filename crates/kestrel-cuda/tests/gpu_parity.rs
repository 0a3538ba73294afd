//! DESIGN.md's parity criterion at full size on the GPU: the CUDA backend against HF transformers
//! fp32 logits (teacher-forced prefill and decode, batch of 1 and a mixed batch) and greedy tokens,
//! with HF's own bf16 run as the bar. `KESTREL_PARITY_DIR` names a directory made by
//! `scripts/make_full_size_reference.py` (`scripts/gpu-parity.sh` makes them and runs this).
//!
//! Skips (with a message) when `KESTREL_PARITY_DIR` is unset, even with `KESTREL_REQUIRE_GPU=1`: the
//! bundled test run executes every test, and only gpu-parity.sh has made a reference. With the variable
//! set, a missing GPU is a failure.

use std::path::PathBuf;
use std::time::Instant;

use kestrel::backend::Backend;
use kestrel::formats::source::ModelSource;
use kestrel::model::Qwen3Model;
use kestrel::parity::run_parity;
use kestrel_cuda::backend::CudaBackend;

#[test]
fn cuda_meets_parity_criterion() {
    let Some(dir) = std::env::var_os("KESTREL_PARITY_DIR").map(PathBuf::from) else {
        eprintln!(
            "skipping: KESTREL_PARITY_DIR is unset (scripts/gpu-parity.sh makes a reference and sets it)"
        );
        return;
    };
    let backend = match CudaBackend::open(0) {
        Ok(Some(b)) => b,
        Ok(None) => panic!("KESTREL_PARITY_DIR is set but no GPU was found"),
        Err(e) => panic!("KESTREL_PARITY_DIR is set but the GPU failed to open: {e}"),
    };
    let t0 = Instant::now();
    let src = ModelSource::open(dir.to_str().expect("KESTREL_PARITY_DIR is not UTF-8"))
        .unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()));
    let config = src.config().unwrap_or_else(|e| panic!("{e}"));
    let model = Qwen3Model::load(&backend, &config, &src).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{}: loaded {} ({} layers, hidden {}) in {:.1} s",
        backend.name(),
        dir.display(),
        config.num_layers,
        config.hidden_size,
        t0.elapsed().as_secs_f64()
    );
    let t1 = Instant::now();
    let report = run_parity(&backend, &model, &dir).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    eprintln!("(parity run {:.1} s)", t1.elapsed().as_secs_f64());
    assert!(report.passes(), "parity criterion not met (report above)");
}
