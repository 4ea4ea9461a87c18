//! ds4-quant against the `gguf` 0.19.0 Python package, bit for bit.
//!
//! The fixtures are written by `scripts/gen_quant_fixtures.py` (its header
//! documents the file format); this test needs no Python.

use ds4_quant::{dequantize, quantize, BlockFormat};

struct Case {
    format: BlockFormat,
    kind: u32,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn load(name: &str) -> Case {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(&data[..8], b"DS4QFIX1", "{name}: bad magic");
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let format = BlockFormat::from_ggml_type_id(u32_at(8)).expect("known type");
    let kind = u32_at(12);
    let n_elems = u32_at(16) as usize;
    let n_bytes = u32_at(20) as usize;
    let body = &data[24..];
    assert_eq!(body.len(), n_bytes + 4 * n_elems, "{name}: truncated");
    let (raw, vals) = if kind == 0 {
        (&body[..n_bytes], &body[n_bytes..])
    } else {
        (&body[4 * n_elems..], &body[..4 * n_elems])
    };
    let values = vals
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Case {
        format,
        kind,
        bytes: raw.to_vec(),
        values,
    }
}

fn check_dequant(name: &str, format: BlockFormat) {
    let case = load(name);
    assert_eq!(case.format, format);
    assert_eq!(case.kind, 0);
    let mut got = vec![0f32; case.values.len()];
    dequantize(format, &case.bytes, &mut got).unwrap();
    let mut mismatches = 0;
    for (i, (g, e)) in got.iter().zip(&case.values).enumerate() {
        if g.to_bits() != e.to_bits() {
            if mismatches < 5 {
                eprintln!(
                    "{name}: element {i}: got {g:e} ({:#010x}), want {e:e} ({:#010x})",
                    g.to_bits(),
                    e.to_bits()
                );
            }
            mismatches += 1;
        }
    }
    assert_eq!(
        mismatches,
        0,
        "{name}: {mismatches} of {} elements differ",
        got.len()
    );
    println!("{name}: {} elements bit-identical", got.len());
}

#[test]
fn dequant_f16_matches_gguf() {
    check_dequant("dequant_f16.bin", BlockFormat::F16);
}

#[test]
fn dequant_bf16_matches_gguf() {
    check_dequant("dequant_bf16.bin", BlockFormat::BF16);
}

#[test]
fn dequant_q8_0_matches_gguf() {
    check_dequant("dequant_q8_0.bin", BlockFormat::Q8_0);
}

#[test]
fn dequant_q2_k_matches_gguf() {
    check_dequant("dequant_q2_k.bin", BlockFormat::Q2_K);
}

#[test]
fn dequant_q4_k_matches_gguf() {
    check_dequant("dequant_q4_k.bin", BlockFormat::Q4_K);
}

#[test]
fn dequant_iq2_xxs_matches_gguf() {
    check_dequant("dequant_iq2_xxs.bin", BlockFormat::IQ2_XXS);
}

/// gguf-py has no Q8_K; the expected values come from numpy's `d * q`.
#[test]
fn dequant_q8_k_matches_independent_formula() {
    check_dequant("dequant_q8_k.bin", BlockFormat::Q8_K);
}

#[test]
fn quant_q8_0_matches_gguf() {
    let case = load("quant_q8_0.bin");
    assert_eq!((case.format, case.kind), (BlockFormat::Q8_0, 1));
    let mut got = vec![0u8; case.bytes.len()];
    quantize(BlockFormat::Q8_0, &case.values, &mut got).unwrap();
    for (i, (g, e)) in got.chunks(34).zip(case.bytes.chunks(34)).enumerate() {
        assert_eq!(g, e, "block {i}");
    }
    println!("quant_q8_0: {} blocks byte-identical", got.len() / 34);
}
