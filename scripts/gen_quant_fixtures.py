#!/usr/bin/env python3
"""Generate the ds4-quant format fixtures from the `gguf` Python package.

The Rust tests (crates/ds4-quant/tests/fixtures.rs) compare ds4-quant's
dequantisation and Q8_0 quantisation with these files bit for bit; they need
no Python. Re-run this script only to change the fixtures:

    python -m venv .venv && .venv/bin/pip install gguf==0.19.0 numpy
    .venv/bin/python scripts/gen_quant_fixtures.py

File format (all little-endian), one case per file:
    magic   8 bytes  b"DS4QFIX1"
    type    u32      ggml type id (F16=1, Q8_0=8, Q2_K=10, Q4_K=12, Q8_K=15,
                     IQ2_XXS=16, BF16=30)
    kind    u32      0 = dequantize (bytes -> f32), 1 = quantize (f32 -> bytes)
    n_elems u32
    n_bytes u32
    kind 0: bytes[n_bytes] then f32[n_elems] (expected)
    kind 1: f32[n_elems] then bytes[n_bytes] (expected)

Random blocks are random bytes whose f16 scale fields are replaced by finite
values of random sign and magnitude 1e-6..10 (f16 subnormals included) or 0.
Q8_K is not implemented by gguf-py; its expected values come from the
independent numpy formula d * q (ggml's dequantize_row_q8_K).
"""

import importlib.metadata
import pathlib
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

GGUF_VERSION = importlib.metadata.version("gguf")
if GGUF_VERSION != "0.19.0":
    raise SystemExit(f"expected gguf==0.19.0 (the fixtures' oracle), found {GGUF_VERSION}")

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/ds4-quant/tests/fixtures"
MAGIC = b"DS4QFIX1"
rng = np.random.default_rng(20260519)


def write(name: str, qtype: T, kind: int, raw: np.ndarray, values: np.ndarray) -> None:
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    head = MAGIC + struct.pack("<IIII", int(qtype), kind, values.size, raw.size)
    body = raw.tobytes() + values.tobytes() if kind == 0 else values.tobytes() + raw.tobytes()
    (OUT / name).write_bytes(head + body)
    print(f"{name}: {values.size} elems, {raw.size} bytes")


def f16_scales(n: int) -> np.ndarray:
    """n finite f16 scales as (n, 2) bytes: random sign, log-uniform 1e-6..10, some zeros."""
    mag = 10.0 ** rng.uniform(-6, 1, n)
    sign = np.where(rng.random(n) < 0.25, -1.0, 1.0)
    v = (mag * sign).astype(np.float16)
    v[rng.random(n) < 0.05] = 0
    assert np.isfinite(v).all()
    return v.view(np.uint8).reshape(n, 2)


def random_blocks(qtype: T, n_blocks: int) -> np.ndarray:
    _, type_size = quants.GGML_QUANT_SIZES[qtype]
    return rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)


def dequant_case(name: str, qtype: T, blocks: np.ndarray) -> None:
    expected = quants.dequantize(blocks, qtype)
    write(name, qtype, 0, blocks, expected)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)

    # F16 / BF16: random bit patterns without NaN (inf, zeros, subnormals stay).
    for qtype, name in ((T.F16, "dequant_f16.bin"), (T.BF16, "dequant_bf16.bin")):
        bits = rng.integers(0, 1 << 16, size=2048, dtype=np.uint16)
        exp_mask, man_mask = (0x7C00, 0x03FF) if qtype == T.F16 else (0x7F80, 0x007F)
        bits = bits[~(((bits & exp_mask) == exp_mask) & ((bits & man_mask) != 0))]
        bits = np.concatenate([bits, np.array([0, 0x8000, exp_mask, 0x8000 | exp_mask, 1], np.uint16)])
        raw = bits.astype("<u2").view(np.uint8).reshape(-1, 2)
        dequant_case(name, qtype, raw)

    # Q8_0: d at bytes 0..2.
    b = random_blocks(T.Q8_0, 128)
    b[:, 0:2] = f16_scales(len(b))
    dequant_case("dequant_q8_0.bin", T.Q8_0, b)

    # Q2_K: d, dmin at bytes 80..84.
    b = random_blocks(T.Q2_K, 32)
    b[:, 80:82] = f16_scales(len(b))
    b[:, 82:84] = f16_scales(len(b))
    dequant_case("dequant_q2_k.bin", T.Q2_K, b)

    # Q4_K: d, dmin at bytes 0..4.
    b = random_blocks(T.Q4_K, 32)
    b[:, 0:2] = f16_scales(len(b))
    b[:, 2:4] = f16_scales(len(b))
    dequant_case("dequant_q4_k.bin", T.Q4_K, b)

    # IQ2_XXS: d at 0..2; the first 8 blocks use every grid index, every sign
    # index (twice) and every scale nibble, so the tables are fully covered.
    b = random_blocks(T.IQ2_XXS, 32)
    b[:, 0:2] = f16_scales(len(b))
    words = b[:, 2:].copy().view("<u4").reshape(len(b), 8, 2)
    grid_idx = np.arange(256, dtype=np.uint32).reshape(8, 8, 4)
    sign_idx = (np.arange(256, dtype=np.uint32) % 128).reshape(8, 8, 4)
    scale = (np.arange(64, dtype=np.uint32) % 16).reshape(8, 8)
    words[:8, :, 0] = (grid_idx << np.array([0, 8, 16, 24], np.uint32)).sum(axis=-1, dtype=np.uint32)
    words[:8, :, 1] = (sign_idx << np.array([0, 7, 14, 21], np.uint32)).sum(axis=-1, dtype=np.uint32) | (scale << 28)
    b[:, 2:] = words.reshape(len(b), 16).view(np.uint8)
    dequant_case("dequant_iq2_xxs.bin", T.IQ2_XXS, b)

    # Q8_K (not in gguf-py): d f32 finite random, q random, bsums random bytes.
    n = 8
    b = rng.integers(0, 256, size=(n, 292), dtype=np.uint8)
    d = (10.0 ** rng.uniform(-8, 1, n) * np.where(rng.random(n) < 0.3, -1, 1)).astype("<f4")
    d[0] = 0.0
    b[:, 0:4] = d.view(np.uint8).reshape(n, 4)
    q = b[:, 4:260].view(np.int8).astype(np.float32)
    write("dequant_q8_k.bin", T.Q8_K, 0, b, d.reshape(n, 1) * q)

    # Q8_0 quantisation: rows of varied scale, an all-zero block, a block with
    # exact ties (x/d = k + 0.5) and a tiny block whose d is an f16 subnormal.
    x = rng.standard_normal((64, 32)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-3, 2, (64, 1))).astype(np.float32)
    x[1] = 0
    x[2] = np.arange(-16, 16, dtype=np.float32) + 0.5
    x[2, 0] = 127.0  # amax 127 -> d = 1, so every other value is a tie
    x[3] *= np.float32(1e-4)
    x = x.reshape(-1)
    write("quant_q8_0.bin", T.Q8_0, 1, quants.quantize(x.reshape(1, -1), T.Q8_0), x)


if __name__ == "__main__":
    main()
