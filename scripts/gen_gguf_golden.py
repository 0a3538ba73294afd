#!/usr/bin/env python3
"""Golden GGUF files written by gguf-py's GGUFWriter, for crates/kestrel/tests/gguf_format.rs.

  testdata/gguf/all_types.gguf   every metadata value type (incl. nested and typed arrays) and tensors
                                 of types F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q6_K; alignment 32
  testdata/gguf/align64.gguf     the same with general.alignment = 64

Tensor contents are formulas the Rust test recomputes: src(n)[i] = ((i*37) % 101 - 50) / 16, exact in
f32, so Q8_0/Q4_0/Q5_0 bytes must equal Kestrel's own quantization of it; Q4_K/Q6_K hold byte patterns
(i*7 + 3) % 256 (only the bytes are compared).

Run from the repository root: python3 scripts/gen_gguf_golden.py
"""
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf import GGUFWriter, quants

OUT = Path(__file__).resolve().parent.parent / "testdata" / "gguf"


def src(n: int) -> np.ndarray:
    return (((np.arange(n) * 37) % 101).astype(np.float32) - 50) / 16


def pattern(n: int) -> np.ndarray:
    return ((np.arange(n) * 7 + 3) % 256).astype(np.uint8)


def write(path: Path, alignment: int | None) -> None:
    w = GGUFWriter(path, "qwen3")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float32("test.f32", 0.1)
    w.add_float64("test.f64", 2.718281828459045)
    w.add_bool("test.true", True)
    w.add_bool("test.false", False)
    w.add_string("test.string", "héllo ✓ \"quoted\"")
    w.add_key_value("test.empty_string", "", V.STRING)
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_str", ["a", "bc", "", "ü"])
    w.add_array("test.arr_f32", [0.5, -1.25])
    w.add_array("test.arr_bool", [True, False, True])
    w.add_key_value("test.arr_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr_u64", [2**64 - 1, 0], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("test.arr_f64", [1e300, -0.0], V.ARRAY, sub_type=V.FLOAT64)
    w.add_key_value("test.arr_i16", [-32768, 32767], V.ARRAY, sub_type=V.INT16)
    w.add_array("test.nested", [[1, 2], [3, 4, 5], [6]])
    w.add_array("test.nested_str", [["x"], ["y", "z"]])
    w.add_uint32("qwen3.block_count", 2)
    w.add_float32("qwen3.rope.freq_base", 1000000.0)

    w.add_tensor("f32.matrix", src(15).reshape(3, 5))
    w.add_tensor("f32.vector", src(7))
    w.add_tensor("f32.cube", src(24).reshape(2, 3, 4))
    w.add_tensor("f16.matrix", src(128).astype(np.float16).reshape(2, 64))
    bf16 = quants.quantize(src(128).reshape(4, 32), T.BF16)
    w.add_tensor("bf16.matrix", bf16, raw_dtype=T.BF16)
    for name in ("Q8_0", "Q4_0", "Q5_0"):
        q = quants.quantize(src(128).reshape(2, 64), T[name])
        w.add_tensor(f"{name.lower()}.matrix", q, raw_dtype=T[name])
    w.add_tensor("q4_k.matrix", pattern(2 * 144).reshape(2, 144), raw_dtype=T.Q4_K)
    w.add_tensor("q6_k.vector", pattern(210), raw_dtype=T.Q6_K)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "all_types.gguf", None)
    write(OUT / "align64.gguf", 64)
    for p in sorted(OUT.glob("*.gguf")):
        print(p, p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
