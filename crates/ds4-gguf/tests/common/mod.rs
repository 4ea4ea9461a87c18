//! A small valid GGUF file built with our writer, used by several tests.

use ds4_gguf::{encode_header, GgmlType, TensorSpec, Value, ValueType};

pub fn sample_metadata() -> Vec<(String, Value)> {
    vec![
        (
            "general.architecture".into(),
            Value::String("deepseek4".into()),
        ),
        ("test.u8".into(), Value::U8(7)),
        ("test.i8".into(), Value::I8(-7)),
        ("test.u16".into(), Value::U16(65000)),
        ("test.i16".into(), Value::I16(-300)),
        ("test.u32".into(), Value::U32(4096)),
        ("test.i32".into(), Value::I32(-5)),
        ("test.f32".into(), Value::F32(1.5)),
        ("test.bool".into(), Value::Bool(true)),
        ("test.u64".into(), Value::U64(1 << 40)),
        ("test.i64".into(), Value::I64(-(1 << 40))),
        ("test.f64".into(), Value::F64(1e-6)),
        (
            "test.strings".into(),
            Value::Array(
                ValueType::String,
                vec![
                    Value::String("Ġa".into()),
                    Value::String("<｜User｜>".into()),
                ],
            ),
        ),
        (
            "test.nested".into(),
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::U32, vec![Value::U32(1), Value::U32(2)]),
                    Value::Array(ValueType::I32, vec![]),
                ],
            ),
        ),
        ("test.empty".into(), Value::Array(ValueType::F32, vec![])),
    ]
}

pub fn sample_tensors() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("a.f32", &[3], GgmlType::F32),
        TensorSpec::new("b.q8_0", &[64, 2], GgmlType::Q8_0),
        TensorSpec::new("c.iq2", &[256, 1, 2], GgmlType::IQ2_XXS),
        TensorSpec::new("d.i32", &[6, 5], GgmlType::I32),
    ]
}

/// The bytes of a complete file whose tensor `i` is filled with byte `i + 1`.
pub fn sample_file() -> Vec<u8> {
    let tensors = sample_tensors();
    let (mut bytes, layout) = encode_header(&sample_metadata(), &tensors).unwrap();
    bytes.resize(layout.file_size as usize, 0);
    for (i, &(off, size)) in layout.placements.iter().enumerate() {
        let start = (layout.data_offset + off) as usize;
        bytes[start..start + size as usize].fill(i as u8 + 1);
    }
    bytes
}
