#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_gguf_parse into seeds/ (run from this
directory with a Python that has gguf==0.19.0 and numpy):

- tiny_a_head.bin: the first 4096 bytes of the tiny_a oracle file (its
  header region: magic, counts, the deepseek4.* metadata, the start of the
  tokenizer arrays);
- tiny_a_small.bin: a complete, parsable GGUF with tiny_a's deepseek4.*
  metadata and the small tensors of its globals and layer 0 (under 4096
  bytes, the fuzzing max_len);
- all_types.bin: every metadata value type, string and nested arrays, and
  tensors of several GGML types.
"""
import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType, GGMLQuantizationType

TINY_A = "../../../tests/data/tiny_a/tiny_ds4.gguf"

with open(TINY_A, "rb") as f:
    open("seeds/tiny_a_head.bin", "wb").write(f.read(4096))

r = GGUFReader(TINY_A)
w = GGUFWriter("seeds/tiny_a_small.bin", "deepseek4")
for key, field in r.fields.items():
    if not key.startswith("deepseek4."):
        continue
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        w.add_key_value(key, list(field.contents()), vtype, sub_type=field.types[1])
    else:
        w.add_key_value(key, field.contents(), vtype)
for t in r.tensors:
    if t.n_bytes <= 96 and not t.name.startswith(("blk.1", "blk.2", "blk.3", "blk.4", "blk.5")):
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(d) for d in t.shape])),
                     raw_dtype=t.tensor_type)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

w = GGUFWriter("seeds/all_types.bin", "test")
w.add_uint8("t.u8", 7)
w.add_int8("t.i8", -7)
w.add_uint16("t.u16", 700)
w.add_int16("t.i16", -700)
w.add_uint32("t.u32", 70000)
w.add_int32("t.i32", -70000)
w.add_float32("t.f32", 1.5)
w.add_bool("t.bool", True)
w.add_string("t.str", "héllo")
w.add_uint64("t.u64", 1 << 40)
w.add_int64("t.i64", -(1 << 40))
w.add_float64("t.f64", 2.25)
w.add_array("t.arr_i32", [1, 2, 3])
w.add_array("t.arr_str", ["a", "bc", ""])
w.add_array("t.arr_empty", [])
w.add_array("t.arr_nested", [[1, 2], [3]])
w.add_tensor("f32", np.arange(4, dtype=np.float32))
w.add_tensor("f16", np.arange(8, dtype=np.float16))
w.add_tensor("i32", np.arange(3, dtype=np.int32))
w.add_tensor("q8_0", np.zeros((2, 34), dtype=np.uint8), raw_shape=[2, 34], raw_dtype=GGMLQuantizationType.Q8_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
