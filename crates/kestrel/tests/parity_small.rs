//! DESIGN.md's parity criterion on the CPU backend, against the tiny reference that
//! `scripts/make_full_size_reference.py --shape tiny --device cpu --tokenizer testdata/tiny-tokenizer
//! --out testdata/parity-tiny` made (committed; no Python at test time). The CPU backend computes in f32
//! on the bf16 weights, so it must beat HF's bf16 run by far, not just pass.

use std::path::{Path, PathBuf};

use kestrel::backend::cpu::CpuBackend;
use kestrel::formats::source::ModelSource;
use kestrel::model::Qwen3Model;
use kestrel::parity::run_parity;

#[test]
fn cpu_meets_parity_criterion_on_tiny_reference() {
    check(&PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/parity-tiny"
    )));
}

/// The same on any reference (e.g. a full-size one made with `--device cpu --lengths ...`), when
/// `KESTREL_CPU_PARITY_DIR` names it.
#[test]
fn cpu_meets_parity_criterion_on_env_reference() {
    match std::env::var_os("KESTREL_CPU_PARITY_DIR") {
        Some(dir) => check(&PathBuf::from(dir)),
        None => eprintln!("skipping: KESTREL_CPU_PARITY_DIR is unset"),
    }
}

fn check(dir: &Path) {
    let backend = CpuBackend::new();
    let src = ModelSource::open(dir.to_str().unwrap()).unwrap();
    let model = Qwen3Model::load(&backend, &src.config().unwrap(), &src).unwrap();
    let report = run_parity(&backend, &model, dir).unwrap();
    eprintln!("{report}");
    assert!(report.passes(), "parity criterion not met:\n{report}");
    for s in &report.segments {
        assert!(s.rows > 0, "segment {} is empty", s.name);
        assert!(
            s.ratio() < 0.01,
            "{}: CPU f32 math should be far closer to HF fp32 than HF bf16 is (ratio {:.4})",
            s.name,
            s.ratio()
        );
    }
    assert_eq!(
        report.greedy.ours, report.greedy.fp32,
        "greedy path differs from HF fp32"
    );
}
