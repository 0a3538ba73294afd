//! Every subcommand on the tiny checkpoints: what it prints, and that it is reproducible.

use crate::support::*;

/// `kestrel run --model <model> <extra...>`: (stdout without the final newline, stderr).
fn run(model: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["run", "--model", model];
    args.extend_from_slice(extra);
    let o = kestrel(&args);
    assert!(o.status.success(), "kestrel {args:?}: {}", stderr(&o));
    let out = stdout(&o);
    let out = out.strip_suffix('\n').unwrap_or(&out).to_string();
    (out, stderr(&o))
}

fn prompt_tokens(stderr: &str) -> usize {
    let rest = &stderr[stderr.find("prompt: ").expect(stderr) + 8..];
    rest[..rest.find(' ').unwrap()].parse().unwrap()
}

const GREEDY16: &[&str] = &["--temperature", "0", "-n", "16", "--ignore-eos"];

#[test]
fn greedy_dir_and_gguf_agree() {
    let dir = tiny_dir().display().to_string();
    let gguf = tiny_gguf().display().to_string();
    let args = [GREEDY16, &["Hello there"]].concat();
    let (a, err) = run(&dir, &args);
    let (b, _) = run(&gguf, &args);
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert!(err.contains("generated: 16 tokens"), "{err}");
    // The sharded BF16 checkpoint and the Qwen2 checkpoint run too.
    run(&testdata("tiny-qwen3-bf16").display().to_string(), &args);
    let (q2, _) = run(&testdata("tiny-qwen2").display().to_string(), &args);
    assert!(!q2.is_empty());
    let (q2g, _) = run(
        &testdata("tiny-qwen2/tiny-qwen2-f32.gguf")
            .display()
            .to_string(),
        &args,
    );
    assert_eq!(q2, q2g);
}

#[test]
fn seeds_reproduce() {
    let dir = tiny_dir().display().to_string();
    let with_seed = |seed: &str| {
        run(
            &dir,
            &[
                "--seed",
                seed,
                "--temperature",
                "1",
                "-n",
                "24",
                "--ignore-eos",
                "hi",
            ],
        )
        .0
    };
    let a = with_seed("7");
    assert_eq!(a, with_seed("7"));
    assert_ne!(a, with_seed("8"));
}

#[test]
fn raw_stop_and_no_think() {
    let dir = tiny_dir().display().to_string();
    let (raw, err) = run(&dir, &[GREEDY16, &["--raw", "Once upon a time"]].concat());
    assert!(!raw.is_empty());
    let (chat, chat_err) = run(&dir, &[GREEDY16, &["Once upon a time"]].concat());
    // The chat template adds tokens around the prompt.
    assert!(
        prompt_tokens(&chat_err) > prompt_tokens(&err) + 4,
        "{chat_err}\n{err}"
    );

    // Stop on a piece from the middle of the greedy text: output ends right before its first match.
    let chars: Vec<char> = chat.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = chat.find(&stop).unwrap();
    let (stopped, _) = run(
        &dir,
        &[GREEDY16, &["--stop", &stop, "Once upon a time"]].concat(),
    );
    assert_eq!(stopped, chat[..cut], "stop {stop:?}");

    // enable_thinking=false adds an empty <think></think> block to the generation prompt.
    let (_, no_think_err) = run(
        &dir,
        &[GREEDY16, &["--no-think", "Once upon a time"]].concat(),
    );
    assert_ne!(prompt_tokens(&no_think_err), prompt_tokens(&chat_err));
}

#[test]
fn inspect_dir_and_gguf() {
    for model in [tiny_dir(), tiny_gguf()] {
        let out = ok(&["inspect", model.to_str().unwrap()]);
        for want in [
            "architecture: qwen3",
            "3 layers, hidden 64, ffn 192, heads 4 (kv 2), head_dim 32, vocab 512",
            "35 tensors",
            "F32:   35 tensors",
            "tokenizer:",
            "chat template: yes",
        ] {
            assert!(out.contains(want), "{model:?}: no '{want}' in\n{out}");
        }
    }
    let out = ok(&["inspect", tiny_gguf().to_str().unwrap(), "--tensors"]);
    assert!(out.contains("blk.0.attn_k_norm.weight"), "{out}");
    assert!(out.contains("gguf:         version 3"), "{out}");
    let out = ok(&["inspect", tiny_dir().to_str().unwrap(), "--template"]);
    assert!(out.contains("<|im_start|>"), "{out}");
    let out = ok(&["inspect", testdata("tiny-qwen2").to_str().unwrap()]);
    assert!(
        out.contains("architecture: qwen2") && out.contains("qkv bias true"),
        "{out}"
    );
}

#[test]
fn bench_json() {
    let gguf = tiny_gguf().display().to_string();
    let out = ok(&[
        "bench", "--model", &gguf, "-p", "8", "-n", "4", "-r", "1", "--json",
    ]);
    let rows: serde_json::Value = serde_json::from_str(&out).expect(&out);
    let tests: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["pp8", "tg4"]);
    for r in rows.as_array().unwrap() {
        assert!(r["tok_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let table = ok(&["bench", "--model", &gguf, "-p", "8", "-n", "4", "-r", "1"]);
    assert!(
        table.contains("| pp8 |") && table.contains("| tg4 |"),
        "{table}"
    );
}

#[test]
fn bench_batch_json() {
    let dir = tiny_dir().display().to_string();
    let out = ok(&[
        "bench", "--model", &dir, "--batch", "3", "-p", "8", "-n", "4", "-r", "1", "--json",
    ]);
    let rows: serde_json::Value = serde_json::from_str(&out).expect(&out);
    let rows = rows.as_array().unwrap();
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp8 x3", "tg4 x3"]);
    for r in rows {
        assert_eq!(r["batch"].as_u64(), Some(3), "{r}");
        assert!(r["tok_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let table = ok(&[
        "bench", "--model", &dir, "--batch", "3", "-p", "8", "-n", "4", "-r", "1",
    ]);
    assert!(
        table.contains("| pp8 x3 |") && table.contains("| tg4 x3 |"),
        "{table}"
    );
}

#[test]
fn chat_two_turns_with_reset() {
    let dir = tiny_dir().display().to_string();
    let o = kestrel_stdin(
        &["chat", "--model", &dir, "--temperature", "0", "-n", "8"],
        "hi\n/reset\nhello\n/exit\nnever read\n",
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches(" tokens, ").count(), 2, "{err}");
    assert!(err.contains("(history cleared)"), "{err}");
}

#[test]
fn closed_stdout_is_not_a_panic() {
    // `kestrel inspect m --tensors | head`: the reader goes away before the output is written.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(["inspect", tiny_gguf().to_str().unwrap(), "--tensors"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let err = stderr(&child.wait_with_output().unwrap());
    assert!(!err.contains("panicked"), "{err}");
}
