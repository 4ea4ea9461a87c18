//! Byte-level BPE tokenizer for DeepSeek V4 (SERVING.md §1).
//!
//! # Encoding modes
//!
//! | [`EncodeMode`] | added tokens recognised in the text | use |
//! |---|---|---|
//! | [`EncodeMode::Hf`] | all of them, leftmost-longest (HF `encode(add_special_tokens=False)`) | fixture parity, diagnostics |
//! | [`EncodeMode::Plain`] | none: pre-tokenizer + BPE only (ds4 `ds4_tokenize_text`) | untrusted text |
//! | [`EncodeMode::Ds4`] | only the seven ds4 literals, in ds4's priority order (§1.6) | ds4 parity for rendered prompts |
//!
//! # Anti-injection rule
//!
//! Text that comes from a user, a tool result or any other request field must never turn into a
//! control token: a user who types `<｜end▁of▁sentence｜>` or `｜DSML｜` gets those characters, not
//! the tokens. The chat renderer therefore returns its output as segments
//! ([`crate::chat::RenderedPrompt`]): *template* segments are the literals the encoder inserts
//! (BOS, role markers, `<think>`, DSML tags, ...), *untrusted* segments are request data.
//! [`Tokenizer::encode_segments`] recognises added tokens only inside template segments (with the
//! chosen mode) and encodes everything else as plain text. Plain text between two recognised
//! tokens is pre-tokenized as one run even when it spans several segments, so the result is
//! identical to `encode_with(whole_text, mode)` whenever the untrusted text contains no
//! added-token literal. The fixtures' `token_ids` are HF encodes of the whole rendered string;
//! they differ from the segment-aware encoding exactly when request text contains such literals.
//!
//! For serving, `prompt.tokenize(&tok, EncodeMode::Hf)` gives the official model input for the
//! template (task tokens and `<｜latest_reminder｜>` become tokens, as in training);
//! `EncodeMode::Ds4` reproduces ds4's rendered-chat tokenization of the template instead.
//!
//! # Loading from GGUF
//!
//! [`Tokenizer::from_gguf_vocab`] takes `tokenizer.ggml.tokens`, `tokenizer.ggml.merges` and,
//! optionally, `tokenizer.ggml.token_type` (llama.cpp convention: 1 normal, 3 control = added
//! special, 4 user-defined = added non-special; added tokens in literal form). Without token
//! types a token is treated as *added* when
//!
//! * its string is not representable in the byte-level alphabet (it contains a code point outside
//!   the GPT-2 byte table, e.g. every `<｜…｜>` token), or
//! * it is longer than one character and is not the result of any merge (byte-level BPE can only
//!   ever produce single-byte symbols and merge results, so such a token is unreachable as a
//!   normal token), or
//! * it is one of the known DeepSeek specials (`<think>`, `</think>`, `<dsml:`, `</dsml:`,
//!   `<|EOT|>`, the ds4 literals).
//!
//! For the DeepSeek V4 vocabulary this yields exactly ids 0–2 and 128 000–129 279, the same set as
//! `tokenizer.json`.

mod bpe;
pub mod bytemap;
mod classes;
pub mod detok;
pub mod pretok;

use std::sync::Mutex;

use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::FxHashMap;
use serde::Deserialize;

use bpe::{Bpe, Scratch, WordCache, CACHE_MAX_PIECE};
pub use detok::{Detokenizer, Utf8Stream};

pub const BOS: &str = "<｜begin▁of▁sentence｜>";
pub const EOS: &str = "<｜end▁of▁sentence｜>";
pub const USER: &str = "<｜User｜>";
pub const ASSISTANT: &str = "<｜Assistant｜>";
pub const THINK_START: &str = "<think>";
pub const THINK_END: &str = "</think>";
pub const DSML: &str = "｜DSML｜";

/// The seven literals ds4 recognises in rendered prompts, in its scan priority order.
pub const DS4_SPECIALS: [&str; 7] = [BOS, EOS, USER, ASSISTANT, THINK_START, THINK_END, DSML];

/// Specials that are plain ASCII (hence representable in the byte alphabet) but still added
/// tokens; used by the no-token-type rule of [`Tokenizer::from_gguf_vocab`].
const KNOWN_ASCII_SPECIALS: [&str; 5] = ["<think>", "</think>", "<dsml:", "</dsml:", "<|EOT|>"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer.json: {0}")]
    Json(String),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("required tokenizer token is missing: {0}")]
    MissingToken(&'static str),
    #[error("invalid vocabulary: {0}")]
    Invalid(String),
}

/// How a token was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A byte-level BPE token.
    Normal,
    /// An added token with `special = true` (GGUF token type 3).
    Control,
    /// An added token with `special = false` (GGUF token type 4).
    UserDefined,
}

impl TokenKind {
    pub fn is_added(self) -> bool {
        self != TokenKind::Normal
    }
}

/// Which added tokens are recognised in raw text; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeMode {
    Hf,
    Plain,
    Ds4,
}

/// Ids of the tokens the serving layer needs, resolved by string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub user: u32,
    pub assistant: u32,
    pub think_start: u32,
    pub think_end: u32,
    pub dsml: u32,
}

/// One piece of a rendered prompt; see the anti-injection rule in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Template(&'a str),
    Untrusted(&'a str),
}

struct Matcher {
    ac: AhoCorasick,
    ids: Vec<u32>,
}

impl Matcher {
    fn new(patterns: Vec<(&str, u32)>, kind: MatchKind) -> Option<Matcher> {
        if patterns.is_empty() {
            return None;
        }
        let ac = AhoCorasick::builder()
            .match_kind(kind)
            .build(patterns.iter().map(|(s, _)| s))
            .expect("added-token automaton builds");
        Some(Matcher {
            ac,
            ids: patterns.iter().map(|(_, id)| *id).collect(),
        })
    }
}

pub struct Tokenizer {
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    /// Decoded bytes of every id: `bytes[offsets[id]..offsets[id + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    lookup: FxHashMap<String, u32>,
    bpe: Bpe,
    added: Option<Matcher>,
    ds4: Option<Matcher>,
    specials: Result<SpecialIds, TokenizerError>,
    cache: Mutex<WordCache>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("specials", &self.specials)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenizerJson {
    added_tokens: Vec<AddedTokenJson>,
    model: ModelJson,
    #[serde(default)]
    pre_tokenizer: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u32,
    content: String,
    special: bool,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: FxHashMap<String, u32>,
    merges: Vec<MergeJson>,
    #[serde(default)]
    byte_fallback: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MergeJson {
    Joined(String),
    Pair(String, String),
}

fn split_merge(m: &str) -> Result<(String, String), TokenizerError> {
    let (a, b) = m
        .split_once(' ')
        .ok_or_else(|| TokenizerError::Invalid(format!("merge without space: {m:?}")))?;
    if b.contains(' ') {
        return Err(TokenizerError::Invalid(format!(
            "merge with extra space: {m:?}"
        )));
    }
    Ok((a.to_owned(), b.to_owned()))
}

fn check_pre_tokenizer(pre: &serde_json::Value) -> Result<(), TokenizerError> {
    let found: Vec<&str> = pre
        .get("pretokenizers")
        .and_then(|v| v.as_array())
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| s.get("pattern")?.get("Regex")?.as_str())
                .collect()
        })
        .unwrap_or_default();
    if found != pretok::PATTERNS {
        return Err(TokenizerError::Unsupported(format!(
            "pre-tokenizer regexes {found:?} differ from the DeepSeek V4 set"
        )));
    }
    Ok(())
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json` (the DeepSeek V4 one or a BPE tokenizer with the same
    /// pre-tokenizer).
    pub fn from_tokenizer_json(json: &str) -> Result<Tokenizer, TokenizerError> {
        let tj: TokenizerJson =
            serde_json::from_str(json).map_err(|e| TokenizerError::Json(e.to_string()))?;
        if let Some(kind) = &tj.model.kind {
            if kind != "BPE" {
                return Err(TokenizerError::Unsupported(format!("model type {kind}")));
            }
        }
        if tj.model.byte_fallback {
            return Err(TokenizerError::Unsupported("byte_fallback".into()));
        }
        if let Some(pre) = &tj.pre_tokenizer {
            check_pre_tokenizer(pre)?;
        }
        let max_id = tj
            .model
            .vocab
            .values()
            .chain(tj.added_tokens.iter().map(|a| &a.id))
            .copied()
            .max()
            .unwrap_or(0);
        let n = max_id as usize + 1;
        let mut tokens = vec![String::new(); n];
        let mut kinds = vec![TokenKind::Normal; n];
        for (s, id) in tj.model.vocab {
            tokens[id as usize] = s;
        }
        for a in tj.added_tokens {
            tokens[a.id as usize] = a.content;
            kinds[a.id as usize] = if a.special {
                TokenKind::Control
            } else {
                TokenKind::UserDefined
            };
        }
        let merges = tj
            .model
            .merges
            .into_iter()
            .map(|m| match m {
                MergeJson::Joined(s) => split_merge(&s),
                MergeJson::Pair(a, b) => Ok((a, b)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::build(tokens, kinds, merges)
    }

    /// Builds the tokenizer from GGUF metadata arrays; see the module docs for the rule used
    /// when `token_types` is absent.
    pub fn from_gguf_vocab(
        tokens: Vec<String>,
        merges: Vec<String>,
        token_types: Option<Vec<i32>>,
    ) -> Result<Tokenizer, TokenizerError> {
        let merges = merges
            .iter()
            .map(|m| split_merge(m))
            .collect::<Result<Vec<_>, _>>()?;
        let kinds = match token_types {
            Some(types) => {
                if types.len() != tokens.len() {
                    return Err(TokenizerError::Invalid(format!(
                        "{} token types for {} tokens",
                        types.len(),
                        tokens.len()
                    )));
                }
                types
                    .iter()
                    .map(|t| match t {
                        3 => TokenKind::Control,
                        4 => TokenKind::UserDefined,
                        _ => TokenKind::Normal,
                    })
                    .collect()
            }
            None => infer_kinds(&tokens, &merges),
        };
        Self::build(tokens, kinds, merges)
    }

    fn build(
        tokens: Vec<String>,
        kinds: Vec<TokenKind>,
        merges: Vec<(String, String)>,
    ) -> Result<Tokenizer, TokenizerError> {
        let n = tokens.len();
        if n >= u32::MAX as usize / 2 {
            return Err(TokenizerError::Invalid("vocabulary too large".into()));
        }
        let mut normal: FxHashMap<&str, u32> = FxHashMap::default();
        let mut lookup: FxHashMap<String, u32> = FxHashMap::default();
        for (id, (s, k)) in tokens.iter().zip(&kinds).enumerate() {
            if s.is_empty() {
                continue;
            }
            if *k == TokenKind::Normal {
                normal.entry(s).or_insert(id as u32);
            }
            lookup.entry(s.clone()).or_insert(id as u32);
        }
        // Added tokens win string lookups (they are what a literal in text means).
        for (id, (s, k)) in tokens.iter().zip(&kinds).enumerate() {
            if k.is_added() && !s.is_empty() {
                lookup.insert(s.clone(), id as u32);
            }
        }

        let mut byte_ids = [u32::MAX; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let s = bytemap::BYTE_TO_CHAR[b].to_string();
            if let Some(&id) = normal.get(s.as_str()) {
                *slot = id;
            }
        }
        let mut bpe = Bpe::new(byte_ids, n as u32);
        let mut synthetic: FxHashMap<String, u32> = FxHashMap::default();
        for (rank, (a, b)) in merges.iter().enumerate() {
            let resolve = |s: &str| normal.get(s).copied().or_else(|| synthetic.get(s).copied());
            let (Some(l), Some(r)) = (resolve(a), resolve(b)) else {
                continue;
            };
            let joined = format!("{a}{b}");
            let merged = match normal.get(joined.as_str()) {
                Some(&id) => id,
                None => match synthetic.get(&joined) {
                    Some(&id) => id,
                    None => {
                        let mut parts = Vec::new();
                        bpe.expand_into(l, &mut parts);
                        bpe.expand_into(r, &mut parts);
                        let id = bpe.new_synthetic(parts);
                        synthetic.insert(joined, id);
                        id
                    }
                },
            };
            bpe.add_merge(l, r, rank as u32, merged);
        }
        bpe.finalize();

        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        for (s, k) in tokens.iter().zip(&kinds) {
            match (k, bytemap::unmap_str(s)) {
                (TokenKind::Normal, Some(b)) => bytes.extend_from_slice(&b),
                // Added tokens, and (as HF's ByteLevel decoder does) any token with a code point
                // outside the byte table, decode to their literal UTF-8.
                _ => bytes.extend_from_slice(s.as_bytes()),
            }
            offsets.push(
                u32::try_from(bytes.len())
                    .map_err(|_| TokenizerError::Invalid("vocab bytes exceed 4 GiB".into()))?,
            );
        }

        let added = Matcher::new(
            tokens
                .iter()
                .zip(&kinds)
                .filter(|(s, k)| k.is_added() && !s.is_empty())
                .map(|(s, _)| (s.as_str(), lookup[s.as_str()]))
                .collect(),
            MatchKind::LeftmostLongest,
        );
        let ds4 = Matcher::new(
            DS4_SPECIALS
                .iter()
                .filter_map(|s| lookup.get(*s).map(|&id| (*s, id)))
                .collect(),
            MatchKind::LeftmostFirst,
        );
        let get = |s: &'static str| {
            lookup
                .get(s)
                .copied()
                .ok_or(TokenizerError::MissingToken(s))
        };
        let specials = (|| {
            Ok(SpecialIds {
                bos: get(BOS)?,
                eos: get(EOS)?,
                user: get(USER)?,
                assistant: get(ASSISTANT)?,
                think_start: get(THINK_START)?,
                think_end: get(THINK_END)?,
                dsml: get(DSML)?,
            })
        })();
        drop(normal);
        Ok(Tokenizer {
            tokens,
            kinds,
            bytes,
            offsets,
            lookup,
            bpe,
            added,
            ds4,
            specials,
            cache: Mutex::new(WordCache::new()),
        })
    }

    /// Size of the id space (129 280 for DeepSeek V4).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The ids of BOS, EOS, the role markers, the think tags and `｜DSML｜`, or which one is
    /// missing from the vocabulary.
    pub fn specials(&self) -> Result<SpecialIds, TokenizerError> {
        self.specials.clone()
    }

    /// Id of a token given in vocab form (added tokens in literal form).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.lookup.get(token).copied()
    }

    /// Vocab form of a token (byte-level mapped for normal tokens, literal for added ones).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The bytes a token decodes to (§1.8). Empty for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.offsets.len() {
            return &[];
        }
        &self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// HF semantics: every added token is recognised (leftmost-longest).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, EncodeMode::Hf)
    }

    /// Pre-tokenizer + BPE only; no added token is ever produced.
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, EncodeMode::Plain)
    }

    pub fn encode_with(&self, text: &str, mode: EncodeMode) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, mode, &mut out);
        out
    }

    /// Appends the encoding of `text` to `out`.
    pub fn encode_into(&self, text: &str, mode: EncodeMode, out: &mut Vec<u32>) {
        let mut ctx = self.ctx();
        match self.matcher(mode) {
            None => self.plain_into(text, out, &mut ctx),
            Some(m) => {
                let mut last = 0;
                for hit in m.ac.find_iter(text) {
                    self.plain_into(&text[last..hit.start()], out, &mut ctx);
                    out.push(m.ids[hit.pattern().as_usize()]);
                    last = hit.end();
                }
                self.plain_into(&text[last..], out, &mut ctx);
            }
        }
    }

    /// Segment-aware encoding (anti-injection rule, see the module docs): added tokens are
    /// recognised with `template_mode` inside template segments only.
    pub fn encode_segments<'a>(
        &self,
        segments: impl IntoIterator<Item = Segment<'a>>,
        template_mode: EncodeMode,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        let mut ctx = self.ctx();
        let matcher = self.matcher(template_mode);
        let mut pending = String::new();
        for seg in segments {
            match (seg, matcher) {
                (Segment::Untrusted(s), _) | (Segment::Template(s), None) => pending.push_str(s),
                (Segment::Template(s), Some(m)) => {
                    let mut last = 0;
                    for hit in m.ac.find_iter(s) {
                        pending.push_str(&s[last..hit.start()]);
                        self.plain_into(&pending, &mut out, &mut ctx);
                        pending.clear();
                        out.push(m.ids[hit.pattern().as_usize()]);
                        last = hit.end();
                    }
                    pending.push_str(&s[last..]);
                }
            }
        }
        self.plain_into(&pending, &mut out, &mut ctx);
        out
    }

    /// Concatenated bytes of the tokens; unknown ids contribute nothing.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id));
        }
        out
    }

    /// [`Tokenizer::decode`] with invalid UTF-8 replaced like `String::from_utf8_lossy` (which
    /// is also what HF `decode` returns for these tokens).
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode(ids)).into_owned()
    }

    /// An incremental detokenizer that never emits a partial UTF-8 character.
    pub fn detokenizer(&self) -> Detokenizer<'_> {
        Detokenizer::new(self)
    }

    fn matcher(&self, mode: EncodeMode) -> Option<&Matcher> {
        match mode {
            EncodeMode::Hf => self.added.as_ref(),
            EncodeMode::Ds4 => self.ds4.as_ref(),
            EncodeMode::Plain => None,
        }
    }

    fn ctx(&self) -> EncodeCtx<'_> {
        EncodeCtx {
            // One lock per call, not per piece; a contended cache is simply skipped.
            cache: self.cache.try_lock().ok(),
            scratch: Scratch::default(),
        }
    }

    fn plain_into(&self, text: &str, out: &mut Vec<u32>, ctx: &mut EncodeCtx<'_>) {
        if text.is_empty() {
            return;
        }
        let bpe = &self.bpe;
        let EncodeCtx { cache, scratch } = ctx;
        pretok::split(text, &mut |piece| {
            let pb = piece.as_bytes();
            if pb.len() == 1 {
                let id = bpe.byte_ids[pb[0] as usize];
                if id != u32::MAX {
                    out.push(id);
                }
                return;
            }
            let cacheable = pb.len() <= CACHE_MAX_PIECE;
            if cacheable {
                if let Some(c) = cache.as_deref() {
                    if let Some(ids) = c.get(pb) {
                        out.extend_from_slice(ids);
                        return;
                    }
                }
            }
            let start = out.len();
            bpe.encode_piece(pb, out, scratch);
            if cacheable {
                if let Some(c) = cache.as_deref_mut() {
                    c.insert(pb, &out[start..]);
                }
            }
        });
    }
}

struct EncodeCtx<'a> {
    cache: Option<std::sync::MutexGuard<'a, WordCache>>,
    scratch: Scratch,
}

fn infer_kinds(tokens: &[String], merges: &[(String, String)]) -> Vec<TokenKind> {
    let produced: rustc_hash::FxHashSet<String> =
        merges.iter().map(|(a, b)| format!("{a}{b}")).collect();
    tokens
        .iter()
        .map(|s| {
            let representable = s.chars().all(|c| bytemap::char_to_byte(c).is_some());
            let single = s.chars().count() == 1;
            let known =
                KNOWN_ASCII_SPECIALS.contains(&s.as_str()) || DS4_SPECIALS.contains(&s.as_str());
            if s.is_empty() {
                TokenKind::Normal
            } else if !representable || known || (!single && !produced.contains(s)) {
                // Without the HF `special` flag, only the sentence markers are known to be
                // control tokens.
                if s == BOS || s == EOS {
                    TokenKind::Control
                } else {
                    TokenKind::UserDefined
                }
            } else {
                TokenKind::Normal
            }
        })
        .collect()
}
