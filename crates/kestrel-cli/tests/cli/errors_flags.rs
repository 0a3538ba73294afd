//! Nonsense flags and prompts that do not fit: each names the flag or the limit.

use crate::support::*;

/// `kestrel run --model <tiny> <extra...>` must fail naming every needle.
fn run_fails(extra: &[&str], needles: &[&str]) {
    let dir = tiny_dir().display().to_string();
    let mut args = vec!["run", "--model", &dir];
    args.extend_from_slice(extra);
    fails(&args, needles);
}

#[test]
fn sampling_flags_out_of_range() {
    let cases: [(&[&str], &str); 9] = [
        (&["--temperature", "-1", "hi"], "--temperature"),
        (&["--temperature=-1", "hi"], "--temperature"),
        (&["--top-p", "0", "hi"], "--top-p"),
        (&["--top-p", "1.5", "hi"], "--top-p"),
        (&["--min-p", "-0.5", "hi"], "--min-p"),
        (&["--repeat-penalty", "0", "hi"], "--repeat-penalty"),
        (&["--presence-penalty", "5", "hi"], "--presence-penalty"),
        (&["--max-tokens", "0", "hi"], "--max-tokens"),
        (&["--top-k", "-3", "hi"], "--top-k"),
    ];
    for (extra, flag) in cases {
        run_fails(extra, &[flag]);
    }
}

#[test]
fn model_flags_out_of_range() {
    run_fails(&["--threads", "0", "hi"], &["--threads"]);
    run_fails(&["--ctx-size", "0", "hi"], &["--ctx-size"]);
    run_fails(&["--ctx-size", "100000", "hi"], &["--ctx-size", "2048"]);
    let gguf = tiny_gguf().display().to_string();
    fails(
        &["bench", "--model", &gguf, "-r", "0", "-p", "4", "-n", "2"],
        &["--repetitions"],
    );
    fails(
        &["bench", "--model", &gguf, "-p", "0", "-n", "0"],
        &["-p", "-n"],
    );
    fails(
        &[
            "bench", "--model", &gguf, "--batch", "0", "-p", "4", "-n", "2",
        ],
        &["--batch"],
    );
}

#[test]
fn unparseable_command_lines() {
    run_fails(&["--bogus-flag", "hi"], &["--bogus-flag"]);
    run_fails(&["--temperature", "warm", "hi"], &["--temperature", "warm"]);
    run_fails(&["--seed", "1.5", "hi"], &["--seed"]);
    run_fails(&[], &["<PROMPT>"]);
    fails(&["run", "hi"], &["--model"]);
    fails(&["fly"], &["fly"]);
}

#[test]
fn prompt_longer_than_context() {
    let long = "the quick brown fox jumps over the lazy dog ".repeat(8);
    run_fails(
        &["--ctx-size", "16", "--temperature", "0", &long],
        &["prompt has", "--ctx-size"],
    );
    run_fails(
        &["--raw", "--ctx-size", "16", "--temperature", "0", &long],
        &["prompt has", "--ctx-size"],
    );
    let dir = tiny_dir().display().to_string();
    let o = kestrel_stdin(
        &["chat", "--model", &dir, "--ctx-size", "16"],
        &format!("{long}\n"),
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("error:") && err.contains("prompt has"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn no_arguments_and_help() {
    let o = kestrel(&[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    for word in ["Usage: kestrel", "run", "chat", "inspect", "bench"] {
        assert!(err.contains(word), "{err}");
    }
    let help = ok(&["run", "--help"]);
    for word in [
        "--model",
        "--temperature",
        "--ctx-size",
        "--no-think",
        "<PROMPT>",
    ] {
        assert!(help.contains(word), "{help}");
    }
}
