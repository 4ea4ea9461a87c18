#![allow(dead_code)]

use std::sync::OnceLock;

use ds4_text::Tokenizer;

/// Fixtures live in this crate's tests/data; the tokenizer itself is the
/// one copy the repository ships, in data/tokenizer/.
pub fn data_path(name: &str) -> String {
    if name.starts_with("tokenizer") {
        format!(
            "{}/../../data/tokenizer/{}",
            env!("CARGO_MANIFEST_DIR"),
            name
        )
    } else {
        format!("{}/tests/data/{}", env!("CARGO_MANIFEST_DIR"), name)
    }
}

pub fn read_data(name: &str) -> String {
    std::fs::read_to_string(data_path(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_tokenizer_json(&read_data("tokenizer.json")).expect("tokenizer loads")
    })
}

pub fn jsonl(name: &str) -> Vec<serde_json::Value> {
    read_data(name)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
