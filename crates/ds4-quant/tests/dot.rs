//! Dot kernels: every SIMD level against the scalar reference, and the
//! scalar reference against an f64 sum of the dequantised weights.
//!
//! Tolerances. Let `M = Σ_i (|a_i| + |b_i|)·|x_i|` where the dequantised
//! weight is `w_i = a_i − b_i`: for Q2_K/Q4_K `a` is the scale part
//! `d·sc·q` and `b` the min part `dmin·m` (the SIMD kernels rebuild `w` with
//! one FMA, so its rounding is relative to `|a| + |b|`, not to `|w|`); for
//! every other format `b = 0` and `M = Σ|w_i x_i|`. Any order of f32
//! accumulation of `n` products has an error of at most about `n·u·M`
//! (`u = 2^-24`), so two kernels differ by at most `2·n·u·M = n·eps·M`;
//! we allow `(n + 32)·eps·M` to cover the weight rebuild and the final
//! horizontal sums. The scalar reference uses exactly the dequantised weights,
//! so against the f64 sum it must be within `(n + 32)·eps·Σ|w_i x_i|`.

mod common;

use common::{random_row, random_x, rng, zero_field};
use ds4_quant::{available_isas, dequantize, BlockFormat, DotKernels, Isa};

fn lengths(format: BlockFormat) -> Vec<usize> {
    match format.block_elems() {
        1 => vec![
            0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 255, 256, 257, 1000, 4099,
        ],
        32 => vec![32, 64, 96, 160, 288, 1024, 4096, 4128],
        _ => vec![256, 512, 768, 1280, 4096, 4352],
    }
}

fn dequant(format: BlockFormat, row: &[u8], n: usize) -> Vec<f32> {
    let mut w = vec![0f32; n];
    dequantize(format, row, &mut w).unwrap();
    w
}

/// `M` of the module docs.
fn magnitude(format: BlockFormat, row: &[u8], x: &[f32]) -> f64 {
    let n = x.len();
    let (a, b) = match format {
        BlockFormat::Q2_K => (
            dequant(format, &zero_field(row, format, 82), n),
            dequant(format, &zero_field(row, format, 80), n),
        ),
        BlockFormat::Q4_K => (
            dequant(format, &zero_field(row, format, 2), n),
            dequant(format, &zero_field(row, format, 0), n),
        ),
        _ => (dequant(format, row, n), vec![0.0; n]),
    };
    (0..n)
        .map(|i| (a[i].abs() as f64 + b[i].abs() as f64) * x[i].abs() as f64)
        .sum()
}

#[test]
fn simd_kernels_match_scalar() {
    let scalar = DotKernels::new(Isa::Scalar).unwrap();
    let isas = available_isas();
    println!("available ISAs: {isas:?}");
    let mut rng = rng(1);
    for isa in isas.into_iter().filter(|&i| i != Isa::Scalar) {
        let k = DotKernels::new(isa).unwrap();
        assert_eq!(k.isa(), isa);
        for format in BlockFormat::WEIGHTS {
            let mut worst = 0f64;
            for n in lengths(format) {
                for _ in 0..4 {
                    let row = random_row(&mut rng, format, n);
                    let x = random_x(&mut rng, n);
                    let want = scalar.dot(format, &row, &x).unwrap();
                    let got = k.dot(format, &row, &x).unwrap();
                    let tol = (n as f64 + 32.0) * f32::EPSILON as f64 * magnitude(format, &row, &x);
                    let err = (got as f64 - want as f64).abs();
                    assert!(
                        err <= tol,
                        "{isa:?} {format} n={n}: got {got}, scalar {want}, |diff| {err:e} > tol {tol:e}"
                    );
                    if tol > 0.0 {
                        worst = worst.max(err / tol);
                    }
                }
            }
            println!("{isa:?} {format}: worst |diff|/tol = {worst:.3e}");
        }
    }
}

#[test]
fn scalar_matches_f64_sum_of_dequantised() {
    let scalar = DotKernels::new(Isa::Scalar).unwrap();
    let mut rng = rng(2);
    for format in BlockFormat::WEIGHTS {
        for n in lengths(format) {
            let row = random_row(&mut rng, format, n);
            let x = random_x(&mut rng, n);
            let w = dequant(format, &row, n);
            let exact: f64 = w.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
            let mag: f64 = w
                .iter()
                .zip(&x)
                .map(|(&w, &x)| (w as f64 * x as f64).abs())
                .sum();
            let got = scalar.dot(format, &row, &x).unwrap() as f64;
            let tol = (n as f64 + 32.0) * f32::EPSILON as f64 * mag;
            assert!(
                (got - exact).abs() <= tol,
                "{format} n={n}: {got} vs {exact}, tol {tol:e}"
            );
        }
    }
}

#[test]
fn matvec_equals_rowwise_dot_for_odd_row_counts() {
    let mut rng = rng(3);
    for isa in available_isas() {
        let k = DotKernels::new(isa).unwrap();
        for format in BlockFormat::WEIGHTS {
            let n = format.block_elems().max(32) * 8;
            for n_rows in [1usize, 3, 7, 13] {
                let rows: Vec<u8> = (0..n_rows)
                    .flat_map(|_| random_row(&mut rng, format, n))
                    .collect();
                let x = random_x(&mut rng, n);
                let mut y = vec![f32::NAN; n_rows];
                k.matvec(format, &rows, n_rows, &x, &mut y).unwrap();
                let rb = format.row_bytes(n).unwrap();
                for r in 0..n_rows {
                    let d = k.dot(format, &rows[r * rb..(r + 1) * rb], &x).unwrap();
                    assert_eq!(y[r].to_bits(), d.to_bits(), "{isa:?} {format} row {r}");
                }
            }
        }
    }
}

#[test]
fn default_dispatch_uses_the_best_level() {
    let best = *available_isas().last().unwrap();
    assert_eq!(DotKernels::best().isa(), best);
    let mut rng = rng(4);
    let row = random_row(&mut rng, BlockFormat::Q4_K, 512);
    let x = random_x(&mut rng, 512);
    let a = ds4_quant::dot(BlockFormat::Q4_K, &row, &x).unwrap();
    let b = DotKernels::new(best)
        .unwrap()
        .dot(BlockFormat::Q4_K, &row, &x)
        .unwrap();
    assert_eq!(a.to_bits(), b.to_bits());
}

#[test]
fn unavailable_isa_is_an_error() {
    for isa in Isa::ALL {
        assert_eq!(DotKernels::new(isa).is_ok(), isa.is_available());
    }
    assert!(!Isa::Neon.is_available() || !Isa::Avx2.is_available());
}

#[test]
fn q8_k_has_no_dot() {
    let x = vec![0f32; 256];
    let row = vec![0u8; 292];
    assert!(ds4_quant::dot(BlockFormat::Q8_K, &row, &x).is_err());
}
