#!/usr/bin/env python3
"""HF transformers reference for a full-size checkpoint as Kestrel quantizes it (issue #4, on the GPU
machine): DESIGN.md's parity check (kestrel_cuda_gpu_parity with KESTREL_PARITY_QUANT) then holds the
quantized model to HF's fp32 and bf16 runs of the same dequantized weights.

  python3 scripts/make_quant_reference.py --base DIR --gguf Q.gguf --out OUT

DIR: a reference made by scripts/make_full_size_reference.py (checkpoint + reference.json); Q.gguf:
`kestrel quantize DIR Q.gguf --type T`. Writes OUT/reference.json with DIR's sequences, tokens and
structure, and HF's logits for the GGUF's weights (dequantized by gguf-py) in fp32 and bf16.
Needs torch, transformers, gguf (gguf-py), numpy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_full_size_reference import greedy, load, logits_of, rel_l2  # noqa: E402
from make_quant_golden import hf_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--gguf", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = json.loads((a.base / "reference.json").read_text())
    attn, dev = ref["attn_implementation"], a.device
    a.out.mkdir(parents=True, exist_ok=True)
    model = load(a.base, torch.float32, attn, dev)
    state = model.state_dict()
    types = {}
    with torch.no_grad():
        for t in GGUFReader(str(a.gguf)).tensors:
            shape = [int(x) for x in reversed(t.shape)]
            values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
            name = hf_name(t.name)
            assert tuple(state[name].shape) == tuple(shape), (name, state[name].shape, shape)
            state[name].copy_(torch.from_numpy(values.copy()))
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    g = ref["greedy"]
    prompt = next(s for s in ref["sequences"] if s["name"] == g["sequence"])["tokens"][: g["prompt_len"]]
    fp32 = {s["name"]: logits_of(model, s["tokens"], dev) for s in ref["sequences"]}
    g32, m32 = greedy(model, prompt, g["steps"], dev)
    model = model.to(torch.bfloat16)
    g16, _ = greedy(model, prompt, g["steps"], dev)
    agree = next((i for i, (x, y) in enumerate(zip(g16, g32)) if x != y), len(g32))
    for s in ref["sequences"]:
        P, f32 = s["prompt_len"], fp32[s["name"]]
        bf = logits_of(model, s["tokens"], dev)
        s["hf_bf16_rel_l2_prefill"] = rel_l2(bf[:P], f32[:P])
        s["hf_bf16_rel_l2_decode"] = rel_l2(bf[P:], f32[P:])
        s["hf_bf16_rel_l2_per_position"] = [round(rel_l2(bf[i], f32[i]), 7) for i in range(len(bf))]
        s["hf_bf16_argmax_agree"] = int((bf.argmax(-1) == f32.argmax(-1)).sum())
        for key, t in (("logits_fp32", f32), ("logits_bf16", bf)):
            t.cpu().contiguous().numpy().astype("<f4").tofile(a.out / s[key])
        print(f"{s['name']}: HF bf16 vs fp32 rel L2 prefill {s['hf_bf16_rel_l2_prefill']:.3e}, "
              f"decode {s['hf_bf16_rel_l2_decode']:.3e}", flush=True)
    ref["greedy"].update(fp32_tokens=g32, fp32_top1_top2_margins=m32, bf16_tokens=g16, hf_bf16_agree=agree)
    ref["quantized"] = {"gguf": a.gguf.name, "tensor_types": types, "base": str(a.base)}
    ref.pop("hf_bf16_other_attention", None)
    ref["notes"] += (" Quantized: the weights are those of the GGUF named under 'quantized' (Kestrel's "
                     "quantizer), dequantized by gguf-py; made by scripts/make_quant_reference.py.")
    (a.out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {a.out}/reference.json ({types}); HF bf16 greedy follows fp32 for {agree}/{len(g32)}")


if __name__ == "__main__":
    main()
