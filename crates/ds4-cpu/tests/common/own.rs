//! The project's own model fixtures (tests/data/fixtures_<name>/, written by
//! scripts/gen_model_fixtures.py): a tiny GGUF, the token sequence and the
//! transformers logits at every position in exact numerics.

use std::path::PathBuf;

use ds4_model::Model;

use super::{read_npy_f32, repo_root};

/// Every committed fixture, in the generator's order.
pub const OWN_FIXTURES: [&str; 3] = ["hca128", "q4k", "indexer_long"];

pub struct OwnFixture {
    pub name: &'static str,
    pub model: Model,
    pub tokens: Vec<u32>,
    /// `[tokens.len() × vocab]`, row-major.
    pub logits: Vec<f32>,
    pub vocab: usize,
}

pub fn own_dir(name: &str) -> PathBuf {
    repo_root()
        .join("tests/data")
        .join(format!("fixtures_{name}"))
}

pub fn own_fixture(name: &'static str) -> OwnFixture {
    let dir = own_dir(name);
    let model = Model::open(dir.join("model.gguf"))
        .unwrap_or_else(|e| panic!("fixture {name}: model.gguf does not bind: {e}"));
    let bytes = std::fs::read(dir.join("tokens.i32")).unwrap();
    let tokens: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::try_from(i32::from_le_bytes(c.try_into().unwrap())).unwrap())
        .collect();
    let (shape, logits) = read_npy_f32(&dir.join("logits.npy"));
    assert_eq!(shape.len(), 2, "fixture {name}: logits.npy is [T, vocab]");
    assert_eq!(
        shape[0],
        tokens.len(),
        "fixture {name}: one logits row per token"
    );
    let vocab = shape[1];
    assert_eq!(vocab, model.config.vocab_size, "fixture {name}: vocab");
    OwnFixture {
        name,
        model,
        tokens,
        logits,
        vocab,
    }
}
