//! Tokenizer invariants on arbitrary input: the hand-written pre-tokenizer equals the
//! fancy-regex reference, every encode mode round-trips through decode, segment-aware encoding
//! round-trips, and incremental detokenization equals the lossy decode.
#![no_main]

use std::sync::OnceLock;

use ds4_text::tokenizer::pretok;
use ds4_text::{EncodeMode, Segment, Tokenizer};
use libfuzzer_sys::fuzz_target;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/tokenizer/tokenizer.json"
        );
        Tokenizer::from_tokenizer_json(&std::fs::read_to_string(path).expect("tokenizer.json"))
            .expect("tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tok();
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;

    assert_eq!(pretok::split_vec(text), pretok::reference_split(text));
    for mode in [EncodeMode::Hf, EncodeMode::Plain, EncodeMode::Ds4] {
        assert_eq!(tok.decode(&tok.encode_with(text, mode)), text.as_bytes());
    }

    // Alternate template / untrusted segments at char boundaries chosen by the input.
    let cut = data.first().map_or(0, |&b| b as usize);
    let mut segs = Vec::new();
    let mut last = 0;
    for (n, (i, _)) in text.char_indices().enumerate() {
        if i > last && (n + cut) % 7 == 0 {
            segs.push(&text[last..i]);
            last = i;
        }
    }
    segs.push(&text[last..]);
    let segments: Vec<Segment<'_>> = segs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i % 2 == 0 {
                Segment::Template(s)
            } else {
                Segment::Untrusted(s)
            }
        })
        .collect();
    for mode in [EncodeMode::Hf, EncodeMode::Ds4] {
        let ids = tok.encode_segments(segments.iter().copied(), mode);
        assert_eq!(tok.decode(&ids), text.as_bytes());
    }

    // Arbitrary ids (two input bytes each) through the incremental detokenizer.
    let ids: Vec<u32> = data
        .chunks_exact(3)
        .map(|c| (u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2])) % 129_300)
        .collect();
    let mut d = tok.detokenizer();
    let mut out = String::new();
    for &id in &ids {
        out.push_str(&d.push(id));
    }
    out.push_str(&d.finish());
    assert_eq!(out, tok.decode_lossy(&ids));
});
