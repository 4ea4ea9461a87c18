#!/usr/bin/env python3
"""Dequantized statistics of a synthetic ds4 GGUF, decoded independently of
ds4 by the `gguf` Python package (gguf==0.19.0 + numpy).

    ds4 gguf synth --preset tiny -o /tmp/tiny.gguf
    python3 scripts/synth_stats.py /tmp/tiny.gguf [SAMPLE_MIB]

Big tensors are checked on their first SAMPLE_MIB MiB (default 16; whole
rows), so production-width files (e.g. --preset flash-q4 --layers 1) work too.

For every tensor: mean, std, min, max of the dequantized values, the std the
synthesizer aims at (1/sqrt(ne0) for projections), and std/target. Checks
that nothing is NaN/Inf, that projections are centred (|mean| within 4 standard errors)
and within 10% of their target std, and that every tid2eid row holds
distinct expert ids in range. Exit status 1 on any failed check.
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

SPECIAL = {  # name suffix -> (expected mean, expected std)
    "norm.weight": (1.0, 0.02),
    "_scale.weight": (0.1, 0.01),
    "attn_sinks.weight": (0.0, 0.01),
    "exp_probs_b.bias": (0.0, 0.01),
    "_ape.weight": (0.0, 0.02),
}


def target(name, ne0):
    if name == "token_embd.weight":
        return 0.0, 1.0
    for suffix, t in SPECIAL.items():
        if name.endswith(suffix):
            return t
    if name.endswith("_base.weight") or name.endswith("tid2eid.weight"):
        return None
    return 0.0, 1.0 / np.sqrt(ne0)


def sample(t, limit):
    """The first `limit` bytes of tensor `t`, as whole rows of uint8."""
    raw = np.asarray(t.data).view(np.uint8).reshape(-1)
    row = raw.size // int(np.prod(t.shape[1:], dtype=np.int64))
    rows = max(1, min(raw.size, limit) // row)
    return raw[: rows * row].reshape(rows, row)


def main(path, sample_mib=16):
    r = GGUFReader(path)
    n_expert = int(r.fields["deepseek4.expert_count"].contents())
    failures = []
    by_kind = {}
    print(f"{'tensor':44} {'type':8} {'mean':>10} {'std':>10} {'target':>10} {'ratio':>7} {'min':>9} {'max':>9}")
    for t in r.tensors:
        ne0 = int(t.shape[0])
        if t.name.endswith("tid2eid.weight"):  # I32: nothing to dequantize
            x = np.asarray(t.data).view(np.int32).reshape(-1)
            ids = x.reshape(-1, ne0).astype(np.int64)
            ok = ids.min() >= 0 and ids.max() < n_expert and all(
                len(set(row)) == ne0 for row in ids[:20000])
            print(f"{t.name:44} {t.tensor_type.name:8} ids in [{ids.min()}, {ids.max()}], distinct per token: {ok}")
            if not ok:
                failures.append(t.name)
            continue
        x = dequantize(sample(t, sample_mib << 20), t.tensor_type).astype(np.float64).reshape(-1)
        if not np.isfinite(x).all():
            failures.append(f"{t.name}: non-finite values")
        mean, std = x.mean(), x.std()
        tgt = target(t.name, ne0)
        if tgt is None:
            print(f"{t.name:44} {t.tensor_type.name:8} {mean:10.4f} {std:10.4f} {'':>10} {'':>7} {x.min():9.4f} {x.max():9.4f}")
            continue
        tmean, tstd = tgt
        ratio = std / tstd
        print(f"{t.name:44} {t.tensor_type.name:8} {mean:10.2e} {std:10.2e} {tstd:10.2e} {ratio:7.3f} {x.min():9.4f} {x.max():9.4f}")
        if x.size >= 1024:  # tiny vectors are too small for a statistical check
            # Mean within 4 standard errors (plus 1% of σ), std within 10%.
            if abs(mean - tmean) > tstd * (4 / np.sqrt(x.size) + 0.01) or abs(ratio - 1) > 0.10:
                failures.append(f"{t.name}: mean {mean:.3g} std {std:.3g}, wanted {tmean} / {tstd:.3g}")
            if tstd != 0 and tmean == 0 and x.size >= 65536:
                by_kind.setdefault(t.tensor_type.name, []).append(ratio)
    print("\nstd / target by type (projections with >= 65536 elements):")
    for k, v in sorted(by_kind.items()):
        print(f"  {k:8} n={len(v):3}  mean {np.mean(v):.4f}  min {np.min(v):.4f}  max {np.max(v):.4f}")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], *(int(a) for a in sys.argv[2:3])))
