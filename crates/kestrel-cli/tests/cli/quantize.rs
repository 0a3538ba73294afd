//! `kestrel quantize` and `--quant`: the written GGUF runs as the checkpoint quantized at load does,
//! and bad input (an unknown type, a GGUF to re-quantize, a missing output directory) is refused.

use crate::support::*;

const GREEDY: &[&str] = &[
    "--temperature",
    "0",
    "-n",
    "12",
    "--ignore-eos",
    "Hello there",
];

#[test]
fn quantized_gguf_runs_like_quant_at_load() {
    let scratch = Scratch::new("quantize");
    let dir = tiny_dir().display().to_string();
    for ty in ["q8_0", "q4_0", "q4_k_m"] {
        let out = scratch.s(&format!("tiny-{ty}.gguf"));
        let o = kestrel(&["quantize", &dir, &out, "--type", ty]);
        assert!(o.status.success(), "quantize {ty}: {}", stderr(&o));
        assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));
        let from_file = ok(&[&["run", "--model", &out][..], GREEDY].concat());
        let o = kestrel(&[&["run", "--model", &dir, "--quant", ty][..], GREEDY].concat());
        assert!(o.status.success(), "--quant {ty}: {}", stderr(&o));
        assert!(stderr(&o).contains("while loading"), "{}", stderr(&o));
        assert_eq!(stdout(&o), from_file, "{ty}");
        let info = ok(&["inspect", &out]);
        assert!(info.contains("Q8_0"), "{info}");
    }
}

#[test]
fn quantize_refuses_bad_input() {
    let scratch = Scratch::new("quantize-bad");
    let dir = tiny_dir().display().to_string();
    let gguf = tiny_gguf().display().to_string();
    let out = scratch.s("x.gguf");
    fails(
        &["quantize", &dir, &out, "--type", "q5_k"],
        &["--type", "q4_k_m"],
    );
    fails(
        &["quantize", &gguf, &out, "-t", "q8_0"],
        &["GGUF", "safetensors"],
    );
    let missing = scratch.s("no/such/dir/x.gguf");
    fails(
        &["quantize", &dir, &missing, "-t", "q8_0"],
        &["does not exist"],
    );
    fails(
        &["quantize", &dir, &scratch.s(""), "-t", "q8_0"],
        &["directory"],
    );
    assert!(!scratch.path("x.gguf").exists() && !scratch.path("x.gguf.partial").exists());

    // --quant takes float checkpoints only.
    let q = scratch.s("q.gguf");
    ok(&["quantize", &dir, &q, "-t", "q4_0"]);
    fails(
        &["run", "--model", &q, "--quant", "q8_0", "hi"],
        &["token_embd.weight", "already quantized"],
    );
    fails(
        &["run", "--model", &dir, "--quant", "int4", "hi"],
        &["--quant", "q8_0"],
    );
}
