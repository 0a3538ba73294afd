#!/usr/bin/env python3
"""llama.cpp on the GGUF files `kestrel quantize` writes: proof that llama.cpp loads them, and its logits
as the golden for crates/kestrel/tests/quantize_gguf.rs.

For each model (testdata/tiny-qwen3, tiny-qwen2, tiny-qwen3-256) and type (q8_0, q4_0, q4_k_m):
  1. `kestrel quantize testdata/<model> <tmp>.gguf --type <type>` (the debug binary, built here);
  2. llama.cpp (llama-cpp-python) loads that file and evaluates TOKENS (the first 16 prompt tokens of
     testdata/tiny-qwen3/reference.json) in one batch, logits at every position, with an F32 KV cache
     (so the cache adds no rounding of its own) -> testdata/quant/llama_cpp_<model>_<type>.f32;
     also with llama.cpp's default F16 KV cache, whose distance to the F32 run is recorded as
     llama.cpp's own sensitivity to a rounding of that size;
  3. llama.cpp quantizes the same weights itself (llama_model_quantize on an F32 GGUF of them) and
     the two files are compared tensor by tensor: same types, and how many tensors have identical bytes.
Writes testdata/quant/llama_cpp_logits.json.

testdata/tiny-qwen3-256 (made here once if missing, random BF16 weights, hidden 256, 2 layers, tied
embeddings) has rows of 256, so Q4_K_M puts real Q4_K and Q6_K tensors in it; the other tiny models' rows
of 64/192 take llama.cpp's fallbacks (Q5_0, Q8_0).

Usage: python3 scripts/llama_cpp_quantized_logits.py   (needs llama-cpp-python, gguf, numpy, torch,
transformers, safetensors; cargo)
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "quant"
MODELS = ["tiny-qwen3", "tiny-qwen2", "tiny-qwen3-256"]
TYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}
N_TOKENS = 16


def make_tiny_qwen3_256(d: Path) -> None:
    """Random BF16 Qwen3 with 256-element rows (hidden 256, 4 heads of 64, 2 KV heads, ffn 256)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(256)
    cfg = Qwen3Config(vocab_size=512, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=482, pad_token_id=480,
                      bos_token_id=None, rope_theta=1e6)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms: around 1, with a few large k_norm gains as in real Qwen3
                p.copy_(1 + 0.1 * torch.randn_like(p))
                if "k_norm" in name:
                    p[5] = 20.0
            else:
                p.normal_(0, 0.05)
    d.mkdir(parents=True)
    model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "testdata" / "tiny-qwen3" / f, d / f)


def f32_gguf_of(model_dir: Path, out: Path) -> Path:
    """An F32 GGUF of a Qwen3 checkpoint's weights, for llama.cpp's own quantization (the tiny models
    have theirs committed)."""
    existing = model_dir / f"{model_dir.name}-f32.gguf"
    if existing.exists():
        return existing
    import torch
    from safetensors.torch import load_file as load_torch

    cfg = json.loads((model_dir / "config.json").read_text())
    arch = cfg["model_type"]
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, cfg["num_hidden_layers"])
    for f in sorted(model_dir.glob("*.safetensors")):
        for name, t in load_torch(str(f)).items():
            w.add_tensor(tmap.get_name(name, try_suffixes=(".weight", ".bias")), t.to(torch.float32).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p) == 0


def compare_tensors(ours: Path, theirs: Path) -> dict:
    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(theirs))
    ta = {t.name: t for t in a.tensors}
    same_types = all(t.tensor_type == ta[t.name].tensor_type for t in b.tensors) and len(ta) == len(b.tensors)
    identical = [t.name for t in b.tensors
                 if np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(ta[t.name].data).view(np.uint8))]
    return {"same_types_as_llama_quantize": bool(same_types),
            "identical_bytes": len(identical), "tensors": len(b.tensors),
            "differing": sorted(set(ta) - set(identical))}


def logits(path: Path, tokens: list[int], kv_f32: bool) -> np.ndarray:
    kw = {"type_k": 0, "type_v": 0} if kv_f32 else {}
    llm = Llama(str(path), n_ctx=64, n_batch=64, n_threads=2, logits_all=True, verbose=False, **kw)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    del llm
    return out


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    d256 = ROOT / "testdata" / "tiny-qwen3-256"
    if not d256.exists():
        make_tiny_qwen3_256(d256)
    subprocess.run(["cargo", "build", "-p", "kestrel-cli"], cwd=ROOT, check=True)
    kestrel = ROOT / "target" / "debug" / "kestrel"
    ref = json.loads((ROOT / "testdata/tiny-qwen3/reference.json").read_text())
    tokens = ref["prompt_tokens"][:N_TOKENS]
    out = {
        "llama_cpp_python": llama_cpp.__version__,
        "tokens": tokens,
        "settings": "llama.cpp CPU (AVX2), n_ctx=64, n_batch=64 (all tokens in one batch), logits at every "
                    "position, KV cache F32 (type_k = type_v = 0)",
        "notes": "logits_file: raw little-endian float32 [len(tokens), vocab], row-major. "
                 "llama_cpp_f16_kv_rel_l2: llama.cpp's own logits with its default F16 KV cache vs the F32 one. "
                 "tensors: kestrel's file vs llama.cpp quantizing the same F32 weights (types, identical bytes).",
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model in MODELS:
            mdir = ROOT / "testdata" / model
            f32 = f32_gguf_of(mdir, tmp / f"{model}-f32.gguf")
            for qname, ftype in TYPES.items():
                ours = tmp / f"{model}-{qname}.gguf"
                subprocess.run([str(kestrel), "quantize", str(mdir), str(ours), "--type", qname], check=True)
                theirs = tmp / f"{model}-{qname}-llama.gguf"
                llama_quantize(f32, theirs, ftype)
                got = logits(ours, tokens, kv_f32=True)
                f16kv = logits(ours, tokens, kv_f32=False)
                name = f"llama_cpp_{model}_{qname}.f32"
                got.astype("<f4").tofile(OUT / name)
                case = {
                    "model": f"testdata/{model}",
                    "type": qname,
                    "gguf_sha256": hashlib.sha256(ours.read_bytes()).hexdigest(),
                    "logits_file": name,
                    "logits_shape": list(got.shape),
                    "llama_cpp_f16_kv_rel_l2": rel_l2(f16kv, got),
                    "tensors": compare_tensors(ours, theirs),
                }
                out["cases"][f"{model}/{qname}"] = case
                print(f"{model} {qname}: f16-KV rel L2 {case['llama_cpp_f16_kv_rel_l2']:.2e}; "
                      f"tensors {case['tensors']['identical_bytes']}/{case['tensors']['tensors']} identical, "
                      f"types same {case['tensors']['same_types_as_llama_quantize']}")
    (OUT / "llama_cpp_logits.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
