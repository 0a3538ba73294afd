//! Every kernel compiles with NVRTC for sm_80, sm_90 and sm_90a: no GPU needed, only libnvrtc.so.13
//! and the CUDA headers (`eval "$(bash scripts/ci-nvrtc.sh)"` provides both from PyPI wheels).
//! Without NVRTC this skips with a message, except under CI=true, KESTREL_REQUIRE_GPU=1 or with
//! KESTREL_CUDA_INCLUDE set (as ci-nvrtc.sh does), where a missing NVRTC is a failure: CI must catch a
//! kernel that doesn't compile.

use kestrel_cuda::compile::{Arch, Compiler, Kernel, ALL_KERNELS};
use kestrel_cuda::CudaError;

fn must_compile() -> bool {
    let on = |var: &str| {
        std::env::var(var)
            .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
            .unwrap_or(false)
    };
    on("CI") || on("KESTREL_REQUIRE_GPU") || std::env::var_os("KESTREL_CUDA_INCLUDE").is_some()
}

/// NVRTC and the headers, or `None` (after saying why) where a skip is allowed.
fn compiler(cache: Option<std::path::PathBuf>) -> Option<Compiler> {
    match Compiler::with_cache_dir(cache) {
        Ok(c) => Some(c),
        Err(e) if !must_compile() => {
            eprintln!("skipping: {e}\n(run `eval \"$(bash scripts/ci-nvrtc.sh)\"` first to test the kernels)");
            None
        }
        Err(e) => panic!(
            "NVRTC is required here (CI, KESTREL_REQUIRE_GPU or KESTREL_CUDA_INCLUDE is set): {e}"
        ),
    }
}

#[test]
fn every_kernel_compiles_for_sm80_sm90_and_sm90a() {
    let Some(c) = compiler(None) else { return };
    eprintln!(
        "NVRTC {}.{}, headers from {}",
        c.nvrtc_version().0,
        c.nvrtc_version().1,
        c.include_dir().display()
    );
    // developers: KESTREL_NVRTC_ONLY=file.cu compiles just that file
    let only = std::env::var("KESTREL_NVRTC_ONLY").ok();
    let mut failures = Vec::new();
    for arch in ["sm_80", "sm_90", "sm_90a"] {
        let arch = Arch::parse(arch).unwrap();
        for k in ALL_KERNELS
            .iter()
            .filter(|k| only.as_deref().is_none_or(|f| f == k.file))
        {
            match c.compile_uncached(k, &arch) {
                Ok(cubin) => {
                    // an ELF image, not PTX text
                    assert_eq!(&cubin[..4], b"\x7fELF", "{} for {arch}", k.file);
                }
                Err(e) => failures.push(format!("{arch}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn errors_name_the_kernel_and_carry_the_nvrtc_log() {
    let Some(c) = compiler(None) else { return };
    let broken = Kernel {
        file: "broken_on_purpose.cu",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void f(bf16 *o) { o[0] = undeclared_name; }\n",
    };
    let err = c
        .compile_uncached(&broken, &Arch::parse("sm_90").unwrap())
        .unwrap_err();
    assert!(matches!(err, CudaError::Compile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("kernels/broken_on_purpose.cu"), "{msg}");
    assert!(msg.contains("undeclared_name"), "{msg}");
}

#[test]
fn the_disk_cache_returns_what_was_compiled() {
    let dir =
        std::env::temp_dir().join(format!("kestrel-kernel-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(c) = compiler(Some(dir.clone())) else {
        return;
    };
    let arch = Arch::parse("sm_80").unwrap();
    let k = &ALL_KERNELS[0];
    let first = c.compile(k, &arch).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("embedding-sm_80-") && name.ends_with(".cubin"),
        "{name}"
    );
    // a second compile reads the entry: prove it by planting different bytes there
    std::fs::write(&entries[0], b"planted").unwrap();
    assert_eq!(c.compile(k, &arch).unwrap(), b"planted");
    // another architecture is another entry
    let other = c.compile(k, &Arch::parse("sm_90").unwrap()).unwrap();
    assert_eq!(&other[..4], b"\x7fELF");
    assert_ne!(first, other);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
