#!/usr/bin/env python3
"""Real quantized tensors for the GPU kernel tests (issue #4: "random and real tensors"): the first 64
rows of one tensor of each quantized type in the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF
(scripts/fetch-assets.sh caches it), copied byte for byte into testdata/quant/real_rows.gguf (530 KB):
Q8_0 output.weight, Q5_0 token_embd.weight, Q6_K blk.0.ffn_down.weight, Q4_K blk.11.ffn_down.weight.

Usage: python3 scripts/extract_real_rows.py [MODEL.gguf]    Needs gguf (gguf-py), numpy.
"""
import os
import sys
from pathlib import Path

from gguf import GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

ROWS = 64
PICK = ["output.weight", "token_embd.weight", "blk.0.ffn_down.weight", "blk.11.ffn_down.weight"]


def main() -> None:
    default = Path(os.environ.get("KESTREL_CACHE", Path.home() / ".cache/kestrel")) / \
        "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    reader = GGUFReader(str(src))
    out = Path(__file__).resolve().parent.parent / "testdata/quant/real_rows.gguf"
    w = GGUFWriter(str(out), "qwen2")
    for t in reader.tensors:
        if t.name not in PICK:
            continue
        cols = int(t.shape[0])
        block, size = GGML_QUANT_SIZES[t.tensor_type]
        row_bytes = cols // block * size
        data = t.data.reshape(-1)[: ROWS * row_bytes].view("uint8").reshape(ROWS, row_bytes)
        w.add_tensor(t.name, data, raw_shape=[ROWS, row_bytes], raw_dtype=t.tensor_type)
        print(f"{t.name}: {t.tensor_type.name}, {ROWS} x {cols}")
    w.add_string("general.source", f"first {ROWS} rows of tensors of {src.name}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
