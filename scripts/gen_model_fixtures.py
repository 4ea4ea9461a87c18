#!/usr/bin/env python3
"""The project's own model fixtures: tiny DeepSeek V4 Flash models in the
published ds4 GGUF layout, with reference logits from HF transformers.

For every fixture this script

1. writes a tiny GGUF in exactly the published ds4 layout (arch `deepseek4`,
   every `deepseek4.*` metadata key with the types of the published files, the
   tensor names / order / shapes / types of MODEL.md §2, a small GPT-2 style
   tokenizer), with random but numerically sane weights: the quantized tensors
   (Q8_0, Q2_K, Q4_K, IQ2_XXS) are raw random *valid blocks*, F16/F32 plain;
2. reads the file back with `gguf.GGUFReader` and dequantizes every tensor with
   `gguf.quants.dequantize` (a decoder independent of ds4) to get the effective
   f32 weights;
3. loads them into HF transformers 5.23 `DeepseekV4ForCausalLM`, built from the
   file's own metadata (explicit per-layer attention types, see MODEL.md §7 row
   1), and records the logits at every position in plain f32, with no
   inference-time simulation (the "exact numerics" of TESTING.md), for a fixed
   random token sequence;
4. checks every discontinuity of the forward pass (learned expert top-k,
   lightning-indexer top-k, the logits' argmax) for near-ties: a fixture whose
   smallest relative gap is below `MIN_REL_GAP` would make two correct f32
   implementations disagree, so the token sequence is redrawn (next seed) until
   none is left. The gaps found are written to config.json.

Output per fixture, in tests/data/fixtures_<name>/: model.gguf, tokens.i32
(int32 LE), logits.npy (float32 [T, vocab]), config.json (shape, seeds,
generator version, sizes, gaps). Everything is deterministic: fixed seeds,
single-threaded torch.

Environment (PyPI only):

    python3 -m venv .venv
    .venv/bin/pip install -r scripts/requirements-fixtures.txt

Regenerate all fixtures (about 20 s on 2 cores), or some of them:

    .venv/bin/python scripts/gen_model_fixtures.py
    .venv/bin/python scripts/gen_model_fixtures.py --only q4k

Validate the HF side of the pipeline on the shipped oracle (tiny_a: reads its
GGUF, rebuilds transformers from it, compares with its hf_none_logits.npy):

    .venv/bin/python scripts/gen_model_fixtures.py --validate-tiny-a

(with transformers 5.23.0 / torch 2.15.0 this reproduces tiny_a's hf_none_logits.npy
bit for bit: relative L2 0, argmax 160/160).

config.json also records `sensitivity`: how far the logits move when the indexer keeps
every row, or when the CSA / HCA compressed rows are dropped, so that a fixture that
could not catch a bug in that machinery would show.

The Rust side is crates/ds4-cpu/tests/oracle_own.rs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 1
REPO = Path(__file__).resolve().parent.parent
TINY_A = REPO / "tests" / "data" / "tiny_a"

# A discontinuity closer than this (relative) is treated as a near-tie.
MIN_REL_GAP = 5e-5


# --------------------------------------------------------------------------------------
# Fixture shapes


@dataclass
class Shape:
    name: str
    n_layer: int
    compress_ratios: list[int]
    # Routed-expert types per layer: "q2" (IQ2_XXS gate/up, Q2_K down) or "q4" (Q4_K).
    experts: list[str]
    n_tokens: int
    vocab: int = 512
    d_model: int = 256
    n_head: int = 4
    head_dim: int = 128
    n_rot: int = 64
    q_lora_rank: int = 128
    o_lora_rank: int = 64
    n_out_group: int = 2
    n_expert: int = 4
    n_expert_used: int = 2
    d_ff: int = 256
    n_hash_layer: int = 1
    sliding_window: int = 8
    indexer_heads: int = 8
    indexer_head_dim: int = 128
    indexer_top_k: int = 4
    n_hc: int = 4
    sinkhorn_iters: int = 20
    weight_seed: int = 0
    token_seed: int = 0
    comment: str = ""


SHAPES = [
    Shape(
        name="hca128",
        comment="production HCA ratio 128 (5 heavily compressed rows in 640 tokens) after a CSA "
        "layer with top-8 selection among up to 160 rows, window 16",
        n_layer=2,
        compress_ratios=[4, 128],
        experts=["q2"] * 2,
        n_tokens=640,
        sliding_window=16,
        q_lora_rank=64,
        indexer_heads=8,
        indexer_top_k=8,
        weight_seed=1001,
        token_seed=2001,
    ),
    Shape(
        name="q4k",
        comment="Q4_K routed experts (gate/up/down) in every layer; otherwise tiny_a-like "
        "(window 8, CSA top-4 and HCA ratio 16 over 160 tokens)",
        n_layer=3,
        compress_ratios=[0, 4, 16],
        experts=["q4"] * 3,
        n_tokens=160,
        q_lora_rank=64,
        indexer_heads=8,
        weight_seed=1002,
        token_seed=2002,
    ),
    Shape(
        name="indexer_long",
        comment="two CSA layers with top-6 selection among up to 96 rows at 384 tokens, "
        "mixed file (q2 routed experts in layer 0, q4 in layer 1), 8 heads in 4 output groups, 3 of 6 experts",
        n_layer=2,
        compress_ratios=[4, 4],
        experts=["q2", "q4"],
        n_tokens=384,
        n_head=8,
        n_out_group=4,
        o_lora_rank=32,
        q_lora_rank=64,
        indexer_heads=8,
        indexer_top_k=6,
        n_expert=6,
        n_expert_used=3,
        weight_seed=1003,
        token_seed=2003,
    ),
]


# --------------------------------------------------------------------------------------
# Quantized blocks (MODEL.md §6). Generated as raw random valid blocks, then the
# scales are set so that the dequantized tensor has the requested standard deviation.

Q8_0_DT = np.dtype([("d", "<f2"), ("q", "i1", 32)])
Q2_K_DT = np.dtype([("scales", "u1", 16), ("qs", "u1", 64), ("d", "<f2"), ("dmin", "<f2")])
Q4_K_DT = np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)])
IQ2_XXS_DT = np.dtype([("d", "<f2"), ("qs", "u1", 64)])


def _qtype(name: str):
    from gguf import GGMLQuantizationType as Q

    return getattr(Q, name)


def random_blocks(rng: np.random.Generator, kind: str, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Random blocks of `kind` for a tensor of numpy shape `shape` (last = ne0), as
    uint8 [..., row_bytes], scaled so the dequantized values have std `std`."""
    from gguf.quants import dequantize

    *outer, ne0 = shape
    block = 32 if kind == "Q8_0" else 256
    assert ne0 % block == 0, (kind, shape)
    nb = ne0 // block
    n = int(np.prod(outer, dtype=np.int64)) * nb
    jitter = np.exp(rng.normal(0.0, 0.2, n))  # per-block scale variety
    if kind == "Q8_0":
        b = np.zeros(n, Q8_0_DT)
        b["q"] = rng.integers(-127, 128, (n, 32), dtype=np.int8)
        d = jitter
    elif kind == "Q2_K":
        b = np.zeros(n, Q2_K_DT)
        sc = rng.integers(1, 16, (n, 16))
        # min ≈ mean of the codes (1.5·sc) with dmin = 2·d, so rows are about zero-mean
        m = np.clip(np.rint(0.75 * sc) + rng.integers(-1, 2, (n, 16)), 0, 15)
        b["scales"] = (sc | (m.astype(np.int64) << 4)).astype(np.uint8)
        b["qs"] = rng.integers(0, 256, (n, 64), dtype=np.uint8)
        d = jitter
        b["dmin"] = 2.0 * d
    elif kind == "Q4_K":
        b = np.zeros(n, Q4_K_DT)
        sc = rng.integers(1, 64, (n, 8))
        # min ≈ mean of the codes (7.5·sc) with dmin = 8·d
        m = np.clip(np.rint(7.5 * sc / 8.0) + rng.integers(-1, 2, (n, 8)), 0, 63).astype(np.int64)
        s = np.zeros((n, 12), np.int64)
        s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
        s[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
        s[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
        b["scales"] = s.astype(np.uint8)
        b["qs"] = rng.integers(0, 256, (n, 128), dtype=np.uint8)
        d = jitter
        b["dmin"] = 8.0 * d
    elif kind == "IQ2_XXS":
        b = np.zeros(n, IQ2_XXS_DT)
        b["qs"] = rng.integers(0, 256, (n, 64), dtype=np.uint8)
        d = jitter
    else:
        raise ValueError(kind)
    b["d"] = d
    raw = b.view(np.uint8).reshape(*outer, nb * b.dtype.itemsize)
    got = float(dequantize(raw, _qtype(kind)).std())
    k = std / got
    b["d"] = (b["d"].astype(np.float32) * k).astype(np.float16)
    if "dmin" in b.dtype.names:
        b["dmin"] = (b["dmin"].astype(np.float32) * k).astype(np.float16)
    return b.view(np.uint8).reshape(*outer, nb * b.dtype.itemsize)


# --------------------------------------------------------------------------------------
# Writing the GGUF


def tokenizer_arrays(vocab: int) -> tuple[list[str], list[str]]:
    """tiny_a's tokenizer (a reduced real DeepSeek vocabulary + the chat specials),
    cut to `vocab` entries: the first ones plus the trailing chat specials, and the
    merges whose parts and result survive."""
    import gguf

    r = gguf.GGUFReader(TINY_A / "tiny_ds4.gguf")

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    if vocab == len(tokens):
        return tokens, merges
    specials = [t for t in tokens[-8:] if t.startswith("<") or "DSML" in t]
    specials = tokens[len(tokens) - len(specials):]
    kept = tokens[: vocab - len(specials)] + specials
    have = set(kept)
    kept_merges = []
    for m in merges:
        a, b = m.split(" ", 1)
        if a in have and b in have and a + b in have:
            kept_merges.append(m)
    return kept, kept_merges


def write_gguf(s: Shape, path: Path) -> None:
    import gguf
    from gguf import GGMLQuantizationType as Q, GGUFValueType as V

    rng = np.random.default_rng(s.weight_seed)
    d, hd, V_ = s.d_model, s.head_dim, s.vocab
    hc_flat, mix = s.n_hc * d, (2 + s.n_hc) * s.n_hc
    w = gguf.GGUFWriter(str(path), "deepseek4")
    w.add_string("general.name", f"ds4-own-fixture-{s.name}")
    u32 = lambda k, v: w.add_key_value("deepseek4." + k, int(v), V.UINT32)  # noqa: E731
    f32 = lambda k, v: w.add_key_value("deepseek4." + k, float(v), V.FLOAT32)  # noqa: E731
    u32("block_count", s.n_layer)
    u32("embedding_length", d)
    u32("vocab_size", V_)
    u32("attention.head_count", s.n_head)
    u32("attention.head_count_kv", 1)
    u32("attention.key_length", hd)
    u32("attention.value_length", hd)
    u32("rope.dimension_count", s.n_rot)
    u32("attention.q_lora_rank", s.q_lora_rank)
    u32("attention.output_lora_rank", s.o_lora_rank)
    u32("attention.output_group_count", s.n_out_group)
    u32("expert_count", s.n_expert)
    u32("expert_used_count", s.n_expert_used)
    u32("expert_feed_forward_length", s.d_ff)
    u32("expert_shared_count", 1)
    u32("hash_layer_count", s.n_hash_layer)
    u32("attention.sliding_window", s.sliding_window)
    u32("attention.indexer.head_count", s.indexer_heads)
    u32("attention.indexer.key_length", s.indexer_head_dim)
    u32("attention.indexer.top_k", s.indexer_top_k)
    u32("hyper_connection.count", s.n_hc)
    u32("hyper_connection.sinkhorn_iterations", s.sinkhorn_iters)
    w.add_key_value("deepseek4.attention.compress_ratios", list(s.compress_ratios), V.ARRAY, V.INT32)
    w.add_key_value("deepseek4.swiglu_clamp_exp", [10.0] * s.n_layer, V.ARRAY, V.FLOAT32)
    w.add_key_value("deepseek4.rope.scaling.original_context_length", 65536, V.UINT64)
    f32("rope.freq_base", 10000.0)
    f32("rope.scaling.factor", 16.0)
    f32("rope.scaling.yarn_beta_fast", 32.0)
    f32("rope.scaling.yarn_beta_slow", 1.0)
    f32("attention.compress_rope_freq_base", 160000.0)
    f32("expert_weights_scale", 1.5)
    f32("attention.layer_norm_rms_epsilon", 1e-6)
    f32("hyper_connection.epsilon", 1e-6)
    w.add_key_value("deepseek4.expert_weights_norm", True, V.BOOL)
    tokens, merges = tokenizer_arrays(V_)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_key_value("tokenizer.ggml.bos_token_id", 0, V.UINT32)
    w.add_key_value("tokenizer.ggml.eos_token_id", 1, V.UINT32)

    # numpy shapes below are GGUF dims reversed: [out, in] / [experts, out, in].
    def dense(name, shape, std, kind):
        if kind == "F16":
            w.add_tensor(name, (rng.normal(0.0, std, shape)).astype(np.float16))
        else:
            w.add_tensor(name, random_blocks(rng, kind, shape, std), raw_dtype=getattr(Q, kind))

    def vec(name, shape, mean, std):
        w.add_tensor(name, (mean + rng.normal(0.0, std, shape)).astype(np.float32))

    dense("token_embd.weight", (V_, d), 1.0, "F16")
    vec("output_hc_base.weight", (s.n_hc,), 0.0, 0.4)
    dense("output_hc_fn.weight", (s.n_hc, hc_flat), 1 / math.sqrt(hc_flat), "F16")
    vec("output_hc_scale.weight", (1,), 1.0, 0.2)
    vec("output_norm.weight", (d,), 1.0, 0.1)
    dense("output.weight", (V_, d), 2 / math.sqrt(d), "Q8_0")
    for il in range(s.n_layer):
        p = f"blk.{il}."
        ratio = s.compress_ratios[il]
        dense(p + "hc_attn_fn.weight", (mix, hc_flat), 1 / math.sqrt(hc_flat), "F16")
        vec(p + "hc_attn_scale.weight", (3,), 1.0, 0.2)
        vec(p + "hc_attn_base.weight", (mix,), 0.0, 0.4)
        vec(p + "attn_norm.weight", (d,), 1.0, 0.1)
        dense(p + "attn_q_a.weight", (s.q_lora_rank, d), 1 / math.sqrt(d), "Q8_0")
        vec(p + "attn_q_a_norm.weight", (s.q_lora_rank,), 1.0, 0.1)
        dense(p + "attn_q_b.weight", (s.n_head * hd, s.q_lora_rank), 1 / math.sqrt(s.q_lora_rank), "Q8_0")
        dense(p + "attn_kv.weight", (hd, d), 1 / math.sqrt(d), "Q8_0")
        vec(p + "attn_kv_a_norm.weight", (hd,), 1.0, 0.1)
        vec(p + "attn_sinks.weight", (s.n_head,), 0.0, 0.5)
        hpg = s.n_head // s.n_out_group
        dense(p + "attn_output_a.weight", (s.n_out_group * s.o_lora_rank, hpg * hd), 1 / math.sqrt(hpg * hd), "Q8_0")
        dense(
            p + "attn_output_b.weight",
            (d, s.n_out_group * s.o_lora_rank),
            1 / math.sqrt(s.n_out_group * s.o_lora_rank),
            "Q8_0",
        )
        if ratio:
            cw = 2 * hd if ratio == 4 else hd
            dense(p + "attn_compressor_ape.weight", (ratio, cw), 0.5, "F16")
            dense(p + "attn_compressor_kv.weight", (cw, d), 1 / math.sqrt(d), "F16")
            dense(p + "attn_compressor_gate.weight", (cw, d), 1 / math.sqrt(d), "F16")
            vec(p + "attn_compressor_norm.weight", (hd,), 1.0, 0.1)
            if ratio == 4:
                ih, idim = s.indexer_heads, s.indexer_head_dim
                dense(p + "indexer.attn_q_b.weight", (ih * idim, s.q_lora_rank), 1 / math.sqrt(s.q_lora_rank), "F16")
                dense(p + "indexer.proj.weight", (ih, d), 1 / math.sqrt(d), "F16")
                dense(p + "indexer_compressor_ape.weight", (ratio, 2 * idim), 0.5, "F16")
                dense(p + "indexer_compressor_kv.weight", (2 * idim, d), 1 / math.sqrt(d), "F16")
                dense(p + "indexer_compressor_gate.weight", (2 * idim, d), 1 / math.sqrt(d), "F16")
                vec(p + "indexer_compressor_norm.weight", (idim,), 1.0, 0.1)
        dense(p + "hc_ffn_fn.weight", (mix, hc_flat), 1 / math.sqrt(hc_flat), "F16")
        vec(p + "hc_ffn_scale.weight", (3,), 1.0, 0.2)
        vec(p + "hc_ffn_base.weight", (mix,), 0.0, 0.4)
        vec(p + "ffn_norm.weight", (d,), 1.0, 0.1)
        dense(p + "ffn_gate_inp.weight", (s.n_expert, d), 1 / math.sqrt(d), "F16")
        gate_up, down = {"q2": ("IQ2_XXS", "Q2_K"), "q4": ("Q4_K", "Q4_K")}[s.experts[il]]
        E, f = s.n_expert, s.d_ff
        dense(p + "ffn_gate_exps.weight", (E, f, d), 4 / math.sqrt(d), gate_up)
        dense(p + "ffn_up_exps.weight", (E, f, d), 4 / math.sqrt(d), gate_up)
        dense(p + "ffn_down_exps.weight", (E, d, f), 0.1 / math.sqrt(f), down)
        dense(p + "ffn_gate_shexp.weight", (f, d), 4 / math.sqrt(d), "Q8_0")
        dense(p + "ffn_up_shexp.weight", (f, d), 4 / math.sqrt(d), "Q8_0")
        dense(p + "ffn_down_shexp.weight", (d, f), 0.1 / math.sqrt(f), "Q8_0")
        if il < s.n_hash_layer:
            t2e = np.stack([rng.permutation(E)[: s.n_expert_used] for _ in range(V_)]).astype(np.int32)
            w.add_tensor(p + "ffn_gate_tid2eid.weight", t2e)
        else:
            vec(p + "exp_probs_b.bias", (E,), 0.0, 0.05)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------------------
# Reading a GGUF back: metadata and effective (dequantized) f32 weights


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("deepseek4."):
            meta[k[len("deepseek4."):]] = f.contents()
    eff = {}
    for t in r.tensors:
        a = np.asarray(t.data)
        if t.tensor_type.name in ("F32", "F16", "I32"):
            eff[t.name] = a.astype(np.float32) if t.tensor_type.name != "I32" else a.copy()
        else:
            eff[t.name] = dequantize(a, t.tensor_type).astype(np.float32)
        # numpy order is the GGUF dims reversed
        assert list(eff[t.name].shape) == [int(x) for x in reversed(t.shape)], (t.name, eff[t.name].shape, t.shape)
    return meta, eff


# --------------------------------------------------------------------------------------
# HF transformers model from the file


def hf_config(meta: dict):
    from transformers import DeepseekV4Config

    ratios = [int(x) for x in meta["attention.compress_ratios"]][: meta["block_count"]]
    heavy = sorted({r for r in ratios if r not in (0, 4)})
    assert len(heavy) <= 1, "transformers has one HCA ratio per model"
    types = {0: "sliding_attention", 4: "compressed_sparse_attention"}
    layer_types = [types.get(r, "heavily_compressed_attention") for r in ratios]
    n_layer, n_hash = meta["block_count"], meta["hash_layer_count"]
    clamp = set(float(x) for x in meta["swiglu_clamp_exp"][:n_layer])
    assert len(clamp) == 1
    cfg = DeepseekV4Config(
        vocab_size=meta["vocab_size"],
        hidden_size=meta["embedding_length"],
        moe_intermediate_size=meta["expert_feed_forward_length"],
        num_hidden_layers=n_layer,
        num_attention_heads=meta["attention.head_count"],
        num_key_value_heads=1,
        head_dim=meta["attention.key_length"],
        q_lora_rank=meta["attention.q_lora_rank"],
        num_experts_per_tok=meta["expert_used_count"],
        n_routed_experts=meta["expert_count"],
        n_shared_experts=1,
        scoring_func="sqrtsoftplus",
        norm_topk_prob=True,
        routed_scaling_factor=float(meta["expert_weights_scale"]),
        rope_theta=float(meta["rope.freq_base"]),
        layer_types=layer_types,
        compress_rates={
            "compressed_sparse_attention": 4,
            "heavily_compressed_attention": heavy[0] if heavy else 128,
        },
        compress_rope_theta=float(meta["attention.compress_rope_freq_base"]),
        hc_mult=meta["hyper_connection.count"],
        hc_sinkhorn_iters=meta["hyper_connection.sinkhorn_iterations"],
        hc_eps=1e-6,
        mlp_layer_types=["hash_moe"] * n_hash + ["moe"] * (n_layer - n_hash),
        swiglu_limit=clamp.pop(),
        sliding_window=meta["attention.sliding_window"],
        o_groups=meta["attention.output_group_count"],
        o_lora_rank=meta["attention.output_lora_rank"],
        index_n_heads=meta["attention.indexer.head_count"],
        index_head_dim=meta["attention.indexer.key_length"],
        index_topk=meta["attention.indexer.top_k"],
        rms_norm_eps=1e-6,
        partial_rotary_factor=meta["rope.dimension_count"] / meta["attention.key_length"],
        rope_parameters={
            "rope_type": "yarn",
            "factor": float(meta["rope.scaling.factor"]),
            "original_max_position_embeddings": int(meta["rope.scaling.original_context_length"]),
            "beta_fast": float(meta["rope.scaling.yarn_beta_fast"]),
            "beta_slow": float(meta["rope.scaling.yarn_beta_slow"]),
        },
        tie_word_embeddings=False,
        use_cache=False,
    )
    cfg._attn_implementation = "eager"
    assert cfg.rope_parameters["compress"]["attention_factor"] == 1.0
    return cfg


def hf_state_dict(cfg, eff: dict[str, np.ndarray]) -> dict:
    import torch

    T = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sd = {
        "model.embed_tokens.weight": T(eff["token_embd.weight"]),
        "lm_head.weight": T(eff["output.weight"]),
        "model.norm.weight": T(eff["output_norm.weight"]),
        "model.hc_head.hc_fn": T(eff["output_hc_fn.weight"]),
        "model.hc_head.hc_base": T(eff["output_hc_base.weight"]),
        "model.hc_head.hc_scale": T(eff["output_hc_scale.weight"]),
    }
    for il in range(cfg.num_hidden_layers):
        g = lambda n: eff[f"blk.{il}.{n}"]  # noqa: E731
        p = f"model.layers.{il}."
        a = p + "self_attn."
        for hc, src in (("attn_hc", "hc_attn"), ("ffn_hc", "hc_ffn")):
            sd[p + hc + ".fn"] = T(g(src + "_fn.weight"))
            sd[p + hc + ".base"] = T(g(src + "_base.weight"))
            sd[p + hc + ".scale"] = T(g(src + "_scale.weight"))
        sd[p + "input_layernorm.weight"] = T(g("attn_norm.weight"))
        sd[p + "post_attention_layernorm.weight"] = T(g("ffn_norm.weight"))
        sd[a + "q_a_proj.weight"] = T(g("attn_q_a.weight"))
        sd[a + "q_a_norm.weight"] = T(g("attn_q_a_norm.weight"))
        sd[a + "q_b_proj.weight"] = T(g("attn_q_b.weight"))
        sd[a + "kv_proj.weight"] = T(g("attn_kv.weight"))
        sd[a + "kv_norm.weight"] = T(g("attn_kv_a_norm.weight"))
        sd[a + "sinks"] = T(g("attn_sinks.weight"))
        sd[a + "o_a_proj.weight"] = T(g("attn_output_a.weight"))
        sd[a + "o_b_proj.weight"] = T(g("attn_output_b.weight"))
        lt = cfg.layer_types[il]
        if lt != "sliding_attention":
            c = a + "compressor."
            sd[c + "kv_proj.weight"] = T(g("attn_compressor_kv.weight"))
            sd[c + "gate_proj.weight"] = T(g("attn_compressor_gate.weight"))
            sd[c + "position_bias"] = T(g("attn_compressor_ape.weight"))  # [ratio, width]
            sd[c + "kv_norm.weight"] = T(g("attn_compressor_norm.weight"))
        if lt == "compressed_sparse_attention":
            x = a + "compressor.indexer."
            sd[x + "kv_proj.weight"] = T(g("indexer_compressor_kv.weight"))
            sd[x + "gate_proj.weight"] = T(g("indexer_compressor_gate.weight"))
            sd[x + "position_bias"] = T(g("indexer_compressor_ape.weight"))
            sd[x + "kv_norm.weight"] = T(g("indexer_compressor_norm.weight"))
            sd[x + "q_b_proj.weight"] = T(g("indexer.attn_q_b.weight"))
            sd[x + "scorer.weights_proj.weight"] = T(g("indexer.proj.weight"))
        m = p + "mlp."
        sd[m + "gate.weight"] = T(g("ffn_gate_inp.weight"))
        if cfg.mlp_layer_types[il] == "hash_moe":
            sd[m + "gate.tid2eid"] = T(g("ffn_gate_tid2eid.weight").astype(np.int64))  # [vocab, k]
        else:
            bias = eff.get(f"blk.{il}.exp_probs_b.bias")
            if bias is None:
                bias = np.zeros(cfg.n_routed_experts, np.float32)
            sd[m + "gate.e_score_correction_bias"] = T(bias)
        sd[m + "experts.gate_up_proj"] = T(np.concatenate([g("ffn_gate_exps.weight"), g("ffn_up_exps.weight")], axis=1))
        sd[m + "experts.down_proj"] = T(g("ffn_down_exps.weight"))
        sd[m + "shared_experts.gate_proj.weight"] = T(g("ffn_gate_shexp.weight"))
        sd[m + "shared_experts.up_proj.weight"] = T(g("ffn_up_shexp.weight"))
        sd[m + "shared_experts.down_proj.weight"] = T(g("ffn_down_shexp.weight"))
    return sd


def hf_model(meta, eff):
    import torch
    from transformers import DeepseekV4ForCausalLM

    cfg = hf_config(meta)
    torch.manual_seed(0)
    model = DeepseekV4ForCausalLM(cfg).float().eval()
    missing, unexpected = model.load_state_dict(hf_state_dict(cfg, eff), strict=True)
    assert not missing and not unexpected
    return model


class Gaps:
    """Hooks that record how close each discontinuity came to flipping."""

    def __init__(self, model):
        from transformers.models.deepseek_v4 import modeling_deepseek_v4 as M

        self.router: list[float] = []
        self.indexer: list[float] = []
        self.indexer_zero_ties = 0
        self.handles = []
        for mod in model.modules():
            if isinstance(mod, M.DeepseekV4TopKRouter):
                self.handles.append(mod.register_forward_hook(self._router))
            if isinstance(mod, M.DeepseekV4Indexer):
                self.handles.append(mod.scorer.register_forward_hook(self._scorer(mod)))

    def _router(self, mod, args, out):
        import torch

        flat = args[0].reshape(-1, mod.hidden_dim)
        scores = mod.score_fn(torch.nn.functional.linear(flat, mod.weight)) + mod.e_score_correction_bias
        top = scores.sort(dim=-1, descending=True).values
        k = mod.top_k
        if top.shape[-1] > k:
            gap = (top[:, k - 1] - top[:, k]) / top[:, k - 1 : k + 1].abs().max(dim=-1).values.clamp_min(1e-30)
            self.router.append(float(gap.min()))

    def _scorer(self, indexer):
        def hook(mod, args, out):
            import torch

            scores = out[0].double()  # [S, T]
            S, T = scores.shape
            k = indexer.index_topk
            valid = torch.arange(T)[None, :] < ((torch.arange(S) + 1) // indexer.compress_rate)[:, None]
            for t in range(S):
                v = scores[t][valid[t]]
                if v.numel() <= k:
                    continue
                top = v.sort(descending=True).values
                a, b = float(top[k - 1]), float(top[k])
                if a == b == 0.0:
                    self.indexer_zero_ties += 1
                self.indexer.append((a - b) / max(abs(a), abs(b), 1e-30))

        return hook

    def summary(self) -> dict:
        return {
            "router_min_rel_gap": min(self.router) if self.router else None,
            "indexer_min_rel_gap": min(self.indexer) if self.indexer else None,
            "indexer_selections_checked": len(self.indexer),
            "indexer_zero_ties": self.indexer_zero_ties,
        }


def hf_logits(model, tokens: np.ndarray, gaps: bool = False):
    import torch

    g = Gaps(model) if gaps else None
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.astype(np.int64))[None], use_cache=False)
    logits = out.logits[0].float().numpy()
    if g is None:
        return logits, None
    for h in g.handles:
        h.remove()
    top2 = np.sort(logits, axis=-1)[:, -2:]
    summary = g.summary()
    summary["argmax_min_rel_gap"] = float(
        ((top2[:, 1] - top2[:, 0]) / np.maximum(np.abs(top2).max(axis=-1), 1e-30)).min()
    )
    return logits, summary


def sensitivity(model, tokens: np.ndarray, logits: np.ndarray) -> dict:
    """How much the fixture depends on the long-range machinery: relative L2 change of
    the logits (over the positions that can see a compressed row) when the indexer
    keeps every row instead of its top-k, and when a layer kind's compressed rows are
    dropped altogether. Near zero would mean the fixture cannot catch a bug there."""
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as M

    out = {}
    attns = [m for m in model.modules() if isinstance(m, M.DeepseekV4Attention)]
    indexers = [m for m in model.modules() if isinstance(m, M.DeepseekV4Indexer)]
    csa = model.config.compress_rates["compressed_sparse_attention"]
    hca = model.config.compress_rates["heavily_compressed_attention"]
    if indexers:
        keep = [m.index_topk for m in indexers]
        for m in indexers:
            m.index_topk = 1 << 30
        alt, _ = hf_logits(model, tokens)
        for m, k in zip(indexers, keep):
            m.index_topk = k
        first = (keep[0] + 1) * csa - 1  # first position with more rows than top-k
        out["indexer_all_rows_rel_l2"] = rel_l2(alt[first:], logits[first:]) if first < len(tokens) else 0.0
    for kind, ratio in (("compressed_sparse_attention", csa), ("heavily_compressed_attention", hca)):
        layers = [a for a in attns if a.layer_type == kind]
        if not layers:
            continue
        saved = [a.compressor for a in layers]
        for a in layers:
            a.compressor = None
        alt, _ = hf_logits(model, tokens)
        for a, c in zip(layers, saved):
            a.compressor = c
        first = ratio - 1  # first position that sees a compressed row
        key = "csa" if kind.startswith("compressed") else "hca"
        out[f"no_{key}_rows_rel_l2"] = rel_l2(alt[first:], logits[first:]) if first < len(tokens) else 0.0
    return out


def rel_l2(a, b) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------
# Commands


def setup_torch():
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def validate_tiny_a() -> None:
    meta, eff = read_gguf(TINY_A / "tiny_ds4.gguf")
    model = hf_model(meta, eff)
    tokens = np.fromfile(TINY_A / "tokens.i32", dtype="<i4")
    logits, gaps = hf_logits(model, tokens, gaps=True)
    want = np.load(TINY_A / "hf_none_logits.npy")
    agree = int((logits.argmax(-1) == want.argmax(-1)).sum())
    print(f"tiny_a: rel L2 vs hf_none_logits.npy {rel_l2(logits, want):.3e}, argmax {agree}/{len(tokens)}")
    print(f"tiny_a gaps: {gaps}")
    print(f"tiny_a sensitivity: {sensitivity(model, tokens, logits)}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(s: Shape, out_root: Path, max_tries: int = 20) -> dict:
    out = out_root / f"fixtures_{s.name}"
    out.mkdir(parents=True, exist_ok=True)
    gguf_path = out / "model.gguf"
    write_gguf(s, gguf_path)
    meta, eff = read_gguf(gguf_path)
    model = hf_model(meta, eff)
    for attempt in range(max_tries):
        token_seed = s.token_seed + attempt
        tokens = np.random.default_rng(token_seed).integers(0, s.vocab, s.n_tokens).astype(np.int32)
        logits, gaps = hf_logits(model, tokens, gaps=True)
        worst = min(v for k, v in gaps.items() if k.endswith("min_rel_gap") and v is not None)
        ok = worst >= MIN_REL_GAP and gaps["indexer_zero_ties"] == 0 and np.isfinite(logits).all()
        print(f"  {s.name}: token seed {token_seed}: smallest relative gap {worst:.2e} {'ok' if ok else '(redraw)'} {gaps}")
        if ok:
            break
    else:
        raise SystemExit(f"{s.name}: no token sequence without near-ties in {max_tries} tries")
    tokens.astype("<i4").tofile(out / "tokens.i32")
    np.save(out / "logits.npy", logits.astype("<f4"))
    info = asdict(s)
    info["token_seed_used"] = token_seed
    info["generator_version"] = GENERATOR_VERSION
    info["generator"] = "scripts/gen_model_fixtures.py"
    from importlib.metadata import version

    import torch
    import transformers

    info["versions"] = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gguf": version("gguf"),
        "numpy": np.__version__,
    }
    info["numerics"] = "exact: plain f32, no FP8/FP4/F16 simulation"
    info["gaps"] = gaps
    info["sensitivity"] = sensitivity(model, tokens, logits)
    info["logits_stats"] = {
        "std": float(logits.std()),
        "max_abs": float(np.abs(logits).max()),
        "distinct_argmax": int(len(np.unique(logits.argmax(-1)))),
    }
    info["files"] = {
        n: {"bytes": (out / n).stat().st_size, "sha256": sha256(out / n)}
        for n in ("model.gguf", "tokens.i32", "logits.npy")
    }
    (out / "config.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="fixture name (repeatable)")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--validate-tiny-a", action="store_true")
    args = ap.parse_args()
    setup_torch()
    if args.validate_tiny_a:
        validate_tiny_a()
        return
    names = {s.name for s in SHAPES}
    for n in args.only or []:
        if n not in names:
            sys.exit(f"unknown fixture {n}; have {sorted(names)}")
    for s in SHAPES:
        if args.only and s.name not in args.only:
            continue
        info = generate(s, args.out)
        sizes = ", ".join(f"{k} {v['bytes']}" for k, v in info["files"].items())
        print(f"{s.name}: {sizes}; gaps {info['gaps']}; sensitivity {info['sensitivity']}")


if __name__ == "__main__":
    main()
