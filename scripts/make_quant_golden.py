#!/usr/bin/env python3
"""HF transformers references for the tiny checkpoints quantized by Kestrel (issue #4's GPU checks).

For each (model, type) below: `kestrel quantize` writes the GGUF (the same tensors `--quant` makes at
load), gguf-py dequantizes every tensor to float32, and HF transformers runs the tiny model with those
weights in float32 and in bfloat16 (eager attention, CPU), on the model's reference prompt
(testdata/<model>/reference.json). That is DESIGN.md's parity criterion applied to the quantized
weights: the GPU's logits must be within 1.5x HF bf16's error of HF fp32's, and its greedy tokens
equal to fp32's as far as bf16's follow them.

Writes testdata/quant-golden/<model>-<type>.json (HF bf16's rel L2, greedy tokens, agreement) and
<model>-<type>.fp32.f32 (HF fp32 logits [prompt, vocab], little-endian).
Usage (from the repo root, after `cargo build --release -p kestrel-cli`):
    python3 scripts/make_quant_golden.py [--kestrel target/release/kestrel]
Needs torch (CPU), transformers, gguf (gguf-py), numpy.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
TD = ROOT / "testdata"
OUT = TD / "quant-golden"
CASES = [("tiny-qwen3", "q8_0"), ("tiny-qwen3", "q4_0"), ("tiny-qwen3", "q4_k_m"),
         ("tiny-qwen2", "q8_0"), ("tiny-qwen2", "q4_k_m")]
N_GREEDY = 16

torch.set_num_threads(2)


def hf_name(gguf_name: str) -> str:
    """GGUF tensor name -> HF parameter name (Qwen2/Qwen3)."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, layer, rest = gguf_name.split(".", 2)
    sub = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
           "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
           "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
    base, kind = rest.rsplit(".", 1)
    return f"model.layers.{layer}.{sub[base]}.{kind}"


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].to(torch.float32)


@torch.no_grad()
def greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Argmax tokens and each step's top1 - top2 logit margin."""
    ids, margins = list(prompt), []
    for _ in range(n):
        top = torch.topk(logits(model, ids)[-1], 2)
        ids.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
    return ids[len(prompt):], margins


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kestrel", default=str(ROOT / "target/release/kestrel"))
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    for model_dir, qtype in CASES:
        src = TD / model_dir
        ref = json.loads((src / "reference.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            gguf_path = Path(tmp) / "q.gguf"
            subprocess.run([a.kestrel, "quantize", str(src), str(gguf_path), "--type", qtype],
                           check=True, capture_output=True)
            reader = GGUFReader(str(gguf_path))
            weights = {}
            types = {}
            for t in reader.tensors:
                shape = [int(x) for x in reversed(t.shape)]
                values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
                weights[hf_name(t.name)] = torch.from_numpy(values.copy())
                types[t.name] = t.tensor_type.name
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        state = model.state_dict()
        for name, value in weights.items():
            assert state[name].shape == value.shape, (name, state[name].shape, value.shape)
            state[name].copy_(value)
        if model.config.tie_word_embeddings:
            assert "lm_head.weight" not in weights
        prompt, gprompt = ref["prompt_tokens"], ref["greedy_prompt_tokens"]
        fp32 = logits(model, prompt)
        g32, margins = greedy(model, gprompt, N_GREEDY)
        model = model.to(torch.bfloat16)
        bf16 = logits(model, prompt)
        g16, _ = greedy(model, gprompt, N_GREEDY)
        agree = next((i for i, (x, y) in enumerate(zip(g32, g16)) if x != y), len(g32))
        stem = f"{model_dir}-{qtype}"
        fp32.numpy().astype("<f4").tofile(OUT / f"{stem}.fp32.f32")
        meta = {
            "model": model_dir, "type": qtype, "prompt_tokens": prompt, "greedy_prompt_tokens": gprompt,
            "logits_file": f"{stem}.fp32.f32", "logits_shape": list(fp32.shape),
            "hf_bf16_rel_l2": rel_l2(bf16, fp32),
            "hf_bf16_rms_abs": float((bf16.double() - fp32.double()).pow(2).mean().sqrt()),
            "greedy_fp32": g32, "greedy_fp32_top1_top2_margins": margins, "greedy_bf16": g16,
            "hf_bf16_greedy_agree_prefix": agree, "tensor_types": types,
            "notes": "weights: `kestrel quantize --type %s` of testdata/%s, dequantized by gguf-py; HF "
                     "transformers, eager attention, CPU; fp32 logits teacher-forced over prompt_tokens; "
                     "bf16 = the same weights cast to bfloat16. Made by scripts/make_quant_golden.py."
                     % (qtype, model_dir),
        }
        (OUT / f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{stem}: HF bf16 rel L2 {meta['hf_bf16_rel_l2']:.4e}, greedy agree {agree}/{N_GREEDY}")


if __name__ == "__main__":
    main()
