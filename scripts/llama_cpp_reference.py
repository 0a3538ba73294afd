#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) oracle outputs for the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF.

Writes into testdata/real/:
  qwen25_coder_logits.json        fixed chat-templated prompt: llama.cpp's token ids (special tokens
                                  parsed), last-position logits stats, top-10, greedy next 16 tokens
  qwen25_coder_last_logits.f32    raw little-endian float32 last-position logits [n_vocab]
  qwen25_tokenize.json            llama.cpp's token ids for a corpus of varied strings
  qwen25_chat.json                the Fibonacci chat prompt rendered with the model's own template,
                                  its tokens, and llama.cpp's greedy answer (first 64 tokens)
  tiny_gguf_llama_cpp.json        cross-check: llama.cpp on testdata/tiny-*/tiny-*-f32.gguf vs HF fp32

Usage: python3 scripts/llama_cpp_reference.py [path/to/model.gguf]
(default $KESTREL_CACHE or ~/.cache/kestrel, models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf).
Needs llama-cpp-python (CPU build), numpy, jinja2. CPU, n_threads=2, n_ctx=512, temperature 0 (argmax).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from pathlib import Path

import jinja2
import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "real"
CACHE = Path(os.environ.get("KESTREL_CACHE", Path.home() / ".cache/kestrel"))
MODEL = CACHE / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

LOGITS_MESSAGES = [{"role": "user", "content": "What is 2+2? Answer briefly."}]
CHAT_QUESTION = "Write a Python function that returns the nth Fibonacci number."

TOKENIZE_CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing spaces   ",
    "It's, they're, we'll, I'd, you've, I'M, DON'T",
    "你好，世界！今天天气很好。",
    "机器学习模型需要大量的数据来训练。Mixed 中文 and English.",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tlet x: Vec<u32> = vec![1, 2, 3];\n\tprintln!(\"{:?}\", x);\n}\n",
    "for (int i = 0; i < n; ++i) {\r\n        sum += a[i];\r\n}",
    "I love pizza 🍕 and coffee ☕! 😀😃😄 🚀",
    "Family 👨‍👩‍👧‍👦, thumbs 👍🏽, flags 🇫🇷🇯🇵, heart ❤️",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e-6 0xFF 1,000,000",
    "Café naïve résumé Ångström — “quotes” … ½ °C ±",
    "e\u0301 (decomposed e-acute) vs \u00e9 (composed)",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after<|im_end|>",
    "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n<|fim_middle|>",
    "\n\n\n   \n\t\t  \n",
    "https://example.com/path?query=1&x=y#frag  user@example.org",
    "Привет мир! Γειά σου Κόσμε! مرحبا بالعالم こんにちは世界 안녕하세요",
    "",
    "a",
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def render(template: str, messages, add_generation_prompt=True) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            tools=None, bos_token="", eos_token="<|im_end|>")


def last_logits(llm: Llama) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def greedy(llm: Llama, prompt: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    """Resets, evaluates the prompt, returns its last-position logits and n argmax tokens."""
    llm.reset()
    llm.eval(prompt)
    first = last_logits(llm)
    logits, toks = first, []
    for _ in range(n):
        t = int(np.argmax(logits))
        toks.append(t)
        if t in (llm.token_eos(),):
            break
        llm.eval([t])
        logits = last_logits(llm)
    return first, toks


def piece(llm: Llama, t: int) -> str:
    return llm.detokenize([t], special=True).decode("utf-8", errors="backslashreplace")


def tiny_crosscheck() -> dict:
    out = {}
    for kind in ("qwen3", "qwen2"):
        d = ROOT / "testdata" / f"tiny-{kind}"
        g = d / f"tiny-{kind}-f32.gguf"
        if not g.exists():
            continue
        ref = json.loads((d / "reference.json").read_text())
        llm = Llama(str(g), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
        llm.eval(ref["prompt_tokens"])
        got = np.array(llm.scores[: len(ref["prompt_tokens"])], dtype=np.float32)
        want = np.fromfile(d / "logits.f32", "<f4").reshape(ref["logits_shape"])
        llm2 = Llama(str(g), n_ctx=128, n_threads=2, logits_all=False, verbose=False)
        _, toks = greedy(llm2, ref["greedy_prompt_tokens"], len(ref["greedy_tokens"]))
        chat = llm2.tokenize(ref["chat_prompt_text"].encode(), add_bos=False, special=True)
        out[kind] = {
            "gguf": str(g.relative_to(ROOT)),
            "rel_l2_vs_hf_fp32": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
            "max_abs_diff": float(np.abs(got - want).max()),
            "argmax_agree": int((got.argmax(1) == want.argmax(1)).sum()),
            "greedy_matches_hf": toks == ref["greedy_tokens"],
            "chat_tokens_match_hf": chat == ref["chat_prompt_tokens"],
        }
        print(f"tiny {kind}: llama.cpp vs HF fp32: {out[kind]}")
    out["notes"] = ("llama.cpp (default f16 KV cache, CPU) on the f32 GGUFs vs HF transformers fp32 logits.f32; "
                    "the KV cache in f16 is the main source of difference.")
    return out


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else MODEL
    OUT.mkdir(parents=True, exist_ok=True)
    digest = sha256(model)
    if digest != SHA256:
        print(f"warning: {model} sha256 {digest} != expected {SHA256}")
    llm = Llama(str(model), n_ctx=512, n_threads=2, logits_all=False, verbose=False, seed=0)
    template = llm.metadata["tokenizer.chat_template"]
    eos = llm.token_eos()
    common = {
        "model": model.name,
        "model_sha256": digest,
        "llama_cpp_python": llama_cpp.__version__,
        "settings": "n_ctx=512, n_threads=2, n_batch=512 (prompt in one batch), default f16 KV cache, CPU "
                    "(GGML_NATIVE=OFF, AVX2, FMA, F16C), temperature 0 = argmax of the raw logits",
    }

    # 1. Last-position logits for a fixed short chat prompt.
    text = render(template, LOGITS_MESSAGES)
    toks = llm.tokenize(text.encode(), add_bos=False, special=True)
    logits, gen = greedy(llm, toks, 16)
    # Determinism check: a second run gives the same logits.
    logits2, gen2 = greedy(llm, toks, 16)
    deterministic = bool(np.array_equal(logits, logits2)) and gen == gen2
    logits.astype("<f4").tofile(OUT / "qwen25_coder_last_logits.f32")
    top = np.argsort(-logits, kind="stable")[:10]
    stats = {
        "max": float(logits.max()), "min": float(logits.min()), "mean": float(logits.mean()),
        "std": float(logits.std()), "l2": float(np.linalg.norm(logits)),
        "top1_top2_margin": float(logits[top[0]] - logits[top[1]]),
    }
    j = {
        **common,
        "messages": LOGITS_MESSAGES,
        "prompt_text": text,
        "prompt_tokens": toks,
        "logits_file": "qwen25_coder_last_logits.f32",
        "logits_shape": [int(logits.shape[0])],
        "logits_stats": stats,
        "top10_ids": [int(t) for t in top],
        "top10_logits": [float(logits[t]) for t in top],
        "top10_pieces": [piece(llm, int(t)) for t in top],
        "greedy_tokens": gen,
        "greedy_text": llm.detokenize(gen, special=True).decode("utf-8", errors="replace"),
        "deterministic_across_two_runs": deterministic,
        "eos_token_id": eos,
        "notes": "Last-position logits after evaluating prompt_tokens in one batch with logits only for the last "
                 "position; greedy_tokens continue it by argmax, one token per eval (stops early at eos).",
    }
    (OUT / "qwen25_coder_logits.json").write_text(json.dumps(j, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"logits: prompt {len(toks)} tokens; stats {stats}")
    print(f"top10 {j['top10_ids']} {j['top10_pieces']}")
    print(f"greedy16 {gen} {j['greedy_text']!r}; deterministic {deterministic}")

    # 2. Tokenizer corpus.
    entries = []
    for s in TOKENIZE_CORPUS:
        ids = llm.tokenize(s.encode(), add_bos=False, special=True)
        e = {"text": s, "parse_special": True, "ids": ids,
             "detokenized": llm.detokenize(ids, special=True).decode("utf-8", errors="replace")}
        entries.append(e)
        if "<|" in s:
            ids2 = llm.tokenize(s.encode(), add_bos=False, special=False)
            entries.append({"text": s, "parse_special": False, "ids": ids2,
                            "detokenized": llm.detokenize(ids2, special=True).decode("utf-8", errors="replace")})
    (OUT / "qwen25_tokenize.json").write_text(json.dumps({
        **common, "add_bos": False,
        "notes": "llama.cpp tokenize(text, add_bos=False, special=parse_special); detokenized = "
                 "detokenize(ids, special=True). The model's tokenizer is gpt2/qwen2 pre-tokenizer. llama.cpp applies "
                 "no NFC normalization (unlike HF tokenizer.json's NFC normalizer): the decomposed 'e\\u0301' case "
                 "keeps 'e' + U+0301 here, where HF would tokenize the composed U+00E9.",
        "cases": entries}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"tokenize: {len(entries)} cases")

    # 3. The Fibonacci chat.
    msgs = [{"role": "user", "content": CHAT_QUESTION}]
    text = render(template, msgs)
    toks = llm.tokenize(text.encode(), add_bos=False, special=True)
    _, ans = greedy(llm, toks, 64)
    ans_text = llm.detokenize(ans, special=True).decode("utf-8", errors="replace")
    (OUT / "qwen25_chat.json").write_text(json.dumps({
        **common, "messages": msgs, "chat_template_source": "GGUF tokenizer.chat_template",
        "prompt_text": text, "prompt_tokens": toks, "greedy_tokens": ans, "greedy_text": ans_text,
        "notes": "Rendered with the model's own chat template (jinja2, add_generation_prompt=True, no tools); "
                 "greedy = argmax, first 64 tokens (stops early at eos)."},
        indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"chat: prompt {len(toks)} tokens; answer:\n{ans_text}")

    # 4. Cross-check of the tiny GGUFs.
    (OUT / "tiny_gguf_llama_cpp.json").write_text(json.dumps(tiny_crosscheck(), indent=1) + "\n")

    for f in sorted(OUT.iterdir()):
        print(f"  {f.relative_to(ROOT)}  {f.stat().st_size}")


if __name__ == "__main__":
    main()
