//! Wrong sizes give errors, never panics; right sizes succeed.

use ds4_quant::{available_isas, dequantize, quantize, BlockFormat, DotKernels, QuantError};
use proptest::prelude::*;

fn format() -> impl Strategy<Value = BlockFormat> {
    prop::sample::select(BlockFormat::ALL.to_vec())
}

/// Element counts around block multiples, where off-by-one errors live.
fn n_elems() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..600,
        (0usize..5).prop_map(|k| 256 * k),
        (0usize..20).prop_map(|k| 32 * k)
    ]
}

/// Byte counts: the right one, or off by a little, or arbitrary.
fn n_bytes(format: BlockFormat, n: usize) -> impl Strategy<Value = usize> {
    let right = format.row_bytes(n).unwrap_or(n);
    prop_oneof![
        Just(right),
        (0usize..4).prop_map(move |d| right + d),
        (0usize..1500)
    ]
}

fn case() -> impl Strategy<Value = (BlockFormat, usize, usize)> {
    (format(), n_elems()).prop_flat_map(|(f, n)| n_bytes(f, n).prop_map(move |b| (f, n, b)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn dequantize_checks_lengths((format, n, bytes) in case()) {
        let src = vec![0u8; bytes];
        let mut dst = vec![0f32; n];
        let ok = format.row_bytes(n) == Some(bytes);
        prop_assert_eq!(dequantize(format, &src, &mut dst).is_ok(), ok);
    }

    #[test]
    fn quantize_checks_lengths((format, n, bytes) in case()) {
        let src = vec![0.5f32; n];
        let mut dst = vec![0u8; bytes];
        let ok = format.row_bytes(n) == Some(bytes) && format != BlockFormat::IQ2_XXS;
        prop_assert_eq!(quantize(format, &src, &mut dst).is_ok(), ok);
    }

    #[test]
    fn dot_checks_lengths((format, n, bytes) in case()) {
        let row = vec![0u8; bytes];
        let x = vec![1f32; n];
        let ok = format.row_bytes(n) == Some(bytes) && format != BlockFormat::Q8_K;
        for isa in available_isas() {
            let k = DotKernels::new(isa).unwrap();
            let r = k.dot(format, &row, &x);
            prop_assert_eq!(r.is_ok(), ok, "{:?} {:?}", isa, r);
        }
    }

    #[test]
    fn matvec_checks_lengths((format, n, bytes) in case(), n_rows in 0usize..4, y_len in 0usize..4) {
        let rows = vec![0u8; bytes * n_rows];
        let x = vec![1f32; n];
        let mut y = vec![0f32; y_len];
        // With zero rows any per-row size is consistent; otherwise it must match.
        let ok = format.row_bytes(n).map(|rb| rb * n_rows) == Some(rows.len())
            && format != BlockFormat::Q8_K
            && y_len == n_rows;
        for isa in available_isas() {
            let k = DotKernels::new(isa).unwrap();
            prop_assert_eq!(k.matvec(format, &rows, n_rows, &x, &mut y).is_ok(), ok);
        }
    }

    #[test]
    fn row_bytes_is_consistent(format in format(), n in 0usize..100_000) {
        match format.row_bytes(n) {
            Some(b) => prop_assert_eq!(b, n / format.block_elems() * format.block_bytes()),
            None => prop_assert!(n % format.block_elems() != 0),
        }
    }
}

#[test]
fn errors_say_what_is_wrong() {
    let e = dequantize(BlockFormat::Q4_K, &[0u8; 100], &mut [0f32; 256]).unwrap_err();
    assert_eq!(
        e,
        QuantError::ByteLength {
            format: BlockFormat::Q4_K,
            n_elems: 256,
            expected: 144,
            got: 100
        }
    );
    assert_eq!(
        e.to_string(),
        "Q4_K: 256 elements need 144 bytes, but the buffer has 100"
    );
    let e = dequantize(BlockFormat::Q8_0, &[0u8; 34], &mut [0f32; 31]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Q8_0: 31 elements is not a multiple of the block size 32"
    );
    assert!(row_bytes_overflow_is_none());
}

fn row_bytes_overflow_is_none() -> bool {
    BlockFormat::F32.row_bytes(usize::MAX).is_none()
}
