#!/usr/bin/env python3
"""Reference data for swegym-lm's GGUF reader, made with llama.cpp's own `gguf` package.

Writes (committed; the Rust tests compare against them):
  tests/fixtures/quant_types.gguf   a small GGUF v3, alignment 64, one tensor per ggml type
                                    plus metadata of every value type
  tests/fixtures/quant_types.json   the metadata and, per tensor, its ggml type, dims and the
                                    values gguf.quants.dequantize gives (row-major, torch order)
  tests/fixtures/smollm2_gguf_reference.json
                                    for the shipped SmolLM2 GGUF (when present): per tensor the
                                    type, dims, first 16 dequantized values and float64 sum

Usage (the venv made by scripts/setup.sh has gguf + numpy):
  ~/.cache/swegym/venv/bin/python crates/lm/scripts/make_gguf_fixtures.py [SMOLLM2_GGUF]
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
ROWS, COLS = 3, 256  # 256 = one K-quant super-block per row

# types gguf-py can quantize: quantize random normals
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
# K-quants (gguf-py only dequantizes these): random bytes with sane f16 scales
RANDOM_BLOCKS = {T.Q4_K: [0, 2], T.Q6_K: [208], T.Q2_K: [80, 82], T.Q3_K: [108], T.Q5_K: [0, 2]}


def f16_scale_bytes(rng):
    return np.array([rng.uniform(0.001, 0.05)], dtype=np.float16).view(np.uint8)


def make_tensor(qtype, rng):
    if qtype in QUANTIZABLE:
        x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        if qtype == T.F32:
            return x, x
        if qtype == T.F16:
            return x.astype(np.float16), x.astype(np.float16).astype(np.float32)
        q = quantize(x, qtype)
        return q, dequantize(q, qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * COLS // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for b in range(n_blocks):
        for off in RANDOM_BLOCKS[qtype]:
            raw[b, off:off + 2] = f16_scale_bytes(rng)
    raw = raw.reshape(ROWS, COLS // block * size)
    return raw, dequantize(raw, qtype)


def write_quant_fixture():
    rng = np.random.default_rng(20261121)
    path = os.path.join(FIXTURES, "quant_types.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_custom_alignment(64)
    meta = {
        "test.u8": (w.add_uint8, 200), "test.i8": (w.add_int8, -100),
        "test.u16": (w.add_uint16, 60000), "test.i16": (w.add_int16, -30000),
        "test.u32": (w.add_uint32, 4000000000), "test.i32": (w.add_int32, -2000000000),
        "test.f32": (w.add_float32, 0.25), "test.bool": (w.add_bool, True),
        "test.string": (w.add_string, "héllo ✓"), "test.u64": (w.add_uint64, 2**40 + 3),
        "test.i64": (w.add_int64, -(2**40)), "test.f64": (w.add_float64, 1.5e-300),
        "test.array_i32": (w.add_array, [1, -2, 3]),
        "test.array_str": (w.add_array, ["a", "bc", ""]),
    }
    for key, (fn, value) in meta.items():
        fn(key, value)
    expected = {"alignment": 64, "metadata": {k: v for k, (_, v) in meta.items()}, "tensors": {}}
    for qtype in QUANTIZABLE + list(RANDOM_BLOCKS):
        name = f"t.{qtype.name.lower()}"
        data, values = make_tensor(qtype, rng)
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
        expected["tensors"][name] = {
            "type": qtype.name,
            "dims": [COLS, ROWS],  # ggml order: innermost first
            "values": [float(v) for v in np.asarray(values, dtype=np.float32).reshape(-1)],
        }
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(os.path.join(FIXTURES, "quant_types.json"), "w") as f:
        json.dump(expected, f)
    print("wrote", path, os.path.getsize(path), "bytes")


def write_smollm2_reference(gguf_path):
    r = gguf.GGUFReader(gguf_path)
    wanted = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
              "blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "output_norm.weight"]
    out = {"file": os.path.basename(gguf_path), "tensors": {}}
    for t in r.tensors:
        if t.name not in wanted:
            continue
        values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        out["tensors"][t.name] = {
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "first16": [float(v) for v in values[:16]],
            "sum": float(values.astype(np.float64).sum()),
            "sum_abs": float(np.abs(values.astype(np.float64)).sum()),
        }
    path = os.path.join(FIXTURES, "smollm2_gguf_reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    os.makedirs(FIXTURES, exist_ok=True)
    write_quant_fixture()
    cache = os.environ.get("SWEGYM_CACHE", os.path.expanduser("~/.cache/swegym"))
    smol = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(smol):
        write_smollm2_reference(smol)
    else:
        print("no", smol, "- skipped the SmolLM2 reference")
