#!/usr/bin/env python3
"""Golden files for Kestrel's block quantization (crates/kestrel/tests/quant_golden.rs).

The reference is gguf-py's `gguf.quants` (a numpy port of ggml's reference code). Where gguf-py has no
implementation (Q8_1 and Q8_K, both activation formats), a scalar port of ggml-quants.c below is used.

Outputs (little-endian, no headers; the test infers counts from the sizes):
  testdata/quant/dequant_<TYPE>.bin   valid random blocks
  testdata/quant/dequant_<TYPE>.f32   their dequantized values
  testdata/quant/quant_src.f32        rows of 256 floats: gaussian, outliers, zeros, negative max, ties...
  testdata/quant/quant_<TYPE>.bin     those rows quantized

Run from the repository root: python3 scripts/gen_quant_golden.py
"""
import warnings
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = Path(__file__).resolve().parent.parent / "testdata" / "quant"
rng = np.random.default_rng(20240607)

# type -> (block bytes, offsets of f16 fields); Q8_K's f32 scale is handled apart.
LAYOUT = {
    "Q4_0": (18, [0]), "Q4_1": (20, [0, 2]), "Q5_0": (22, [0]), "Q5_1": (24, [0, 2]),
    "Q8_0": (34, [0]), "Q8_1": (36, [0, 2]), "Q2_K": (84, [80, 82]), "Q3_K": (110, [108]),
    "Q4_K": (144, [0, 2]), "Q5_K": (176, [0, 2]), "Q6_K": (210, [208]), "Q8_K": (292, []),
}


def random_f16(n: int) -> np.ndarray:
    """Finite f16 scales: half of them any finite bit pattern (subnormals, huge, negative zero), half
    of typical magnitude."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    bits = np.where((bits >> 10) & 0x1F == 0x1F, bits & np.uint16(0x83FF), bits)
    typical = (rng.standard_normal(n) * 0.02).astype(np.float16).view(np.uint16)
    out = np.where(rng.random(n) < 0.5, bits, typical).astype(np.uint16)
    out[:4] = [0x0000, 0x8000, 0x0001, 0x7BFF]
    return out


def random_blocks(name: str, n: int) -> np.ndarray:
    size, f16_offsets = LAYOUT[name]
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint16).astype(np.uint8)
    for off in f16_offsets:
        blocks[:, off:off + 2] = random_f16(n).view(np.uint8).reshape(n, 2)
    if name == "Q8_K":
        d = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 3, n)).astype(np.float32)
        blocks[:, 0:4] = d.view(np.uint8).reshape(n, 4)
    return blocks


def dequant_q8_1(blocks: np.ndarray) -> np.ndarray:
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    return blocks[:, 4:].copy().view(np.int8).astype(np.float32) * d


def dequant_q8_k(blocks: np.ndarray) -> np.ndarray:
    d = blocks[:, 0:4].copy().view(np.float32)
    return d * blocks[:, 4:260].copy().view(np.int8).astype(np.float32)


def quant_q8_1(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_1_ref, scalar f32 arithmetic."""
    out = []
    for b in x.reshape(-1, 32):
        amax = np.float32(np.abs(b).max())
        d = np.float32(amax / np.float32(127))
        iv = np.float32(1) / d if d != 0 else np.float32(0)
        v = b * iv
        q = quants.np_roundf(v).astype(np.int8)  # roundf: half away from zero
        s = np.float32(np.float32(int(q.astype(np.int32).sum())) * d)
        out.append(np.concatenate([np.array([d, s], dtype=np.float16).view(np.uint8), q.view(np.uint8)]))
    return np.stack(out)


def quant_q8_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K_ref: first strictly largest |x|, nearest_int = round half to even."""
    out = []
    for b in x.reshape(-1, 256):
        i = int(np.argmax(np.abs(b)))
        if b[i] == 0:
            out.append(np.zeros(292, dtype=np.uint8))
            continue
        iscale = np.float32(-127.0) / b[i]
        q = np.minimum(np.rint(iscale * b), 127).astype(np.int8)
        bsums = q.reshape(16, 16).astype(np.int16).sum(axis=1).astype(np.int16)
        d = np.array([np.float32(1) / iscale], dtype=np.float32)
        out.append(np.concatenate([d.view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)]))
    return np.stack(out)


def source_rows() -> np.ndarray:
    rows = [rng.standard_normal(256) * s for s in (1.0, 0.01, 1e-3, 30.0)]
    rows += [rng.uniform(-1, 1, 256), rng.uniform(0, 1, 256), -rng.uniform(0, 1, 256)]
    for k in range(4):  # outliers: one large value per block of 32
        r = rng.standard_normal(256) * 0.05
        r[rng.integers(0, 32, 8) + np.arange(0, 256, 32)] = rng.choice([-1, 1], 8) * 10.0 ** (k + 1)
        rows.append(r)
    rows.append(np.zeros(256))
    neg = rng.uniform(-1, 1, 256)
    neg[::32] = -4.0  # the block's extreme is negative
    rows.append(neg)
    ties = np.tile(np.array([127.0, 63.5, -63.5, 0.5, -0.5, 1.5, 2.5, -2.5] * 4), 8)  # d=1 exactly in Q8_0
    rows.append(ties)
    rows.append(np.tile(np.array([-8.0, 0.5, 1.5, -1.5, 2.5, 4.0, -3.5, 7.0] * 4), 8))  # Q4_0 d=1
    rows.append(rng.standard_normal(256) * 1e-30)  # f16 and scale underflow
    rows.append(rng.standard_normal(256) * 4e4)  # f16 overflow on some values
    half_zero = rng.standard_normal(256)
    half_zero[:128] = 0
    rows.append(half_zero)
    return np.stack(rows).astype(np.float32)


def main() -> None:
    warnings.filterwarnings("ignore", "overflow encountered in cast")  # f16 overflow is tested on purpose
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (size, _) in LAYOUT.items():
        n = 48 if name.endswith("K") else 192
        blocks = random_blocks(name, n)
        if name == "Q8_1":
            values = dequant_q8_1(blocks)
        elif name == "Q8_K":
            values = dequant_q8_k(blocks)
        else:
            values = quants.dequantize(blocks, T[name])
        (OUT / f"dequant_{name}.bin").write_bytes(blocks.tobytes())
        (OUT / f"dequant_{name}.f32").write_bytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    for name in ("F16", "BF16"):
        raw = rng.integers(0, 1 << 16, 4096, dtype=np.uint32).astype(np.uint16)
        (OUT / f"dequant_{name}.bin").write_bytes(raw.tobytes())
        (OUT / f"dequant_{name}.f32").write_bytes(quants.dequantize(raw.view(np.uint8), T[name]).astype(np.float32).tobytes())

    src = source_rows()
    specials = np.array([np.inf, -np.inf, 65504, 65520, 65519.996, 6e-8, 3e-8, -0.0, 1 + 2**-11, 1 + 3 * 2**-11,
                         3.4e38, -1.17549435e-38, 1.0000001, 1.00390625, 1.01171875], dtype=np.float32)
    src[-1, :specials.size] = specials  # the last row is only used by the float types' checks
    (OUT / "quant_src.f32").write_bytes(src.tobytes())
    finite = src[:-1]
    for name in ("F16", "BF16"):
        (OUT / f"quant_{name}.bin").write_bytes(quants.quantize(src, T[name]).tobytes())
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        (OUT / f"quant_{name}.bin").write_bytes(quants.quantize(finite, T[name]).tobytes())
    (OUT / "quant_Q8_1.bin").write_bytes(quant_q8_1(finite).tobytes())
    (OUT / "quant_Q8_K.bin").write_bytes(quant_q8_k(finite).tobytes())
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
