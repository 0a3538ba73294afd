#!/usr/bin/env python3
"""llama.cpp's choice of tensor types per quantization ftype (llama_tensor_get_type), as a golden table.

For each model below and each ftype (Q8_0 = 7, Q4_0 = 2, Q4_K_M = 15), quantizes the F32 GGUF with
llama.cpp itself (llama-cpp-python's llama_model_quantize, default params) and records the type of every
tensor of the result, read back with the `gguf` package. Writes testdata/quant/llama_cpp_plan.json, which
crates/kestrel/src/quant/plan.rs's tests compare Kestrel's plan against, tensor by tensor.

Models:
  tiny-qwen3       testdata/tiny-qwen3/tiny-qwen3-f32.gguf (3 layers, hidden 64, tied embeddings)
  tiny-qwen2       testdata/tiny-qwen2/tiny-qwen2-f32.gguf (2 layers, hidden 64, untied, qkv bias)
  synth-qwen3-256  made here: 12 layers, hidden 256, ffn 768, untied: rows that are multiples of 256, so
                   the K-quants and the per-layer Q6_K rule (use_more_bits) apply; 12 layers tell layer
                   order from name order (blk.10 sorts before blk.2)
  synth-qwen2-tied made here: 9 layers, hidden 256, ffn 288 (ffn_down rows of 288: the fallback), tied
The synthetic models are random F32 weights: only names, shapes and layer counts matter to the plan.

Usage: python3 scripts/llama_cpp_quant_plan.py      (needs llama-cpp-python, gguf, numpy)
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "quant" / "llama_cpp_plan.json"
FTYPES = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
          "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}


def synth_gguf(path: Path, arch: str, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int,
               head_dim: int, vocab: int, tied: bool) -> None:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(path.stem)
    w.add_block_count(layers)
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", vocab, hidden)
    for i in range(layers):
        p = f"blk.{i}."
        t(p + "attn_norm.weight", hidden)
        t(p + "attn_q.weight", heads * head_dim, hidden)
        t(p + "attn_k.weight", kv_heads * head_dim, hidden)
        t(p + "attn_v.weight", kv_heads * head_dim, hidden)
        if arch == "qwen2":
            t(p + "attn_q.bias", heads * head_dim)
            t(p + "attn_k.bias", kv_heads * head_dim)
            t(p + "attn_v.bias", kv_heads * head_dim)
        else:
            t(p + "attn_q_norm.weight", head_dim)
            t(p + "attn_k_norm.weight", head_dim)
        t(p + "attn_output.weight", hidden, heads * head_dim)
        t(p + "ffn_norm.weight", hidden)
        t(p + "ffn_gate.weight", ffn, hidden)
        t(p + "ffn_up.weight", ffn, hidden)
        t(p + "ffn_down.weight", hidden, ffn)
    t("output_norm.weight", hidden)
    if not tied:
        t("output.weight", vocab, hidden)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src: Path, dst: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, f"llama_model_quantize({src}, ftype {ftype}) returned {rc}"


def tensor_table(path: Path) -> list[dict]:
    r = gguf.GGUFReader(str(path))
    # PyTorch order (outermost first), as Kestrel's HostTensor shapes.
    return [{"name": t.name, "shape": [int(d) for d in reversed(t.shape)], "type": t.tensor_type.name}
            for t in r.tensors]


def main() -> None:
    llama_cpp.llama_backend_init()
    out = {
        "llama_cpp_python": llama_cpp.__version__,
        "notes": "llama.cpp's llama_model_quantize with default params (no imatrix, not pure) on F32 GGUFs; "
                 "types read back with gguf-py. shape is in PyTorch order (rows, cols).",
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth_gguf(tmp / "synth-qwen3-256.gguf", "qwen3", 12, 256, 768, 4, 2, 64, 320, tied=False)
        synth_gguf(tmp / "synth-qwen2-tied.gguf", "qwen2", 9, 256, 288, 4, 2, 64, 320, tied=True)
        models = {
            "tiny-qwen3": ROOT / "testdata/tiny-qwen3/tiny-qwen3-f32.gguf",
            "tiny-qwen2": ROOT / "testdata/tiny-qwen2/tiny-qwen2-f32.gguf",
            "synth-qwen3-256": tmp / "synth-qwen3-256.gguf",
            "synth-qwen2-tied": tmp / "synth-qwen2-tied.gguf",
        }
        for name, src in models.items():
            r = gguf.GGUFReader(str(src))
            arch = r.fields["general.architecture"].contents()
            n_layers = int(r.fields[f"{arch}.block_count"].contents())
            entry = {"arch": arch, "num_layers": n_layers, "plans": {}}
            for qname, ftype in FTYPES.items():
                dst = tmp / f"{name}-{qname}.gguf"
                quantize(src, dst, ftype)
                table = tensor_table(dst)
                entry["plans"][qname] = table
                counts: dict[str, int] = {}
                for e in table:
                    counts[e["type"]] = counts.get(e["type"], 0) + 1
                print(f"{name} {qname}: {counts}")
            out["models"][name] = entry
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
