//! Shared helpers of the oracle tests: the tiny_a files and a small .npy reader.
#![allow(dead_code)]

pub mod own;

use std::path::PathBuf;

use ds4_cpu::{CpuBackend, CpuOptions};
use ds4_model::numerics::Numerics;
use ds4_model::Model;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn tiny_a_dir() -> PathBuf {
    repo_root().join("tests/data/tiny_a")
}

/// Large oracle files that stay in ../shared (present in CI and dev checkouts).
pub fn shared_oracle(name: &str) -> Option<PathBuf> {
    let p = repo_root().join("../shared/oracle/tiny_a").join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is absent (it lives in ../shared/oracle)",
            p.display()
        );
        None
    }
}

pub fn tiny_a_model() -> Model {
    Model::open(tiny_a_dir().join("tiny_ds4.gguf")).expect("tiny_a binds")
}

pub fn backend(model: &Model, numerics: Numerics) -> CpuBackend {
    CpuBackend::new(
        model,
        CpuOptions {
            numerics,
            threads: 2,
        },
    )
}

pub fn tiny_a_tokens() -> Vec<u32> {
    let bytes = std::fs::read(tiny_a_dir().join("tokens.i32")).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect()
}

/// Reads a little-endian float32 C-order .npy file: (shape, values).
pub fn read_npy_f32(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Positions (rows of width `vocab`) whose argmax agrees.
pub fn argmax_agreement(a: &[f32], b: &[f32], vocab: usize) -> usize {
    a.chunks_exact(vocab)
        .zip(b.chunks_exact(vocab))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count()
}
