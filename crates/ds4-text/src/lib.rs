//! Text layer of ds4: tokenizer, chat prompt rendering and DSML tool-call handling for
//! DeepSeek V4 Flash (spec: SERVING.md §1–§3).
//!
//! * [`tokenizer`] — byte-level BPE with the exact HF pre-tokenizer, three encoding modes
//!   ([`EncodeMode`]), segment-aware encoding against special-token injection, decoding and an
//!   incremental [`Detokenizer`].
//! * [`chat`] — the official `encode_messages` renderer ([`chat::render`] on a
//!   [`chat::ChatRequest`]), returning a [`chat::RenderedPrompt`] of template and untrusted
//!   segments.
//! * [`dsml`] — parsing of generated turns (official strict parser and the lenient serving
//!   parser), the streaming [`dsml::DsmlProjector`], and canonical DSML for JSON tool calls.
//! * [`pyjson`] — JSON with Python `json` semantics, which the official encoder's output depends
//!   on.
//!
//! ```no_run
//! use ds4_text::chat::{render, ChatRequest, Message};
//! use ds4_text::{EncodeMode, Tokenizer};
//!
//! let tok = Tokenizer::from_tokenizer_json(&std::fs::read_to_string("tokenizer.json")?)?;
//! let req = ChatRequest { messages: vec![Message::user("Hello")], ..ChatRequest::default() };
//! let prompt = render(&req)?;
//! let ids = prompt.tokenize(&tok, EncodeMode::Hf); // request text stays plain text
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod chat;
pub mod dsml;
pub mod pyjson;
pub mod tokenizer;

pub use tokenizer::{
    Detokenizer, EncodeMode, Segment, SpecialIds, TokenKind, Tokenizer, TokenizerError, Utf8Stream,
};
