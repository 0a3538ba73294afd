//! What the GPU test files share: opening the GPU (or skipping), and finding testdata/.
//! Each test target compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::fmt::Display;
use std::path::PathBuf;

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
