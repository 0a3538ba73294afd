#!/usr/bin/env python3
"""Small Qwen3 GGUF files quantized BY LLAMA.CPP, and llama.cpp's logits on them (issue #4: Kestrel must
run every tensor of llama.cpp's Q8_0, Q4_0 and Q4_K_M files, on the CPU and on the GPU).

What it makes, in testdata/llama-cpp-quant/:
  q8_0.gguf, q4_0.gguf, q4_k_m.gguf
      one random-weight Qwen3 (hidden 256, ffn 512, 3 layers, 4 query heads of 64, 2 KV heads, tied
      embeddings, the 512-id vocabulary of testdata/tiny-qwen3), written as an F32 GGUF with the metadata
      and tokenizer of testdata/tiny-qwen3/tiny-qwen3-f32.gguf (arch numbers changed), then quantized by
      llama.cpp itself: llama_model_quantize with llama_model_quantize_default_params() and ftype
      LLAMA_FTYPE_MOSTLY_Q8_0 (7), Q4_0 (2), Q4_K_M (15). Every matrix row is whole 256-weight
      super-blocks, so Q4_K_M really holds Q4_K and Q6_K (llama.cpp's use_more_bits gives the last of
      the 3 layers Q6_K attn_v / ffn_down; the tied token_embd, being the output too, is Q6_K in the
      Q4_0 and Q4_K_M files). The F32 intermediate (7.6 MB) is not kept: this script remakes it.
      Planted like the tiny golden models (scripts/make_tiny_golden.py): k_norm gains up to 96.5,
      q_norm gains 10-18, two outlier embedding dims (x30, x45) that the final norm damps, one large
      row per down_proj (x12).
  <type>.llama_cpp.f32
      llama.cpp's logits at every position of TOKENS (24 ids drawn with a fixed seed from the 480
      ordinary tokens, no special tokens), one batch, raw little-endian float32 [24, 512] row-major.
      llama.cpp CPU build, n_ctx=64, n_batch=64, n_threads=2, flash_attn off, KV cache F32
      (type_k = type_v = 0: the cache then adds no rounding of its own; the distance of llama.cpp's
      default F16 cache to it is recorded as llama_cpp_f16_kv_rel_l2).
  <type>.hf_fp32.f32
      HF transformers (float32, eager attention) on the same file's weights dequantized to f32 by gguf-py:
      the exact computation over the quantized weights, same layout.
  reference.json
      tokens, probe_tokens (16 sequences of 24, the first is tokens), and per file: sha256, size, the
      type of every tensor (read back with gguf.GGUFReader), which tensors are Q4_K / Q6_K, the logits
      files, HF's own bfloat16 run on the dequantized weights vs its fp32 run (DESIGN.md's parity
      yardstick) on tokens and pooled over probe_tokens, a greedy prompt with HF fp32's greedy tokens
      and their top1-top2 margins (clear ones: see main) and how far HF's bf16 run follows them.

Used by crates/kestrel/tests/llama_cpp_quant.rs (CPU) and crates/kestrel-cuda/tests/gpu_llama_cpp_quant.rs.

Made with llama-cpp-python 0.3.36 (llama_cpp.__version__; CPU build, AVX-512 machine), gguf 0.19,
transformers 5.24, torch (CPU). Deterministic but for llama.cpp's version: rerun from the repo root with
    python3 scripts/make_llama_cpp_quant_models.py
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import torch
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "llama-cpp-quant"
TEMPLATE = ROOT / "testdata" / "tiny-qwen3" / "tiny-qwen3-f32.gguf"

SEED = 20251126
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 256, 512, 3, 4, 2, 64
EPS, THETA, CTX = 1e-6, 1_000_000.0, 2048
BASE_VOCAB = 480  # ordinary (BPE) ids of the tiny tokenizer; 480.. are added/special tokens and padding
FTYPES = {
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}
N_TOKENS = 24
N_GREEDY_PROMPT = 8
N_GREEDY = 8
GREEDY_CLEAR = 4  # greedy tokens the GPU test compares
N_PROBES = 16  # sequences of N_TOKENS (the first is TOKENS) HF's bf16 error is pooled over

torch.set_num_threads(2)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

def hf_config(vocab: int):
    from transformers import Qwen3Config

    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, hidden_act="silu",
        rms_norm_eps=EPS, rope_parameters={"rope_type": "default", "rope_theta": THETA},
        max_position_embeddings=CTX, tie_word_embeddings=True, attention_bias=False,
        use_sliding_window=False, sliding_window=None, max_window_layers=LAYERS, bos_token_id=None,
        eos_token_id=482, pad_token_id=480,
    )
    cfg._attn_implementation = "eager"
    return cfg


def make_weights(vocab: int, n_tok: int) -> tuple[dict[str, np.ndarray], dict]:
    """HF-named float32 weights ([out, in] like torch), seeded, with the planted hard cases."""
    from transformers import Qwen3ForCausalLM

    rng = np.random.default_rng(SEED)
    rnd = lambda shape, std: (rng.standard_normal(shape) * std).astype(np.float32)  # noqa: E731
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Qwen3ForCausalLM(hf_config(vocab)).state_dict().items()}
    w: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name == "lm_head.weight":
            continue  # tied
        if name.endswith("norm.weight"):
            w[name] = 1.0 + rnd(shape, 0.2)
        elif name == "model.embed_tokens.weight":
            w[name] = rnd(shape, 0.1)
        else:
            w[name] = rnd(shape, 0.04)
    planted: dict = {}
    emb = w["model.embed_tokens.weight"]
    outliers = {7: 30.0, 40: 45.0}
    for d, s in outliers.items():
        emb[:n_tok, d] *= s
        w["model.norm.weight"][d] = 0.05  # as trained checkpoints damp them before the tied lm_head
    emb[n_tok:] = rnd((vocab - n_tok, HIDDEN), 0.01)  # padding rows: never the argmax
    planted["embedding_outlier_dims"] = {str(d): s for d, s in outliers.items()}
    planted["padding_rows_from"] = n_tok
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        row = (11 + 17 * i) % HIDDEN
        w[p + "mlp.down_proj.weight"][row, :] *= 12.0
        k_ch = {(3 + 5 * i) % HEAD_DIM: 96.5 - 12.0 * i, (20 + 3 * i) % HEAD_DIM: 64.0 + 8.0 * i}
        q_ch = {(9 + i) % HEAD_DIM: 18.0, (27 - i) % HEAD_DIM: 10.0, (14 + 2 * i) % HEAD_DIM: 12.0}
        for c, v in k_ch.items():
            w[p + "self_attn.k_norm.weight"][c] = v
        for c, v in q_ch.items():
            w[p + "self_attn.q_norm.weight"][c] = v
        planted.setdefault("down_proj_large_rows", {})[str(i)] = {"row": row, "scale": 12.0}
        planted.setdefault("k_norm_large", {})[str(i)] = {str(c): v for c, v in k_ch.items()}
        planted.setdefault("q_norm_large", {})[str(i)] = {str(c): v for c, v in q_ch.items()}
    return w, planted


def write_f32_gguf(path: Path, weights: dict[str, np.ndarray], hf_to_gguf: dict[str, str]) -> None:
    """The template's metadata and tokenizer in its key order; this model's arch numbers and tensors."""
    t = gguf.GGUFReader(str(TEMPLATE))
    arch = "qwen3"
    ours = {
        f"{arch}.block_count": LAYERS, f"{arch}.context_length": CTX, f"{arch}.embedding_length": HIDDEN,
        f"{arch}.feed_forward_length": FFN, f"{arch}.attention.head_count": HEADS,
        f"{arch}.attention.head_count_kv": KV_HEADS, f"{arch}.rope.freq_base": THETA,
        f"{arch}.attention.layer_norm_rms_epsilon": EPS, f"{arch}.attention.key_length": HEAD_DIM,
        f"{arch}.attention.value_length": HEAD_DIM, "general.name": "Kestrel llama.cpp quant test",
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
    }
    w = gguf.GGUFWriter(str(path), arch)
    seen = set()
    for key, field in t.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        seen.add(key)
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, ours.get(key, field.contents()), vtype, sub)
    assert set(ours) <= seen, set(ours) - seen
    for hf_name, a in weights.items():
        w.add_tensor(hf_to_gguf[hf_name], a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p) == 0, dst


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------

def dequantized(path: Path, gguf_to_hf: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    r = gguf.GGUFReader(str(path))
    sd, types = {}, {}
    for t in r.tensors:
        types[t.name] = t.tensor_type.name
        a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        sd[gguf_to_hf[t.name]] = torch.from_numpy(a.reshape([int(x) for x in reversed(t.shape)]))
    return sd, types


def hf_model(sd: dict[str, torch.Tensor], vocab: int, dtype: torch.dtype):
    from transformers import Qwen3ForCausalLM

    m = Qwen3ForCausalLM(hf_config(vocab)).eval()
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    return m.to(dtype)


@torch.no_grad()
def teacher_forced(model, ids: list[int]) -> np.ndarray:
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


def greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    ids, toks, margins = list(prompt), [], []
    for _ in range(n):
        last = teacher_forced(model, ids)[-1]
        top = np.argsort(last)[::-1][:2]
        toks.append(int(top[0]))
        margins.append(float(last[top[0]] - last[top[1]]))
        ids.append(int(top[0]))
    return toks, margins


def pooled_bf16_error(fp32, bf16, probes: list[list[int]]) -> dict:
    """HF bf16 vs fp32 over all probe sequences: ||all differences|| / ||all fp32 logits||, and per
    sequence. One sequence is a noisy yardstick here: the k_norm gains make attention nearly hard, so a
    rounding flips which key wins at a few positions, and the error of one 24-token sequence ranges over
    a factor 3 from sequence to sequence; pooled over 16 it varies by ~10%."""
    num = den = 0.0
    per = []
    for toks in probes:
        a, b = teacher_forced(bf16, toks).astype(np.float64), teacher_forced(fp32, toks).astype(np.float64)
        d, n = float(((a - b) ** 2).sum()), float((b ** 2).sum())
        num, den = num + d, den + n
        per.append(round((d / n) ** 0.5, 5))
    return {"pooled": (num / den) ** 0.5, "per_sequence": per}


def llama_logits(path: Path, tokens: list[int], kv_f32: bool) -> np.ndarray:
    kw = {"type_k": 0, "type_v": 0} if kv_f32 else {}
    llm = Llama(str(path), n_ctx=64, n_batch=64, n_threads=2, logits_all=True, flash_attn=False,
                verbose=False, **kw)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    del llm
    return out


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    template = gguf.GGUFReader(str(TEMPLATE))
    vocab = len(template.fields["tokenizer.ggml.tokens"].data)
    n_tok = BASE_VOCAB + 7  # the tokenizer's ids; the rest up to `vocab` is [PADn] filler
    weights, planted = make_weights(vocab, n_tok)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, LAYERS)
    hf_to_gguf = {k: tmap.get_name(k, try_suffixes=(".weight", ".bias")) for k in weights}
    gguf_to_hf = {v: k for k, v in hf_to_gguf.items()}

    rng = np.random.default_rng(SEED + 1)
    tokens = [int(x) for x in rng.integers(0, BASE_VOCAB, size=N_TOKENS)]
    probes = [tokens] + [[int(x) for x in rng.integers(0, BASE_VOCAB, size=N_TOKENS)]
                         for _ in range(N_PROBES - 1)]
    files = {}
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "f32.gguf"
        write_f32_gguf(f32, weights, hf_to_gguf)
        print(f"F32 intermediate: {f32.stat().st_size} bytes (not kept)")
        for qname, ftype in FTYPES.items():
            path = OUT / f"{qname}.gguf"
            llama_quantize(f32, path, ftype)
            sd, types = dequantized(path, gguf_to_hf)
            fp32 = hf_model(sd, vocab, torch.float32)
            bf16 = hf_model(sd, vocab, torch.bfloat16)
            models[qname] = (fp32, bf16)
            exact = teacher_forced(fp32, tokens)
            exact_bf16 = teacher_forced(bf16, tokens)
            llama = llama_logits(path, tokens, kv_f32=True)
            llama_f16kv = llama_logits(path, tokens, kv_f32=False)
            assert llama.shape == exact.shape == (N_TOKENS, vocab), (llama.shape, exact.shape)
            llama.astype("<f4").tofile(OUT / f"{qname}.llama_cpp.f32")
            exact.astype("<f4").tofile(OUT / f"{qname}.hf_fp32.f32")
            counts: dict[str, int] = {}
            for ty in types.values():
                counts[ty] = counts.get(ty, 0) + 1
            files[qname] = {
                "gguf": f"{qname}.gguf",
                "llama_ftype": int(ftype),
                "bytes": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "type_counts": dict(sorted(counts.items())),
                "q4_k_tensors": sorted(n for n, ty in types.items() if ty == "Q4_K"),
                "q6_k_tensors": sorted(n for n, ty in types.items() if ty == "Q6_K"),
                "tensor_types": types,
                "llama_cpp_logits_file": f"{qname}.llama_cpp.f32",
                "hf_fp32_logits_file": f"{qname}.hf_fp32.f32",
                "logits_shape": [N_TOKENS, vocab],
                "llama_cpp_vs_hf_fp32_rel_l2": rel_l2(llama, exact),
                "llama_cpp_argmax_agree_hf_fp32": int((llama.argmax(-1) == exact.argmax(-1)).sum()),
                "llama_cpp_f16_kv_rel_l2": rel_l2(llama_f16kv, llama),
                "hf_bf16_rel_l2": rel_l2(exact_bf16, exact),
                "hf_bf16_argmax_agree": int((exact_bf16.argmax(-1) == exact.argmax(-1)).sum()),
                "hf_bf16_rel_l2_probes": pooled_bf16_error(fp32, bf16, probes),
            }
            f = files[qname]
            print(f"{qname}: {f['bytes']} bytes, types {f['type_counts']}; logits std {exact.std():.3f}; "
                  f"llama.cpp vs HF fp32 (dequantized) rel L2 {f['llama_cpp_vs_hf_fp32_rel_l2']:.3e} "
                  f"argmax {f['llama_cpp_argmax_agree_hf_fp32']}/{N_TOKENS}; llama.cpp F16 KV vs F32 KV "
                  f"{f['llama_cpp_f16_kv_rel_l2']:.3e}; HF bf16 vs fp32 {f['hf_bf16_rel_l2']:.3e} "
                  f"argmax {f['hf_bf16_argmax_agree']}/{N_TOKENS}; pooled over {N_PROBES} sequences "
                  f"{f['hf_bf16_rel_l2_probes']['pooled']:.3e} (per sequence "
                  f"{min(f['hf_bf16_rel_l2_probes']['per_sequence']):.3f}..{max(f['hf_bf16_rel_l2_probes']['per_sequence']):.3f})")

    # Greedy prompts, one per file: the first seeded draw whose fp32 path has top1-top2 margins >= 0.5
    # (a quarter of the logits' spread) over the first GREEDY_CLEAR tokens, >= 0.05 over all N_GREEDY,
    # and which HF's bf16 run follows for all N_GREEDY tokens. The rounding of any bf16 or 8-bit engine
    # moves a logit here by ~0.1 at most positions (more at a few chaotic ones), so smaller margins
    # would test luck.
    for qname, (fp32, bf16) in models.items():
        grng = np.random.default_rng(SEED + 2)
        for attempt in range(500):
            gprompt = [int(x) for x in grng.integers(0, BASE_VOCAB, size=N_GREEDY_PROMPT)]
            toks, margins = greedy(fp32, gprompt, N_GREEDY)
            if min(margins[:GREEDY_CLEAR]) < 0.5 or min(margins) < 0.05 or len(set(toks)) < 2:
                continue
            toks_bf, _ = greedy(bf16, gprompt, N_GREEDY)
            agree = next((i for i, (a, b) in enumerate(zip(toks_bf, toks)) if a != b), N_GREEDY)
            if agree == N_GREEDY:
                break
        else:
            raise SystemExit(f"{qname}: no clear greedy prompt found")
        files[qname]["greedy_prompt_tokens"] = gprompt
        files[qname]["greedy_tokens"] = toks
        files[qname]["greedy_top1_top2_margins"] = [round(m, 5) for m in margins]
        files[qname]["hf_bf16_greedy_agree_prefix"] = agree
        print(f"{qname}: greedy prompt after {attempt + 1} draws {gprompt} -> {toks}, margins "
              f"{[round(m, 3) for m in margins]}")

    ref = {
        "llama_cpp_python": llama_cpp.__version__,
        "gguf_py": getattr(gguf, "__version__", "0.19"),
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "model": {
            "arch": "qwen3", "hidden_size": HIDDEN, "intermediate_size": FFN, "num_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
            "vocab_size": vocab, "tie_word_embeddings": True, "seed": SEED, "planted": planted,
        },
        "tokens": tokens,
        "probe_tokens": probes,
        "settings": "llama.cpp CPU, n_ctx=64, n_batch=64 (all tokens in one batch), n_threads=2, flash_attn off, "
                    "logits at every position, KV cache F32 (type_k = type_v = 0)",
        "notes": "*.llama_cpp.f32: llama.cpp's logits on the file; *.hf_fp32.f32: HF transformers float32 (eager) "
                 "on the file's weights dequantized by gguf-py (the exact computation): both raw little-endian "
                 "float32 [24, vocab] row-major over `tokens`, teacher-forced. llama_cpp_f16_kv_rel_l2: llama.cpp "
                 "with its default F16 KV cache vs its F32-cache logits. hf_bf16_*: HF's bfloat16 run (weights "
                 "and compute in bf16) of the same dequantized weights vs its fp32 run (DESIGN.md's parity "
                 "yardstick) on tokens; hf_bf16_rel_l2_probes: the same pooled over all probe_tokens "
                 "(sqrt of summed squared differences over summed squares) and per sequence. greedy_tokens: "
                 "HF fp32 argmax continuation of the file's greedy_prompt_tokens (full forward per step), "
                 "top1-top2 margins >= 0.5 over the first 4. rel L2 = ||a - b||_2 / ||b||_2 over the whole matrix. "
                 "Made by scripts/make_llama_cpp_quant_models.py.",
        "files": files,
    }
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    total = 0
    for f in sorted(OUT.iterdir()):
        total += f.stat().st_size
        print(f"  {f.relative_to(ROOT)}  {f.stat().st_size}")
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
