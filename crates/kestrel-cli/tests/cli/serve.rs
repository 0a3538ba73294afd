#![cfg(unix)]
//! `kestrel serve` end to end: the binary on the tiny model (CPU) on a free port, called by the
//! official `openai` Python client (scripts/openai_client_test.py: chat and completions whole and
//! streamed, thinking on and off, the error cases, 64 concurrent streams, a slow client and one that
//! leaves mid-stream) twice, with the server's memory the same after the second round; then SIGTERM
//! while a stream is in flight: the stream completes and the process exits 0.
//! The client comes from scripts/fetch-assets.sh (pip --target $KESTREL_CACHE/py); without it the test
//! skips with a message, except under CI=true.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::support::{cache_dir, fails, real_model_path, tiny_dir, ROOT};

fn python_site() -> PathBuf {
    cache_dir().join("py")
}

/// The resident memory of process `pid` (KiB), from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn openai_available(site: &PathBuf) -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .env("PYTHONPATH", site)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `kestrel serve ARGS --device cpu --port 0`: the process, its base URL (from the startup line) and
/// its stderr lines.
fn start_server(args: &[&str]) -> (Child, String, Receiver<String>) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .arg("serve")
        .args(args)
        .args(["--device", "cpu", "--port", "0"])
        .env("HF_HUB_OFFLINE", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning kestrel serve");
    // the startup line names the address the system gave --port 0
    let stderr = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let url = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                let _ = server.kill();
                panic!("kestrel serve printed no address within 120 s")
            });
        if let Some(rest) = line.split("on http://").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
    };
    (server, url, rx)
}

/// The client, or a skip (a failure under CI=true) when scripts/fetch-assets.sh has not installed it.
fn client_site() -> Option<PathBuf> {
    let site = python_site();
    if openai_available(&site) {
        return Some(site);
    }
    let msg = format!(
        "the openai Python package is not in {} (run scripts/fetch-assets.sh)",
        site.display()
    );
    assert!(std::env::var("CI").is_err(), "{msg}");
    eprintln!("skipping: {msg}");
    None
}

/// The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (scripts/openai_real_model_test.py): right
/// answers, a tool call for each tool_choice (streamed argument by argument), a tool result turn.
#[test]
fn serve_the_real_model_answers_and_calls_tools() {
    let Some(site) = client_site() else {
        return;
    };
    let model = real_model_path();
    if !model.exists() {
        assert!(
            std::env::var("CI").is_err(),
            "{} is missing (run scripts/fetch-assets.sh)",
            model.display()
        );
        eprintln!("skipping: {} is missing", model.display());
        return;
    }
    let (mut server, url, rx) = start_server(&[
        "-m",
        model.to_str().unwrap(),
        "--served-model-name",
        "coder",
    ]);
    let out = Command::new("python3")
        .arg(PathBuf::from(ROOT).join("scripts/openai_real_model_test.py"))
        .args([url.as_str(), "coder"])
        .env("PYTHONPATH", &site)
        .output()
        .expect("running python3");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "the real-model checks failed:\n{}\n{}\nserver: {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        rx.try_iter().collect::<Vec<_>>()
    );
}

#[test]
fn serve_answers_the_openai_client_and_stops_on_sigterm() {
    let Some(site) = client_site() else {
        return;
    };
    let tiny = tiny_dir();
    let (mut server, url, rx) = start_server(&[
        "-m",
        tiny.to_str().unwrap(),
        "--api-key",
        "sk-test",
        "--served-model-name",
        "tiny",
    ]);
    let run_client = || {
        Command::new("python3")
            .arg(PathBuf::from(ROOT).join("scripts/openai_client_test.py"))
            .args([url.as_str(), "sk-test", "tiny"])
            .env("PYTHONPATH", &site)
            .output()
            .expect("running python3")
    };
    // twice: the second run (64 more streams, the bad clients again) must leave memory where the
    // first left it (no request leaks its state)
    let client = run_client();
    let after_first = rss_kib(server.id());
    let second = if client.status.success() {
        Some(run_client())
    } else {
        None
    };
    let after_second = rss_kib(server.id());
    // SIGTERM while a long stream is in flight: it finishes, then the process exits 0
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    let mut long = TcpStream::connect(&addr).expect("connecting for the last stream");
    let body = r#"{"model": "tiny", "prompt": "Once", "max_tokens": 300, "ignore_eos": true, "stream": true}"#;
    write!(
        long,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer sk-test\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    let n = long.read(&mut first).expect("the stream's first bytes");
    assert!(n > 0);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.id() as libc::pid_t, libc::SIGTERM);
    }
    let mut rest = String::new();
    long.read_to_string(&mut rest)
        .expect("the rest of the stream");
    let stop = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        if stop.elapsed() > Duration::from_secs(30) {
            let _ = server.kill();
            panic!("kestrel serve did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for c in std::iter::once(&client).chain(second.as_ref()) {
        let out = String::from_utf8_lossy(&c.stdout);
        let err = String::from_utf8_lossy(&c.stderr);
        assert!(
            c.status.success(),
            "the openai client checks failed:\n{out}\n{err}"
        );
        assert!(out.contains("all checks passed"), "{out}\n{err}");
    }
    assert!(
        after_second <= after_first + after_first / 10 + 8 * 1024,
        "the server's memory grew from {after_first} KiB to {after_second} KiB over a second round"
    );
    assert!(
        rest.contains("data: [DONE]"), // then the chunked encoding's last (empty) chunk
        "the stream in flight at SIGTERM was cut (server: {status}): ...{}\nserver stderr: {:?}",
        &rest[rest.len().saturating_sub(300)..],
        rx.try_iter().collect::<Vec<_>>()
    );
    let finished = rest.matches("\"finish_reason\":\"length\"").count();
    assert_eq!(
        finished, 1,
        "the stream in flight at SIGTERM ran to its 300 tokens"
    );
    assert!(
        status.success(),
        "kestrel serve exited with {status} after SIGTERM"
    );
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        !rest
            .iter()
            .any(|l| l.contains("panicked") || l.starts_with("error")),
        "kestrel serve's stderr: {rest:?}"
    );
}

/// A port in use, a host that is no address: a clear error naming the flag, no panic.
#[test]
fn serve_explains_where_it_cannot_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let tiny = tiny_dir();
    let model = tiny.to_str().unwrap();
    let base = ["serve", "-m", model, "--device", "cpu"];
    let in_use: Vec<&str> = base.iter().copied().chain(["--port", &port]).collect();
    fails(&in_use, &["cannot listen on 127.0.0.1:", "--port"]);
    let no_host: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--host", "999.1.1.1", "--port", "0"])
        .collect();
    fails(&no_host, &["cannot listen on 999.1.1.1:0", "--host"]);
}
