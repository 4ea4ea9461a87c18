//! The tokenizer stored in a model file's `tokenizer.ggml.*` metadata.

use ds4_gguf::{GgufFile, Value};
use ds4_text::Tokenizer;

use crate::error::{EngineError, Result};

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let items = file.get(key).and_then(Value::as_array).ok_or_else(|| {
        EngineError::Tokenizer(format!("metadata key '{key}' is missing or not an array"))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| EngineError::Tokenizer(format!("{key}[{i}] is not a string")))
        })
        .collect()
}

/// Builds the tokenizer from `tokenizer.ggml.tokens`, `.merges` and (when
/// present) `.token_type`, and checks that the chat specials exist.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types = match file.get("tokenizer.ggml.token_type") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .ok_or_else(|| {
                    EngineError::Tokenizer("tokenizer.ggml.token_type is not an array".into())
                })?
                .iter()
                .map(|t| t.as_i64().map(|x| x as i32))
                .collect::<Option<Vec<i32>>>()
                .ok_or_else(|| {
                    EngineError::Tokenizer("tokenizer.ggml.token_type holds a non-integer".into())
                })?,
        ),
    };
    let tok = Tokenizer::from_gguf_vocab(tokens, merges, types)
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    tok.specials()
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    Ok(tok)
}
