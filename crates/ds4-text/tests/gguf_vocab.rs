//! `Tokenizer::from_gguf_vocab` with the arrays a GGUF file carries, built from tokenizer.json.

mod common;

use common::{jsonl, read_data, tokenizer};
use ds4_text::{EncodeMode, TokenKind, Tokenizer, TokenizerError};

fn gguf_arrays() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let tok = tokenizer();
    let tokens: Vec<String> = (0..tok.vocab_size() as u32)
        .map(|id| tok.id_to_token(id).unwrap().to_owned())
        .collect();
    let types = (0..tok.vocab_size() as u32)
        .map(|id| match tok.token_kind(id).unwrap() {
            TokenKind::Normal => 1,
            TokenKind::Control => 3,
            TokenKind::UserDefined => 4,
        })
        .collect();
    let json: serde_json::Value = serde_json::from_str(&read_data("tokenizer.json")).unwrap();
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    (tokens, merges, types)
}

#[test]
fn gguf_vocab_matches_tokenizer_json() {
    let reference = tokenizer();
    let (tokens, merges, types) = gguf_arrays();
    let with_types =
        Tokenizer::from_gguf_vocab(tokens.clone(), merges.clone(), Some(types)).unwrap();
    let without = Tokenizer::from_gguf_vocab(tokens, merges, None).unwrap();
    for id in 0..reference.vocab_size() as u32 {
        assert_eq!(with_types.token_kind(id), reference.token_kind(id));
        assert_eq!(
            without.token_kind(id).unwrap().is_added(),
            reference.token_kind(id).unwrap().is_added(),
            "id {id} {:?}",
            reference.id_to_token(id)
        );
        assert_eq!(without.token_bytes(id), reference.token_bytes(id));
    }
    assert_eq!(with_types.specials(), reference.specials());
    assert_eq!(without.specials(), reference.specials());
    for c in jsonl("dev_corpus.jsonl").iter().step_by(3) {
        let text = c["text"].as_str().unwrap();
        for mode in [EncodeMode::Hf, EncodeMode::Plain, EncodeMode::Ds4] {
            let want = reference.encode_with(text, mode);
            assert_eq!(with_types.encode_with(text, mode), want);
            assert_eq!(without.encode_with(text, mode), want);
        }
    }
}

#[test]
fn missing_special_is_a_clear_error() {
    let tokens: Vec<String> = (0u8..=255)
        .map(|b| ds4_text::tokenizer::bytemap::BYTE_TO_CHAR[b as usize].to_string())
        .chain(["ab".to_owned(), "<｜begin▁of▁sentence｜>".to_owned()])
        .collect();
    let tok = Tokenizer::from_gguf_vocab(tokens, vec!["a b".to_owned()], None).unwrap();
    // Byte tokens are at their byte values here.
    assert_eq!(tok.encode("xab"), [b'x' as u32, 256]);
    assert_eq!(tok.encode("<｜begin▁of▁sentence｜>x"), [257, b'x' as u32]);
    assert_eq!(tok.token_kind(257), Some(TokenKind::Control));
    let err = tok.specials().unwrap_err();
    assert_eq!(err, TokenizerError::MissingToken("<｜end▁of▁sentence｜>"));
    assert!(err
        .to_string()
        .contains("required tokenizer token is missing"));
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
}
