//! GGUF tokenizer metadata built from the real DeepSeek V4 `tokenizer.json`,
//! which the repository ships under `data/tokenizer/` and this crate embeds.

use std::collections::HashMap;
use std::sync::OnceLock;

use ds4_gguf::{Value, ValueType};
use serde::Deserialize;

/// The shipped `tokenizer.json` (Hugging Face format, DeepSeek V4).
pub static TOKENIZER_JSON: &str = include_str!("../../../../data/tokenizer/tokenizer.json");
/// The shipped `tokenizer_config.json` (BOS/EOS and add-BOS policy).
pub static TOKENIZER_CONFIG_JSON: &str =
    include_str!("../../../../data/tokenizer/tokenizer_config.json");

/// GGUF token types (llama.cpp's `llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;

#[derive(Deserialize)]
struct TokenizerFile {
    model: BpeModel,
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
struct BpeModel {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    merges: Vec<Merge>,
}

/// Older files write a merge as `"a b"`, newer ones as `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair([String; 2]),
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    special: bool,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    bos_token: TokenRef,
    eos_token: TokenRef,
    #[serde(default)]
    add_bos_token: bool,
    #[serde(default)]
    add_eos_token: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TokenRef {
    Plain(String),
    Added { content: String },
}

impl TokenRef {
    fn content(&self) -> &str {
        match self {
            TokenRef::Plain(s) | TokenRef::Added { content: s } => s,
        }
    }
}

/// The shipped tokenizer as GGUF wants it: one string and type per id.
#[derive(Debug)]
pub struct ShippedTokenizer {
    /// Indexed by token id; added tokens in literal form; id gaps hold `[PAD{id}]`.
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    /// `"left right"`, in rank order.
    pub merges: Vec<String>,
    pub bos_id: u32,
    pub eos_id: u32,
    pub add_bos: bool,
    pub add_eos: bool,
}

impl ShippedTokenizer {
    fn parse() -> Result<Self, String> {
        let file: TokenizerFile =
            serde_json::from_str(TOKENIZER_JSON).map_err(|e| format!("tokenizer.json: {e}"))?;
        let config: TokenizerConfig = serde_json::from_str(TOKENIZER_CONFIG_JSON)
            .map_err(|e| format!("tokenizer_config.json: {e}"))?;
        if file.model.kind != "BPE" {
            return Err(format!(
                "tokenizer.json: model type {} is not BPE",
                file.model.kind
            ));
        }
        let n = file
            .model
            .vocab
            .values()
            .chain(file.added_tokens.iter().map(|t| &t.id))
            .max()
            .map_or(0, |&m| m as usize + 1);
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut token_types = vec![TOKEN_UNUSED; n];
        for (s, &id) in &file.model.vocab {
            tokens[id as usize] = Some(s.clone());
            token_types[id as usize] = TOKEN_NORMAL;
        }
        // Added tokens win over a vocab entry with the same id (ids 0..2
        // appear in both, with the same text).
        for t in &file.added_tokens {
            tokens[t.id as usize] = Some(t.content.clone());
            token_types[t.id as usize] = if t.special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| t.unwrap_or_else(|| format!("[PAD{id}]")))
            .collect();
        let merges = file
            .model
            .merges
            .into_iter()
            .map(|m| match m {
                Merge::Joined(s) => s,
                Merge::Pair([a, b]) => format!("{a} {b}"),
            })
            .collect();
        let id_of = |r: &TokenRef| {
            let text = r.content();
            tokens
                .iter()
                .position(|t| t == text)
                .map(|i| i as u32)
                .ok_or_else(|| format!("tokenizer_config.json: token {text:?} is not in the vocab"))
        };
        Ok(Self {
            bos_id: id_of(&config.bos_token)?,
            eos_id: id_of(&config.eos_token)?,
            add_bos: config.add_bos_token,
            add_eos: config.add_eos_token,
            tokens,
            token_types,
            merges,
        })
    }

    /// The id of a token by its text (linear search; for tests and reports).
    pub fn id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }
}

/// The shipped tokenizer, parsed once per process.
pub fn shipped_tokenizer() -> Result<&'static ShippedTokenizer, String> {
    static PARSED: OnceLock<Result<ShippedTokenizer, String>> = OnceLock::new();
    PARSED
        .get_or_init(ShippedTokenizer::parse)
        .as_ref()
        .map_err(Clone::clone)
}

/// `tokenizer.ggml.*` metadata for a model with `vocab_size` rows: the token
/// list is padded with `[PAD{id}]` placeholders (type unused) up to
/// `vocab_size`; a tokenizer larger than the vocabulary is an error.
pub fn tokenizer_metadata(vocab_size: usize) -> Result<Vec<(String, Value)>, String> {
    let tok = shipped_tokenizer()?;
    if tok.tokens.len() > vocab_size {
        return Err(format!(
            "the shipped tokenizer has {} tokens, more than the vocab_size {vocab_size}",
            tok.tokens.len()
        ));
    }
    let mut tokens: Vec<Value> = tok.tokens.iter().cloned().map(Value::String).collect();
    let mut types: Vec<Value> = tok.token_types.iter().map(|&t| Value::I32(t)).collect();
    for id in tokens.len()..vocab_size {
        tokens.push(Value::String(format!("[PAD{id}]")));
        types.push(Value::I32(TOKEN_UNUSED));
    }
    let merges = tok.merges.iter().cloned().map(Value::String).collect();
    let s = |v: &str| Value::String(v.to_string());
    Ok(vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("joyai-llm")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(ValueType::String, tokens),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(ValueType::String, merges),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(tok.bos_id)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(tok.eos_id)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(tok.add_bos),
        ),
        (
            "tokenizer.ggml.add_eos_token".into(),
            Value::Bool(tok.add_eos),
        ),
    ])
}
