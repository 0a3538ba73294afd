//! `kestrel bench --throughput` and `--sweep` on the tiny model, shrunk to run in a second.

use crate::support::{fails, ok, tiny_dir};

fn rows(out: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(out).expect(out);
    v.as_array().expect("a JSON array").clone()
}

#[test]
fn throughput_generates_every_requested_token() {
    let dir = tiny_dir().display().to_string();
    let args = [
        "bench",
        "--model",
        &dir,
        "--device",
        "cpu",
        "--throughput",
        "--num-seqs",
        "6",
        "--min-input-len",
        "5",
        "--max-input-len",
        "40",
        "--min-output-len",
        "7",
        "--max-output-len",
        "7",
        "--max-num-seqs",
        "4",
        "--max-num-batched-tokens",
        "32",
    ];
    let out = ok(&[&args[..], &["--json"]].concat());
    let r = &rows(&out)[0];
    assert_eq!(r["test"], "throughput");
    assert_eq!(r["num_seqs"].as_u64(), Some(6));
    assert_eq!(r["output_tokens"].as_u64(), Some(42), "{r}");
    let prompt = r["prompt_tokens"].as_u64().unwrap();
    assert!((30..=240).contains(&prompt), "{r}");
    assert!(r["output_tok_s"].as_f64().unwrap() > 0.0, "{r}");
    // The split: every step is decode-only or has prompt tokens (at most 32 a step here); each
    // decode-only step yields one token per sequence, so they account for at most 42 tokens.
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("decode_steps") + n("prefill_steps"), n("steps"), "{r}");
    assert!(n("prefill_steps") >= prompt.div_ceil(32), "{r}");
    assert!((1..=42).contains(&n("decode_step_rows")), "{r}");
    assert!(n("decode_step_rows") >= n("decode_steps"), "{r}");
    assert!(
        r["host_seconds"].is_null(),
        "the CPU backend does not count host time: {r}"
    );
    // The engine's own host work is part of the decode-only steps' time.
    let secs = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    let engine_host = secs("decode_plan_seconds") + secs("decode_output_seconds");
    assert!(
        engine_host > 0.0 && engine_host <= secs("decode_seconds"),
        "{r}"
    );
    // A KV cache that holds one request at a time: every token still comes out.
    let tight = ok(&[&args[..], &["--kv-tokens", "48", "--json"]].concat());
    let r = &rows(&tight)[0];
    assert_eq!(r["output_tokens"].as_u64(), Some(42), "{r}");
    let table = ok(&args);
    assert!(table.starts_with("Total: 42tok, Time: "), "{table}");
    assert!(table.contains("tok/s"), "{table}");
    assert!(
        table.contains("\nsteps: ") && table.contains(" decode-only ("),
        "{table}"
    );
}

#[test]
fn sweep_reports_each_concurrency() {
    let dir = tiny_dir().display().to_string();
    let args = [
        "bench",
        "--model",
        &dir,
        "--sweep",
        "--sweep-concurrency",
        "1,3",
        "-p",
        "20",
        "-n",
        "5",
    ];
    let out = ok(&[&args[..], &["--json"]].concat());
    let rows = rows(&out);
    let conc: Vec<u64> = rows
        .iter()
        .map(|r| r["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(conc, [1, 3]);
    for r in &rows {
        assert!(r["prefill_tok_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["decode_tok_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let table = ok(&args);
    assert!(table.contains("| 3 | 20 | 5 |"), "{table}");
}

#[test]
fn throughput_flags_are_checked() {
    let dir = tiny_dir().display().to_string();
    fails(
        &["bench", "--model", &dir, "--throughput", "--num-seqs", "0"],
        &["--num-seqs"],
    );
    fails(
        &[
            "bench",
            "--model",
            &dir,
            "--throughput",
            "--min-output-len",
            "9",
            "--max-output-len",
            "3",
        ],
        &["--min-output-len"],
    );
    fails(
        &[
            "bench",
            "--model",
            &dir,
            "--sweep",
            "--sweep-concurrency",
            "2,0",
        ],
        &["--sweep-concurrency"],
    );
    fails(
        &["bench", "--model", &dir, "--throughput", "--kv-tokens", "8"],
        &["--kv-tokens"],
    );
}
