#!/usr/bin/env python3
"""Makes Kestrel's tiny golden checkpoints and their HF-transformers reference outputs.

Deterministic (seeded) and rerunnable: `python3 scripts/make_tiny_golden.py` from the repo root
(re)writes

  testdata/tiny-tokenizer/        tiny byte-level BPE tokenizer with the real Qwen3 pipeline
                                  (NFC, Split(Qwen2 regex) + ByteLevel(use_regex=false), ByteLevel
                                  decoder) and the real Qwen3 chat template
  testdata/tiny-qwen3/            Qwen3ForCausalLM, float32 safetensors, tokenizer, GGUF (f32),
                                  reference.json + logits.f32 + logits_bf16_hf.f32
  testdata/tiny-qwen3-bf16/       the same weights in bfloat16, sharded (index + 2+ shards),
                                  reference.json + logits.f32 (fp32 reference) + logits_bf16_hf.f32
  testdata/tiny-qwen2/            Qwen2ForCausalLM (q/k/v bias, untied lm_head), float32 safetensors,
                                  tokenizer, GGUF (f32), reference.json + logits.f32 + logits_bf16_hf.f32

All weights are rounded to bfloat16-representable values before being stored in float32, so the
float32 and bfloat16 checkpoints hold exactly the same weights: the parity criterion (our bf16 error vs
HF fp32 <= 1.5 x HF bf16's error vs HF fp32) then compares like with like.

Needs: torch (CPU), transformers 5.x, tokenizers, safetensors, gguf (gguf-py), numpy.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
TD = ROOT / "testdata"
QWEN3_TOK_DIR = Path(os.environ.get("KESTREL_CACHE", Path.home() / ".cache/kestrel")) / "qwen3-tokenizer"

SEED = 20240611
BASE_VOCAB = 480  # 256 byte symbols + 224 merges
# Added tokens, in the order (and with the `special` flags) the real Qwen3 tokenizer has them.
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<think>", False),
    ("</think>", False),
]

N_PROMPT = 40
N_GREEDY_PROMPT = 8
N_GREEDY = 32

torch.set_num_threads(2)


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

def corpus() -> list[str]:
    english = [
        "The quick brown fox jumps over the lazy dog. It's a pangram: every letter appears at least once.",
        "Kestrel is an inference engine written in Rust. It runs Qwen3 and Qwen2 models on the CPU and the GPU.",
        "We don't know what we'll find, but they're sure it'd be worth the trip; I'm ready, you've seen it.",
        "In 1969, 3 astronauts flew 384,400 km to the Moon. The mission lasted 8 days, 3 hours and 18 minutes.",
        "Hello, world! How are you today? I am fine, thank you. What is the weather like in Paris?",
        "Machine learning models are trained on large amounts of data; the weights are then frozen and served.",
        "The attention mechanism computes a weighted sum of values, where the weights come from queries and keys.",
        "She sells sea shells by the sea shore. Peter Piper picked a peck of pickled peppers.",
        "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14159 2.71828 -7 +12 1e-6 0x1F 65536",
        "Please write a function that returns the nth Fibonacci number, and explain how it works.",
    ]
    chinese = [
        "你好，世界！今天天气很好。",
        "我们正在测试一个小型的分词器，它应该能够处理中文、英文和代码。",
        "机器学习模型需要大量的数据来训练。",
        "请写一个函数，返回第n个斐波那契数。",
    ]
    code = [
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "fn main() {\n    let xs: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", xs);\n}\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
        "import numpy as np\n\nx = np.zeros((4, 4), dtype=np.float32)\nprint(x.sum())\n",
        "class Tokenizer:\n    def __init__(self, vocab):\n        self.vocab = vocab\n\n    def encode(self, text):\n        return [self.vocab[t] for t in text.split()]\n",
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "<div class=\"main\"><p>Hello &amp; welcome</p></div>",
    ]
    emoji = [
        "I love pizza 🍕 and coffee ☕! 😀😃😄 Let's go 🚀🚀",
        "Thumbs up 👍🏽, family 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, hearts ❤️💙💚",
        "Café naïve résumé coöperate Ångström — “quotes” ‘single’ … ½ ° ±",
    ]
    rng = np.random.default_rng(SEED)
    texts = []
    for rep in range(20):
        for group in (english, chinese, code, emoji):
            for t in group:
                texts.append(t)
        # Some seeded shuffles of words so that merges are not just whole sentences.
        words = " ".join(english).split()
        rng.shuffle(words)
        texts.append(" ".join(words[:40]))
    return texts


def build_tokenizer(out: Path) -> dict:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    real = json.loads((QWEN3_TOK_DIR / "tokenizer.json").read_text())
    real_cfg = json.loads((QWEN3_TOK_DIR / "tokenizer_config.json").read_text())
    split_regex = real["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    trained = json.loads(tok.to_str())
    vocab = trained["model"]["vocab"]
    merges = trained["model"]["merges"]
    assert len(vocab) == BASE_VOCAB, len(vocab)
    assert sorted(vocab.values()) == list(range(BASE_VOCAB))

    # Mirror the real Qwen3 tokenizer.json structure exactly; only vocab, merges, added tokens change.
    tj = json.loads(json.dumps(real))
    tj["model"]["vocab"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    tj["model"]["merges"] = [list(m) if not isinstance(m, str) else m.split(" ") for m in merges]
    tj["added_tokens"] = []
    for i, (content, special) in enumerate(ADDED_TOKENS):
        tj["added_tokens"].append({
            "id": BASE_VOCAB + i, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": special,
        })
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in tj["added_tokens"]
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": real_cfg["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 2048,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    # Sanity: round trips through the Rust-equivalent pipeline.
    t2 = Tokenizer.from_file(str(out / "tokenizer.json"))
    samples = ["Hello, world! 你好 🍕\n    return fib(n - 1)", "<|im_start|>user\nHi<|im_end|>\n<think>\n\n</think>"]
    for s in samples:
        ids = t2.encode(s, add_special_tokens=False).ids
        assert t2.decode(ids, skip_special_tokens=False) == s, (s, ids)
    ids = t2.encode(samples[1], add_special_tokens=False).ids
    for content, _ in ADDED_TOKENS[1:3]:
        assert BASE_VOCAB + [c for c, _ in ADDED_TOKENS].index(content) in ids
    n_tok = BASE_VOCAB + len(ADDED_TOKENS)
    ids_of = {c: BASE_VOCAB + i for i, (c, _) in enumerate(ADDED_TOKENS)}
    print(f"tokenizer: {n_tok} tokens ({BASE_VOCAB} BPE incl. 256 bytes, {len(merges)} merges, "
          f"{len(ADDED_TOKENS)} added) -> {out.relative_to(ROOT)}")
    return {"n_tokens": n_tok, "ids": ids_of}


def copy_tokenizer(src: Path, dst: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / f, dst / f)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def bf16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float32)


def init_weights(model, cfg, kind: str, seed: int, n_tok: int) -> dict:
    """Seeded random weights plus planted hard cases. Returns a description of what was planted."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, std: torch.randn(*shape, generator=g) * std  # noqa: E731
    H = cfg.hidden_size
    hd = getattr(cfg, "head_dim", None) or H // cfg.num_attention_heads
    planted: dict = {}
    sd = model.state_dict()
    new = {}
    for name, p in sd.items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            new[name] = 1.0 + rnd(*p.shape, std=0.2)
        elif name.endswith("q_norm.weight") or name.endswith("k_norm.weight"):
            new[name] = 1.0 + rnd(*p.shape, std=0.2)
        elif name.endswith(".bias"):
            new[name] = rnd(*p.shape, std=0.1)
        elif name == "model.embed_tokens.weight":
            new[name] = rnd(*p.shape, std=0.1)
        elif name == "lm_head.weight":
            new[name] = rnd(*p.shape, std=0.1)
        else:
            new[name] = rnd(*p.shape, std=0.08)

    # Outlier embedding dimensions (activations with outliers in the residual stream).
    outlier_dims = [7, 40]
    outlier_scale = [30.0, 45.0]
    for d, s in zip(outlier_dims, outlier_scale):
        new["model.embed_tokens.weight"][:, d] *= s
    planted["embedding_outlier_dims"] = {str(d): s for d, s in zip(outlier_dims, outlier_scale)}
    # Rows past the tokenizer's vocabulary (padding up to a multiple of 64) are small, as in trained
    # checkpoints, so that greedy decoding does not pick ids that have no token.
    new["model.embed_tokens.weight"][n_tok:] = rnd(cfg.vocab_size - n_tok, H, std=0.01)
    if "lm_head.weight" in new:
        new["lm_head.weight"][n_tok:] = rnd(cfg.vocab_size - n_tok, H, std=0.01)
    planted["padding_rows_from"] = n_tok
    # Like real checkpoints, the final norm damps the outlier dims (otherwise the tied lm_head would
    # make every position predict the same token).
    for d in outlier_dims:
        new["model.norm.weight"][d] = 0.05
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        # Large rows in down_proj: channel (11 + 17 i) of the residual gets big writes.
        row = (11 + 17 * i) % H
        new[p + "mlp.down_proj.weight"][row, :] *= 12.0
        planted.setdefault("down_proj_large_rows", {})[str(i)] = {"row": row, "scale": 12.0}
        if kind == "qwen3":
            # k_norm gains up to ~100 (real Qwen3 reaches 96.5), q_norm gains 10-20 on a few channels.
            k_ch = {(3 + 5 * i) % hd: 96.5 - 12.0 * i, (20 + 3 * i) % hd: 64.0 + 8.0 * i}
            q_ch = {(9 + i) % hd: 18.0, (27 - i) % hd: 10.0, (14 + 2 * i) % hd: 12.0}
            assert not set(q_ch) & set(k_ch)
            for c, v in k_ch.items():
                new[p + "self_attn.k_norm.weight"][c] = v
            for c, v in q_ch.items():
                new[p + "self_attn.q_norm.weight"][c] = v
            planted.setdefault("k_norm_large", {})[str(i)] = {str(c): v for c, v in k_ch.items()}
            planted.setdefault("q_norm_large", {})[str(i)] = {str(c): v for c, v in q_ch.items()}
        else:
            # Large biases on some k channels (real Qwen2 has k biases in the tens).
            kb = new[p + "self_attn.k_proj.bias"]
            chans = {(2 + 7 * i) % kb.numel(): 25.0, (19 + 5 * i) % kb.numel(): -18.0, (5 + 3 * i) % kb.numel(): 12.0}
            for c, v in chans.items():
                kb[c] = v
            planted.setdefault("k_bias_large", {})[str(i)] = {str(c): v for c, v in chans.items()}
    new = {k: bf16_exact(v) for k, v in new.items()}
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected, unexpected
    assert all(m == "lm_head.weight" for m in missing), missing
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return planted


def make_model(kind: str, n_tok: int, tok_ids: dict, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    vocab = ((n_tok + 63) // 64) * 64
    common = dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=192, hidden_act="silu",
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        max_position_embeddings=2048, bos_token_id=None, eos_token_id=tok_ids["<|im_end|>"],
        pad_token_id=tok_ids["<|endoftext|>"], use_sliding_window=False, sliding_window=None,
        attention_dropout=0.0, initializer_range=0.02, use_cache=True,
    )
    if kind == "qwen3":
        cfg = Qwen3Config(num_hidden_layers=3, head_dim=32, attention_bias=False,
                          tie_word_embeddings=True, max_window_layers=3, **common)
        cls = Qwen3ForCausalLM
    else:
        cfg = Qwen2Config(num_hidden_layers=2, tie_word_embeddings=False, max_window_layers=2, **common)
        cls = Qwen2ForCausalLM
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32).eval()
    planted = init_weights(model, cfg, kind, seed, n_tok)
    return model, cfg, planted


def save_hf(model, out: Path, eos: int, pad: int, **kw) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=pad, do_sample=False, bos_token_id=None,
    )
    model.save_pretrained(out, safe_serialization=True, **kw)


# ----------------------------------------------------------------------------------------------
# GGUF (as llama.cpp's convert_hf_to_gguf.py would write it, --outtype f32)
# ----------------------------------------------------------------------------------------------

def write_gguf(model_dir: Path, out_path: Path, kind: str, cfg, name: str) -> None:
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    arch = gguf.MODEL_ARCH.QWEN3 if kind == "qwen3" else gguf.MODEL_ARCH.QWEN2
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    w = gguf.GGUFWriter(str(out_path), arch_name)

    # Metadata (general.*), then TextModel.set_gguf_parameters.
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    # Vocab: Model.get_vocab_base + _set_vocab_gpt2.
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    vocab_size = cfg.vocab_size
    reverse_vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    added_vocab = tokenizer.get_added_vocab()
    added_dec = tokenizer.added_tokens_decoder
    tokens, toktypes = [], []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            if not added_dec[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            looks_special = token.startswith("<|") and token.endswith("|>")
            toktypes.append(gguf.TokenType.CONTROL if (added_dec[i].special or looks_special)
                            else gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=True)
    assert special_vocab.merges, "no merges found"
    special_vocab.add_to_gguf(w)

    # Tensors, in safetensors order, HF names mapped through gguf-py's tensor map.
    sd = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    tmap = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    for hf_name, t in sd.items():
        new_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert new_name is not None, hf_name
        w.add_tensor(new_name, t.to(torch.float32).numpy())
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Read back and check.
    r = gguf.GGUFReader(str(out_path))
    names = {t.name for t in r.tensors}
    assert "token_embd.weight" in names and "output_norm.weight" in names
    assert ("output.weight" in names) == (not cfg.tie_word_embeddings)
    print(f"gguf: {out_path.relative_to(ROOT)}: {len(r.tensors)} tensors, {len(r.fields)} kv")


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------

def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def teacher_forced(model, ids: list[int]) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Pure argmax decoding (eos not special-cased), full forward each step; returns tokens and
    top1-top2 logit margins."""
    ids = list(prompt)
    toks, margins = [], []
    for _ in range(n):
        logits = teacher_forced(model, ids)[-1]
        top = torch.topk(logits, 2)
        t = int(top.indices[0])
        toks.append(t)
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(t)
    return toks, margins


@torch.no_grad()
def make_references(kind: str, model, cfg, tokenizer, out_dirs: list[Path], n_tok: int, seed: int,
                    eos: int) -> dict:
    from transformers import GenerationConfig

    rng = np.random.default_rng(seed + 1)
    prompt = [int(x) for x in rng.integers(0, n_tok, size=N_PROMPT)]
    logits = teacher_forced(model, prompt)
    assert logits.shape == (N_PROMPT, cfg.vocab_size)
    # Greedy prompt: the first seeded draw whose 32-token greedy path holds no eos/pad token (so that
    # engines that stop at eos can be compared over the full length) and no near tie (top1-top2 >= 5e-3).
    for _ in range(50):
        gprompt = [int(x) for x in rng.integers(0, BASE_VOCAB, size=N_GREEDY_PROMPT)]
        gtoks, margins = greedy(model, gprompt, N_GREEDY)
        if not {eos, tokenizer.pad_token_id} & set(gtoks) and min(margins) >= 5e-3:
            break
    else:
        sys.exit(f"{kind}: every greedy path hits eos/pad")
    if len(set(gtoks)) < 4:
        sys.exit(f"{kind}: greedy tokens nearly constant ({gtoks}); change the seed/scales")
    # Cross-check against HF generate (min_new_tokens keeps eos from stopping it).
    gen = model.generate(torch.tensor([gprompt]), generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY, eos_token_id=eos,
        pad_token_id=eos, bos_token_id=None))
    gen_toks = gen[0, len(gprompt):].tolist()
    assert gen_toks == gtoks, (gen_toks, gtoks)

    chat_text = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                              add_generation_prompt=True)
    chat_ids = tokenizer.encode(chat_text, add_special_tokens=False)
    chat_greedy, _ = greedy(model, chat_ids, 16)

    # HF's own bfloat16 run on the same (bf16-exact) weights.
    mbf = type(model)(cfg).eval()
    mbf.load_state_dict(model.state_dict())
    mbf = mbf.to(torch.bfloat16)
    logits_bf = teacher_forced(mbf, prompt)
    r = rel_l2(logits_bf, logits)
    per_pos = [rel_l2(logits_bf[i], logits[i]) for i in range(N_PROMPT)]
    argmax_agree = int((logits_bf.argmax(-1) == logits.argmax(-1)).sum())
    gtoks_bf, _ = greedy(mbf, gprompt, N_GREEDY)
    agree = next((i for i, (a, b) in enumerate(zip(gtoks_bf, gtoks)) if a != b), N_GREEDY)
    print(f"{kind}: logits max|.| {logits.abs().max():.3f} std {logits.std():.3f}; "
          f"HF bf16 vs fp32 rel L2 {r:.5f} (per-position max {max(per_pos):.5f}), "
          f"argmax agree {argmax_agree}/{N_PROMPT}, greedy bf16 agrees for {agree}/{N_GREEDY} tokens")
    print(f"{kind}: greedy {gtoks}")
    print(f"{kind}: min greedy top1-top2 margin {min(margins):.4f}")
    if min(margins) < 1e-3:
        print(f"WARNING: {kind}: a greedy step has a near tie; f32 implementations may flip it")

    ref = {
        "prompt_tokens": prompt,
        "greedy_prompt_tokens": gprompt,
        "greedy_tokens": gtoks,
        "greedy_top1_top2_margins": [round(m, 5) for m in margins],
        "logits_file": "logits.f32",
        "logits_shape": [N_PROMPT, cfg.vocab_size],
        "logits_bf16_hf_file": "logits_bf16_hf.f32",
        "hf_bf16_rel_l2": r,
        "hf_bf16_rel_l2_per_position": per_pos,
        "hf_bf16_argmax_agree": argmax_agree,
        "hf_bf16_greedy_tokens": gtoks_bf,
        "hf_bf16_greedy_agree_prefix": agree,
        "chat_prompt": "Hello",
        "chat_prompt_text": chat_text,
        "chat_prompt_tokens": chat_ids,
        "chat_greedy_tokens": chat_greedy,
        "eos_token_id": eos,
        "notes": (
            "HF transformers %s, torch %s, float32, attn_implementation=eager, CPU. logits.f32: raw little-endian "
            "float32 [40, vocab] row-major, teacher-forced (one forward pass, no cache) over prompt_tokens. "
            "greedy_tokens: argmax continuation of greedy_prompt_tokens (contains no eos/pad; equals "
            "model.generate(do_sample=False, max_new_tokens=32), checked). "
            "logits_bf16_hf.f32: HF's own bfloat16 run (weights and compute in bf16, logits cast to f32) on "
            "the same tokens; hf_bf16_rel_l2 = ||bf16 - fp32||_2 / ||fp32||_2 over the whole [40, vocab] matrix. "
            "All weights are bf16-exact, so the f32 and bf16 checkpoints hold identical weights. "
            "chat_prompt_text/tokens: tokenizer.apply_chat_template([user: Hello], add_generation_prompt=True); "
            "chat_greedy_tokens: 16 argmax tokens after it (eos not special-cased, so it may hold eos). "
            "Generated by scripts/make_tiny_golden.py."
            % (__import__("transformers").__version__, torch.__version__)
        ),
    }
    for d in out_dirs:
        logits.contiguous().numpy().astype("<f4").tofile(d / "logits.f32")
        logits_bf.contiguous().numpy().astype("<f4").tofile(d / "logits_bf16_hf.f32")
        (d / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return ref


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_dir = TD / "tiny-tokenizer"
    info = build_tokenizer(tok_dir)
    n_tok, ids = info["n_tokens"], info["ids"]
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(tokenizer) == n_tok and tokenizer.eos_token_id == eos and tokenizer.pad_token_id == pad

    summary = {}
    # Seeds picked (scan of SEED..SEED+9) for varied greedy paths with clear top1-top2 margins.
    for kind, seed in (("qwen3", SEED + 9), ("qwen2", SEED + 4)):
        out = TD / f"tiny-{kind}"
        if out.exists():
            shutil.rmtree(out)
        model, cfg, planted = make_model(kind, n_tok, ids, seed)
        save_hf(model, out, eos, pad)
        copy_tokenizer(tok_dir, out)
        (out / "planted.json").write_text(json.dumps(planted, indent=1) + "\n")
        # Reload from disk so the references come from exactly what was saved.
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager").eval()
        dirs = [out]
        if kind == "qwen3":
            bf = TD / "tiny-qwen3-bf16"
            if bf.exists():
                shutil.rmtree(bf)
            mbf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).to(torch.bfloat16)
            save_hf(mbf, bf, eos, pad, max_shard_size="200KB")
            copy_tokenizer(tok_dir, bf)
            shutil.copyfile(out / "planted.json", bf / "planted.json")
            shards = sorted(bf.glob("model-*.safetensors"))
            assert (bf / "model.safetensors.index.json").exists() and len(shards) >= 2, shards
            # The bf16 checkpoint, read as f32, equals the f32 checkpoint exactly.
            m2 = AutoModelForCausalLM.from_pretrained(str(bf), dtype=torch.float32, attn_implementation="eager").eval()
            for (n1, p1), (n2, p2) in zip(model.state_dict().items(), m2.state_dict().items()):
                assert n1 == n2 and torch.equal(p1, p2), n1
            dirs.append(bf)
        ref = make_references(kind, model, model.config, tokenizer, dirs, n_tok, seed, eos)
        write_gguf(out, out / f"tiny-{kind}-f32.gguf", kind, model.config, f"Tiny {kind.capitalize()} Golden")
        summary[kind] = ref["hf_bf16_rel_l2"]

    total = sum(f.stat().st_size for d in TD.glob("tiny-*") for f in d.rglob("*") if f.is_file())
    for d in sorted(TD.glob("tiny-*")):
        for f in sorted(d.rglob("*")):
            if f.is_file():
                print(f"  {f.relative_to(ROOT)}  {f.stat().st_size}")
    print(f"total {total / 1e6:.2f} MB; HF bf16 vs fp32 rel L2: {summary}")


if __name__ == "__main__":
    main()
