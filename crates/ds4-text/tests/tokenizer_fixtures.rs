//! Golden tests against HF `tokenizers` output (fixtures/tokenizer).

mod common;

use common::{ids, jsonl, tokenizer};
use ds4_text::tokenizer::pretok;
use ds4_text::EncodeMode;

#[test]
fn corpus_ids_all_modes() {
    let tok = tokenizer();
    let cases = jsonl("dev_corpus.jsonl");
    let mut failures = Vec::new();
    let mut checked = 0;
    for c in &cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let plain = c.get("ids_plain").map(ids).unwrap_or_else(|| want.clone());
        let ds4 = c
            .get("ids_ds4_specials")
            .map(ids)
            .unwrap_or_else(|| want.clone());
        for (mode, want) in [
            (EncodeMode::Hf, &want),
            (EncodeMode::Plain, &plain),
            (EncodeMode::Ds4, &ds4),
        ] {
            checked += 1;
            let got = tok.encode_with(text, mode);
            if &got != want {
                failures.push(format!(
                    "{mode:?} {:?} {text:?}\n got {got:?}\nwant {want:?}",
                    c["cat"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} encodings differ:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(cases.len(), 2078);
}

#[test]
fn corpus_fast_split_matches_reference_regexes() {
    for c in jsonl("dev_corpus.jsonl") {
        let text = c["text"].as_str().unwrap();
        assert_eq!(
            pretok::split_vec(text),
            pretok::reference_split(text),
            "{text:?}"
        );
    }
}

#[test]
fn corpus_roundtrip_bytes() {
    let tok = tokenizer();
    for c in jsonl("dev_corpus.jsonl") {
        let text = c["text"].as_str().unwrap();
        for mode in [EncodeMode::Hf, EncodeMode::Plain, EncodeMode::Ds4] {
            assert_eq!(tok.decode(&tok.encode_with(text, mode)), text.as_bytes());
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn decode_bytes_and_text() {
    let tok = tokenizer();
    let cases = jsonl("dev_decode.jsonl");
    assert_eq!(cases.len(), 228);
    for c in &cases {
        let id_list = ids(&c["ids"]);
        let bytes = hex(c["bytes_hex"].as_str().unwrap());
        assert_eq!(tok.decode(&id_list), bytes, "{:?}", c["ids"]);
        assert_eq!(tok.decode_lossy(&id_list), c["text"].as_str().unwrap());
        assert_eq!(
            std::str::from_utf8(&bytes).is_ok(),
            c["valid_utf8"].as_bool().unwrap()
        );
        // Incremental: concatenated output equals the lossy decode of the whole.
        let mut d = tok.detokenizer();
        let mut out = String::new();
        for &id in &id_list {
            out.push_str(&d.push(id));
        }
        out.push_str(&d.finish());
        assert_eq!(out, c["text"].as_str().unwrap());
    }
}

#[test]
fn spec_reference_ids_and_specials() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 129_280);
    let sp = tok.specials().unwrap();
    assert_eq!(
        (
            sp.bos,
            sp.eos,
            sp.user,
            sp.assistant,
            sp.think_start,
            sp.think_end,
            sp.dsml
        ),
        (0, 1, 128803, 128804, 128821, 128822, 128825)
    );
    assert_eq!(
        tok.encode("</｜DSML｜parameter>"),
        [1718, 128825, 41523, 32]
    );
    assert_eq!(
        tok.encode("<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜></think>"),
        [0, 128803, 3085, 344, 223, 20, 13, 20, 33, 128804, 128822]
    );
    assert_eq!(
        tok.encode("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n"),
        [
            271, 30, 128825, 72461, 4941, 12548, 1018, 30, 128825, 40148, 5406, 2329, 1281, 61159,
            3816
        ]
    );
    assert_eq!(tok.encode(" <think>"), [223, 128821]);
}
