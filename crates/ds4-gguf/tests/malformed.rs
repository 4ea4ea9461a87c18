//! Malformed files: every variant must give an error, never a panic.

mod common;

use ds4_gguf::GgufFile;
use proptest::prelude::*;

fn parse(bytes: Vec<u8>) -> Result<GgufFile, String> {
    GgufFile::from_bytes(bytes).map_err(|e| e.to_string())
}

#[test]
fn every_truncation_is_an_error() {
    let full = common::sample_file();
    for len in 0..full.len() {
        let r = parse(full[..len].to_vec());
        assert!(r.is_err(), "truncated to {len} bytes parsed");
    }
    assert!(parse(full).is_ok());
}

#[test]
fn specific_corruptions_name_the_problem() {
    let good = common::sample_file();
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(parse(bad).unwrap_err().contains("bad magic"));

    let mut bad = good.clone();
    bad[4] = 2;
    assert!(parse(bad).unwrap_err().contains("version 2"));

    // Huge tensor count.
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse(bad).unwrap_err().contains("tensor count"));

    // Huge metadata count.
    let mut bad = good.clone();
    bad[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(parse(bad).unwrap_err().contains("metadata entry count"));

    // Invalid UTF-8 in the first key (its bytes start at offset 32).
    let mut bad = good.clone();
    bad[32] = 0xff;
    let e = parse(bad).unwrap_err();
    assert!(e.contains("UTF-8") && e.contains("at byte 24"), "{e}");

    // Unknown tensor type: patch the type id of the last tensor info.
    let f = parse(good.clone()).unwrap();
    let pos = find_last(&good, b"d.i32") + 5 + 4 + 16;
    let mut bad = good.clone();
    bad[pos..pos + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = parse(bad).unwrap_err();
    assert!(
        e.contains("unknown tensor type id 99") && e.contains("d.i32"),
        "{e}"
    );

    // Offset past the end.
    let mut bad = good.clone();
    bad[pos + 4..pos + 12].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let e = parse(bad).unwrap_err();
    assert!(e.contains("d.i32") && e.contains("past the end"), "{e}");

    // Misaligned offset.
    let mut bad = good.clone();
    let off = f.tensor("d.i32").unwrap().offset + 4;
    bad[pos + 4..pos + 12].copy_from_slice(&off.to_le_bytes());
    assert!(parse(bad).unwrap_err().contains("alignment"));

    // Overlapping tensors: point d at c's offset.
    let mut bad = good.clone();
    let c_off = f.tensor("c.iq2").unwrap().offset;
    bad[pos + 4..pos + 12].copy_from_slice(&c_off.to_le_bytes());
    assert!(parse(bad).unwrap_err().contains("overlaps"));
}

fn find_last(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .rposition(|w| w == needle)
        .expect("needle present")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn bit_flips_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6)) {
        let mut bytes = common::sample_file();
        for (idx, bit) in flips {
            let i = idx.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        let _ = parse(bytes);
    }

    #[test]
    fn overwritten_words_never_panic(at in any::<prop::sample::Index>(), word in any::<u64>()) {
        let mut bytes = common::sample_file();
        let i = at.index(bytes.len().saturating_sub(8));
        bytes[i..i + 8].copy_from_slice(&word.to_le_bytes());
        let _ = parse(bytes);
    }

    #[test]
    fn truncation_plus_garbage_never_panics(cut in any::<prop::sample::Index>(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = common::sample_file();
        let n = cut.index(bytes.len());
        bytes.truncate(n);
        bytes.extend(tail);
        let _ = parse(bytes);
    }

    #[test]
    fn random_bytes_after_magic_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend(body);
        let _ = parse(bytes);
    }
}
