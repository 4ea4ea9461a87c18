//! Text layer of ds4: tokenizer, chat prompt rendering and DSML tool-call handling for
//! DeepSeek V4 Flash (spec: SERVING.md §1–§3).

pub mod chat;
pub mod dsml;
pub mod pyjson;
pub mod tokenizer;

pub use tokenizer::{
    Detokenizer, EncodeMode, Segment, SpecialIds, TokenKind, Tokenizer, TokenizerError, Utf8Stream,
};
