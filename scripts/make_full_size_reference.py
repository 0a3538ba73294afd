#!/usr/bin/env python3
"""Random-weight Qwen3 checkpoints of the real shapes, and HF transformers reference logits for the
parity check (DESIGN.md, "Numerics contract"; issue 3, "Correctness").

    python3 scripts/make_full_size_reference.py --shape 0.6b|4b|tiny --out DIR \
        --tokenizer TOKDIR [--device cuda|cpu] [--attn sdpa|eager]

writes into DIR
  config.json, generation_config.json, model*.safetensors   bf16 weights (save_pretrained, sharded)
  tokenizer.json, tokenizer_config.json                      copied from --tokenizer (the real Qwen3 ones
                                                             for 0.6b/4b; testdata/tiny-tokenizer for tiny)
  <seq>.fp32.f32, <seq>.bf16.f32                             raw little-endian f32 logits [P+T, vocab]
  reference.json                                             tokens, P, T, files, HF bf16 vs fp32 errors,
                                                             greedy paths
for two sequences: "main" (P prompt + T teacher tokens) and "second" (shorter, for the mixed batch).
Prompt and teacher tokens are seeded random ids. Logits come from ONE teacher-forced forward over
prompt+teacher: row j predicts token j+1. Rows < P are "prefill", rows >= P "decode" (fed one at a time
on our side). Greedy: HF fp32's and HF bf16's own argmax paths (T steps) from the main prompt.

Numerics are made to look like a trained Qwen3: projections scaled so activations stay O(1) through
every layer, k_norm gains reaching ~100 (real Qwen3: 96.5) on low-frequency RoPE channels, q_norm gains
up to ~20 (on channels whose normalised values are small, see init_weights), outlier residual channels (large embedding columns fed by large down_proj rows, damped by
the norms), and logits of std ~2.5. The fp32 reference runs on the bf16 weights upcast (exactly the
same values); TF32 is off. HF bf16 is the checkpoint run in bfloat16 as HF runs it.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch

SHAPES = {
    # name: hidden, layers, heads, kv heads, head_dim, intermediate, vocab, max_pos, P, T, P2, T2
    "0.6b": dict(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, inter=3072,
                 vocab=151936, max_pos=40960, P=128, T=64, P2=37, T2=16),
    "4b": dict(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, inter=9728,
               vocab=151936, max_pos=40960, P=128, T=64, P2=37, T2=16),
    # Small enough to commit (testdata/parity-tiny, with testdata/tiny-tokenizer) and to run on a
    # 2-core CPU in seconds; with a bigger tokenizer (the real one) the vocab becomes 151936.
    "tiny": dict(hidden=128, layers=2, heads=4, kv_heads=2, head_dim=128, inter=384,
                 vocab=512, max_pos=2048, P=24, T=8, P2=11, T2=5, seed=1),  # seed: varied greedy path
}
SEED = 31337
# Typical |gain x normalised value| on the large-gain k / q channels (see init_weights).
K_TARGET, Q_TARGET = 6.0, 3.0


def tokenizer_info(tok_dir: Path) -> dict:
    j = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"]: t["id"] for t in j["added_tokens"]}
    return {"n_regular": len(j["model"]["vocab"]), "n_total": len(j["model"]["vocab"]) + len(added),
            "eos": added["<|im_end|>"], "pad": added["<|endoftext|>"]}


def make_config(s: dict, tok: dict):
    from transformers import Qwen3Config

    cfg = Qwen3Config(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"], hidden_act="silu",
        max_position_embeddings=s["max_pos"], rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        attention_bias=False, tie_word_embeddings=True, use_sliding_window=False,
        sliding_window=None, max_window_layers=s["layers"], attention_dropout=0.0,
        initializer_range=0.02, use_cache=True, bos_token_id=tok["pad"], eos_token_id=tok["eos"],
        pad_token_id=tok["pad"],
    )
    return cfg


@torch.no_grad()
def init_weights(model, cfg, tok: dict, device: str, seed: int) -> dict:
    """Overwrites every weight, in place, with seeded values that look like a trained Qwen3's."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, device=device) * std + mean

    def uniform(lo, hi):
        return float(torch.rand(1, generator=g, device=device)) * (hi - lo) + lo

    H, hd, L = cfg.hidden_size, cfg.head_dim, cfg.num_hidden_layers
    n_tok = min(tok["n_total"], cfg.vocab_size)
    outliers = [H // 7, H // 3 + 5, (2 * H) // 3 + 1]
    planted: dict = {"outlier_channels": outliers, "k_norm_large": {}, "q_norm_large": {}}
    logit_gain = 2.5 / (0.02 * math.sqrt(H))  # final-norm gain giving logits of std ~2.5
    half = hd // 2
    for name, p in model.named_parameters():
        fan_in = p.shape[-1]
        if name == "model.embed_tokens.weight":
            v = randn(*p.shape, std=0.02)
            v[:, outliers] *= 50.0
            v[n_tok:] = randn(cfg.vocab_size - n_tok, H, std=0.002)  # rows with no token stay small
        elif name == "model.norm.weight":
            v = logit_gain * randn(*p.shape, std=0.1, mean=1.0)
            v[outliers] = 0.05
        elif name.endswith("layernorm.weight"):
            v = torch.exp(randn(*p.shape, std=0.3))
            v[outliers] = 0.1  # trained norms damp the massive-activation channels
        elif name.endswith("q_norm.weight") or name.endswith("k_norm.weight"):
            v = randn(*p.shape, std=0.1, mean=1.0).abs()  # keeps random attention soft
        elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            v = randn(*p.shape, std=0.7 / math.sqrt(fan_in))
        else:  # q/k/v, gate, up: unit-variance outputs from unit-rms inputs
            v = randn(*p.shape, std=1.0 / math.sqrt(fan_in))
        if name.endswith("down_proj.weight"):
            v[outliers] *= 16.0  # every layer writes large values into the outlier channels
        p.copy_(v.to(torch.bfloat16).to(p.dtype))

    # q/k norm gains: k reaches ~100 on a few low-frequency RoPE channels (RoPE pairs c and c + hd/2),
    # q up to ~20 on others. As in trained models, a large gain multiplies a channel whose normalised
    # value is small: the q/k_proj rows feeding it are scaled down so that gain x value stays at a few
    # units (at full scale a random model's attention turns one-hot and chaotic: HF bf16 would then
    # differ from fp32 by ~50% and the criterion would test nothing). q and k channels are disjoint
    # mod hd/2.
    kv_heads, heads = cfg.num_key_value_heads, cfg.num_attention_heads
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        perm = torch.randperm(half // 2, generator=g, device=device).tolist()
        k_ch = [half // 2 + c + half * (j % 2) for j, c in enumerate(perm[:4])]
        q_ch = [half // 2 + c + half * (j % 2) for j, c in enumerate(perm[4:7])]
        k_val = [96.5 if i % 3 == 0 and j == 0 else uniform(30.0, 90.0) for j in range(4)]
        q_val = [20.0 if i % 4 == 1 and j == 0 else uniform(5.0, 15.0) for j in range(3)]
        for norm, proj, n_heads, chans, vals, target in (
            (a.k_norm.weight, a.k_proj.weight, kv_heads, k_ch, k_val, K_TARGET),
            (a.q_norm.weight, a.q_proj.weight, heads, q_ch, q_val, Q_TARGET),
        ):
            for c, val in zip(chans, vals):
                norm[c] = val
                rows = [h * hd + c for h in range(n_heads)]
                proj[rows] = (proj[rows] * (target / val)).to(torch.bfloat16).to(proj.dtype)
            norm.copy_(norm.to(torch.bfloat16).to(norm.dtype))
        planted["k_norm_large"][str(i)] = {str(c): round(float(a.k_norm.weight[c]), 3) for c in k_ch}
        planted["q_norm_large"][str(i)] = {str(c): round(float(a.q_norm.weight[c]), 3) for c in q_ch}
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    planted["layers_with_k_norm_96.5"] = [i for i in range(L) if i % 3 == 0]
    return planted


def load(out: Path, dtype, attn: str, device: str):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype, attn_implementation=attn)
    return m.to(device).eval()


@torch.no_grad()
def logits_of(model, ids: list[int], device: str) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, prompt: list[int], n: int, device: str) -> tuple[list[int], list[float]]:
    """Plain argmax (no eos handling), a full forward per step: tokens and top1-top2 margins."""
    ids, toks, margins = list(prompt), [], []
    for _ in range(n):
        top = torch.topk(logits_of(model, ids, device)[-1], 2)
        toks.append(int(top.indices[0]))
        margins.append(round(float(top.values[0] - top.values[1]), 5))
        ids.append(toks[-1])
    return toks, margins


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--tokenizer", required=True, type=Path,
                    help="dir with the tokenizer.json + tokenizer_config.json to copy")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                    help="HF attention for both references (sdpa: HF's default; its bf16 path keeps "
                         "q.k scores in f32, so it is the stricter bf16 baseline)")
    ap.add_argument("--seed", type=int, help=f"default: the shape's, else {SEED}")
    ap.add_argument("--lengths", type=int, nargs=4, metavar=("P", "T", "P2", "T2"),
                    help="override the token counts (main prompt/teacher, second prompt/teacher)")
    args = ap.parse_args()
    s, dev, out = SHAPES[args.shape], args.device, args.out
    if args.seed is None:
        args.seed = s.get("seed", SEED)
    if args.lengths:
        s = dict(s, **dict(zip(("P", "T", "P2", "T2"), args.lengths)))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if dev == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    tok = tokenizer_info(args.tokenizer)
    if tok["n_total"] > s["vocab"]:  # tiny with the real tokenizer: keep the real vocab
        s = dict(s, vocab=151936)
    cfg = make_config(s, tok)

    # 1. The checkpoint: built on the device (fast init), saved as bf16.
    from transformers import GenerationConfig, Qwen3ForCausalLM

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with torch.device(dev):
        model = Qwen3ForCausalLM(cfg)
    planted = init_weights(model, cfg, tok, dev, args.seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tok["pad"], eos_token_id=[tok["eos"], tok["pad"]], pad_token_id=tok["pad"],
        do_sample=False)
    model = model.to(torch.bfloat16).to("cpu")
    model.save_pretrained(out, max_shard_size="1GB" if args.shape != "tiny" else "600KB")
    del model
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(args.tokenizer / f, out / f)
    (out / "planted.json").write_text(json.dumps(planted, indent=1) + "\n")
    print(f"{args.shape}: checkpoint in {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)",
          flush=True)

    # 2. Tokens: seeded random prompts and teacher tokens (a small random model's greedy path may
    # repeat one token; random teachers vary the decode inputs). Greedy paths are checked separately.
    g = torch.Generator().manual_seed(args.seed + 1)
    hi = min(150000, tok["n_regular"])
    rand_ids = lambda n: torch.randint(0, hi, (n,), generator=g).tolist()  # noqa: E731
    prompts = {"main": (rand_ids(s["P"]), rand_ids(s["T"])),
               "second": (rand_ids(s["P2"]), rand_ids(s["T2"]))}

    m32 = load(out, torch.float32, args.attn, dev)
    seqs, fp32 = [], {}
    greedy32, margins32 = greedy(m32, prompts["main"][0], s["T"], dev)
    for name, (prompt, teacher) in prompts.items():
        fp32[name] = logits_of(m32, prompt + teacher, dev)
        seqs.append({"name": name, "tokens": prompt + teacher, "prompt_len": len(prompt),
                     "teacher_len": len(teacher), "logits_fp32": f"{name}.fp32.f32",
                     "logits_bf16": f"{name}.bf16.f32"})
    lg = fp32["main"]
    print(f"{args.shape}: fp32 logits std {lg.std():.3f}, max |.| {lg.abs().max():.2f}; "
          f"greedy {greedy32}", flush=True)
    del m32
    if dev == "cuda":
        torch.cuda.empty_cache()

    # 3. HF's own bf16 run on the same tokens (and, for information, with the other attention).
    mbf = load(out, torch.bfloat16, args.attn, dev)
    main_prompt = prompts["main"][0]
    greedy_bf, _ = greedy(mbf, main_prompt, s["T"], dev)
    agree = next((i for i, (a, b) in enumerate(zip(greedy_bf, greedy32)) if a != b), len(greedy32))
    other = "eager" if args.attn == "sdpa" else "sdpa"
    other_errs = {}
    for seq in seqs:
        name, P = seq["name"], seq["prompt_len"]
        f32 = fp32[name]
        bf = logits_of(mbf, seq["tokens"], dev)
        seq["hf_bf16_rel_l2_prefill"] = rel_l2(bf[:P], f32[:P])
        seq["hf_bf16_rel_l2_decode"] = rel_l2(bf[P:], f32[P:])
        seq["hf_bf16_rel_l2_per_position"] = [round(rel_l2(bf[i], f32[i]), 7) for i in range(len(bf))]
        seq["hf_bf16_argmax_agree"] = int((bf.argmax(-1) == f32.argmax(-1)).sum())
        for key, t in (("logits_fp32", f32), ("logits_bf16", bf)):
            t.cpu().contiguous().numpy().astype("<f4").tofile(out / seq[key])
        print(f"{args.shape}: {name}: HF bf16 ({args.attn}) vs fp32 rel L2 prefill "
              f"{seq['hf_bf16_rel_l2_prefill']:.3e}, decode {seq['hf_bf16_rel_l2_decode']:.3e}, "
              f"argmax agree {seq['hf_bf16_argmax_agree']}/{len(bf)}", flush=True)
    try:  # for information only
        mbf.set_attn_implementation(other)
        for seq in seqs:
            bf = logits_of(mbf, seq["tokens"], dev)
            P, f32 = seq["prompt_len"], fp32[seq["name"]]
            other_errs[seq["name"]] = {"prefill": rel_l2(bf[:P], f32[:P]), "decode": rel_l2(bf[P:], f32[P:])}
    except Exception as e:  # noqa: BLE001
        other_errs = {"error": repr(e)}
    print(f"{args.shape}: HF bf16 with {other} attention: {other_errs}")
    print(f"{args.shape}: HF bf16 greedy follows fp32 for {agree}/{len(greedy32)} steps", flush=True)

    import transformers

    ref = {
        "generator": "scripts/make_full_size_reference.py",
        "shape": args.shape, "device": dev, "attn_implementation": args.attn, "seed": args.seed,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name() if dev == "cuda" else None,
        "vocab": cfg.vocab_size, "planted": planted,
        "sequences": seqs,
        "greedy": {"sequence": "main", "prompt_len": len(main_prompt), "steps": len(greedy32),
                   "fp32_tokens": greedy32, "fp32_top1_top2_margins": margins32,
                   "bf16_tokens": greedy_bf, "hf_bf16_agree": agree},
        "hf_bf16_other_attention": {"attn_implementation": other, "rel_l2": other_errs},
        "notes": "Logit files: raw little-endian f32 [P+T, vocab], row j = logits after tokens[..=j] "
                 "(one teacher-forced forward, no cache). fp32: weights upcast from the bf16 checkpoint, "
                 "TF32 off. bf16: HF bfloat16 run, logits cast to f32. rel L2 = ||bf16-fp32|| / ||fp32|| "
                 "over the rows named. Greedy: argmax of full forwards (no cache, no eos handling), from "
                 "the main prompt; hf_bf16_agree = steps before bf16's path leaves fp32's.",
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"{args.shape}: wrote {out}/reference.json", flush=True)


if __name__ == "__main__":
    main()
