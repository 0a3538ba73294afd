//! Running the binary, scratch directories, and copies of the test models to corrupt.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

pub fn testdata(rel: &str) -> PathBuf {
    Path::new(ROOT).join("testdata").join(rel)
}

pub fn tiny_dir() -> PathBuf {
    testdata("tiny-qwen3")
}

pub fn tiny_gguf() -> PathBuf {
    testdata("tiny-qwen3/tiny-qwen3-f32.gguf")
}

/// Runs `kestrel args...` with `stdin` piped in, offline (a bad path must never turn into a download).
pub fn kestrel_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the kestrel binary");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn kestrel(args: &[&str]) -> Output {
    kestrel_stdin(args, "")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean success and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = kestrel(args);
    assert!(
        o.status.success(),
        "kestrel {args:?} failed: {}\n{}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts the failure contract: non-zero exit, stderr starting with `error:` that contains every one
/// of `needles`, and no panic.
pub fn fails(args: &[&str], needles: &[&str]) -> String {
    let o = kestrel(args);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "kestrel {args:?} succeeded; stderr:\n{err}"
    );
    assert!(
        err.starts_with("error:"),
        "kestrel {args:?}: stderr does not start with 'error:':\n{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "kestrel {args:?} panicked:\n{err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "kestrel {args:?}: stderr does not mention '{n}':\n{err}"
        );
    }
    err
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kestrel-cli-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    /// Copies the files of `src` (flat) into `self/rel` and returns that directory.
    pub fn copy_dir(&self, src: &Path, rel: &str) -> PathBuf {
        let dst = self.path(rel);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file()
                && !e.file_name().to_string_lossy().ends_with(".f32")
            {
                std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
            }
        }
        dst
    }

    /// Writes `bytes` to `self/rel` and returns its path as a string.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> String {
        std::fs::write(self.path(rel), bytes).unwrap();
        self.s(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A safetensors file split into its JSON header and its data.
pub fn read_safetensors(path: &Path) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// The format: 8-byte little-endian header length, the JSON header, the data.
pub fn write_safetensors(
    path: &Path,
    header: &serde_json::Map<String, serde_json::Value>,
    data: &[u8],
) {
    let json = serde_json::to_vec(header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// The name of the tensor whose data comes last in a safetensors header.
pub fn last_tensor(header: &serde_json::Map<String, serde_json::Value>) -> String {
    header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .max_by_key(|(_, v)| v["data_offsets"][1].as_u64().unwrap())
        .map(|(k, _)| k.clone())
        .unwrap()
}

/// Where scripts/fetch-assets.sh keeps what it downloads ($KESTREL_CACHE, else ~/.cache/kestrel).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("KESTREL_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kestrel"),
    }
}

/// The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF that scripts/fetch-assets.sh downloads.
pub fn real_model_path() -> PathBuf {
    cache_dir().join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}
