//! Any byte string given to the GGUF parser either fails with an error or
//! yields a file whose every metadata value and tensor slice can be used.

#![no_main]

use ds4_gguf::{GgufFile, Value};
use libfuzzer_sys::fuzz_target;

/// Reads every part of a value, recursively.
fn touch(v: &Value) -> u64 {
    let own = match v {
        Value::Array(_, items) => items.iter().map(touch).fold(0, u64::wrapping_add),
        Value::String(s) => s.len() as u64,
        v => v
            .as_f64()
            .map(f64::to_bits)
            .or_else(|| v.as_bool().map(u64::from))
            .unwrap_or(0),
    };
    own ^ v.type_name().len() as u64 ^ v.value_type().id() as u64
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let mut acc = file.file_size() ^ file.data_offset ^ file.alignment;
    for (key, value) in file.metadata() {
        acc = acc
            .wrapping_add(touch(value))
            .wrapping_add(key.len() as u64);
        acc ^= value.to_string().len() as u64;
        assert!(file.get(key).is_some());
    }
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.size);
        acc = bytes
            .iter()
            .fold(acc, |a, &b| a.rotate_left(5) ^ u64::from(b));
        acc ^= t.n_elements() ^ t.row_bytes() ^ t.shape_string().len() as u64;
        assert!(file.tensor(&t.name).is_some());
    }
    std::hint::black_box(acc);
});
