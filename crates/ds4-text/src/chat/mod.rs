//! Chat prompt rendering with the official DeepSeek V4 encoding (`encoding_dsv4.py`,
//! SERVING.md §2.1, §2.3, §2.4).
//!
//! [`render`] takes a [`ChatRequest`] and returns a [`RenderedPrompt`]: the exact string the
//! official `encode_messages` returns, split into template and untrusted segments (see the
//! anti-injection rule in [`crate::tokenizer`]).
//!
//! # Decisions where ds4 differs from the official encoder (SERVING.md §2.5)
//!
//! The renderer follows the official encoder unless stated here. Numbers refer to §2.5.
//!
//! 1–3. Tools block text, placement and schema bytes: **official** (`json.dumps` with `", "`
//!    separators after the system or developer content). Stable per server, which is all prefix
//!    caching needs.
//! 4–5. `developer` role and mid-conversation `system` messages: **official** (rendered in place,
//!    developer as a `<｜User｜>` turn, dropped before the last user turn when dropping thinking).
//! 6. `latest_reminder`, `task`, `response_format`, `wo_eos`: **official** (supported).
//! 7. Multiple tool results: **official** (one user turn, blocks joined by `"\n\n"`, sorted by
//!    call order, following user text merged into the same turn).
//! 8. Tool result escaping: **official** (none). `</tool_result>` is not a token, and the text
//!    is untrusted, so no control token can be injected either way.
//! 9. Tool result list content: **official** (`"\n\n"`-joined text parts, `[Unsupported <type>]`).
//! 10–11. Canonical DSML values and zero-argument invokes: **official** (`json.dumps` values,
//!    blank line inside an empty invoke).
//! 12. Tool-call replay: **ds4** when asked for. Agent clients send their tool calls back as JSON;
//!    re-rendering them canonically would not reproduce the sampled bytes and would break prefix
//!    reuse, so an assistant [`Message`] may carry `raw_dsml` (the exact block the model
//!    generated, remembered by the server); it is rendered verbatim in place of the canonical
//!    block. Without it, the canonical official form is used.
//! 13. "Keep reasoning" trigger: **official** (`tools` on any message that keeps them).
//!
//! Other choices:
//!
//! * `reasoning_effort = max` below a minimum context: the ds4 rule is available as an option
//!   ([`RenderOptions::context_window`]); when set below [`MAX_EFFORT_MIN_CONTEXT`], `max` renders
//!   as `high`. Unset (the default), the official behaviour applies.
//! * A `user`, `system`, `developer`, `assistant` or `latest_reminder` content given as a list of
//!   parts is flattened like a tool result's list content. (The official encoder raises
//!   `TypeError` or prints the Python list; OpenAI clients do send part lists.)
//! * A `user` message with `content: null` renders as empty text (the official encoder raises
//!   `TypeError` while joining the turn's blocks).
//! * Tool-call `arguments` given as a JSON value instead of a string are taken as its compact JSON
//!   text (the official encoder would render a single `arguments` parameter holding it).
//! * `tools` attached to a `user` message have no effect at all: the official `merge_tool_messages`
//!   rebuilds user messages without that key. (The fixture README says such tools still force
//!   `drop_thinking=False`; the code does not, and no fixture tells the two apart.)
//! * Template text (role markers, think tags, DSML markup, the tools-block prose, task tokens, the
//!   max-effort prefix) is *template*; every request string (contents, reasoning, tool names,
//!   argument keys and values, tool schemas, `response_format`, tool results) is *untrusted*.
//!   `raw_dsml` is template: it is model output remembered by the server, and its `｜DSML｜`
//!   markers must stay tokens for the replay to reproduce the sampled tokens.
//! * Python prints `None` for a missing tool-result or `latest_reminder` content; that is kept.

mod convert;
mod render;

use crate::pyjson::PyValue;
use crate::tokenizer::{EncodeMode, Segment, Tokenizer};

pub(crate) use render::render_invoke;
pub use render::{render, LATEST_REMINDER, MAX_EFFORT_PREFIX, TOOLS_BLOCK_HEAD, TOOLS_BLOCK_TAIL};

/// ds4's minimum context for `reasoning_effort = max` (384 Ki tokens, SERVING.md §2.3).
pub const MAX_EFFORT_MIN_CONTEXT: usize = 393_216;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Developer,
    Assistant,
    Tool,
    LatestReminder,
    /// Any other role; rendering it raises `NotImplementedError` (unless it is dropped first).
    Other(String),
}

impl Role {
    pub fn parse(s: &str) -> Role {
        match s {
            "system" => Role::System,
            "user" => Role::User,
            "developer" => Role::Developer,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "latest_reminder" => Role::LatestReminder,
            other => Role::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Developer => "developer",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::LatestReminder => "latest_reminder",
            Role::Other(s) => s,
        }
    }
}

/// One part of a list-valued content (`{"type": "text", "text": ...}`, `{"type": "image_url"}`,
/// ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentPart {
    /// `None` when the part has no `type`.
    pub kind: Option<String>,
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The official flattening of list content: text parts as is, others as
    /// `[Unsupported <type>]`, joined by a blank line.
    pub fn flatten(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text(s) => std::borrow::Cow::Borrowed(s),
            Content::Parts(parts) => {
                let texts: Vec<String> = parts
                    .iter()
                    .map(|p| match p.kind.as_deref() {
                        Some("text") => p.text.clone().unwrap_or_default(),
                        Some(k) => format!("[Unsupported {k}]"),
                        None => "[Unsupported None]".to_owned(),
                    })
                    .collect();
                std::borrow::Cow::Owned(texts.join("\n\n"))
            }
        }
    }
}

/// An assistant tool call in OpenAI form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: Option<String>,
    pub name: String,
    /// JSON text of the arguments object, as the client sent it.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Option<Content>,
    /// Assistant reasoning.
    pub reasoning_content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// For `tool` messages.
    pub tool_call_id: Option<String>,
    /// OpenAI tool objects (`{"type": "function", "function": {...}}`); rendered on `system` and
    /// `developer` messages.
    pub tools: Option<Vec<PyValue>>,
    pub response_format: Option<PyValue>,
    /// Quick-instruction task (`action`, `query`, `authority`, `domain`, `title`, `read_url`).
    pub task: Option<String>,
    /// Assistant rendered without the final EOS (prefill).
    pub wo_eos: bool,
    /// Exact DSML block to replay for this assistant's tool calls (decision 12).
    pub raw_dsml: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: Option<&str>) -> Message {
        Message {
            role,
            content: content.map(|c| Content::Text(c.to_owned())),
            reasoning_content: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            tools: None,
            response_format: None,
            task: None,
            wo_eos: false,
            raw_dsml: None,
        }
    }

    pub fn system(content: &str) -> Message {
        Message::new(Role::System, Some(content))
    }

    pub fn user(content: &str) -> Message {
        Message::new(Role::User, Some(content))
    }

    pub fn assistant(content: &str) -> Message {
        Message::new(Role::Assistant, Some(content))
    }

    pub fn tool(tool_call_id: &str, content: &str) -> Message {
        let mut m = Message::new(Role::Tool, Some(content));
        m.tool_call_id = Some(tool_call_id.to_owned());
        m
    }

    /// Builds a message from an OpenAI-style JSON object (the fixture format).
    pub fn from_json(v: &PyValue) -> Result<Message, RenderError> {
        convert::message_from_json(v)
    }

    /// Builds messages from a JSON array of message objects.
    pub fn list_from_json(v: &PyValue) -> Result<Vec<Message>, RenderError> {
        match v {
            PyValue::Null => Ok(Vec::new()),
            PyValue::Array(items) => items.iter().map(Message::from_json).collect(),
            _ => Err(RenderError::Type("messages must be a list".into())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingMode {
    Chat,
    Thinking,
}

impl ThinkingMode {
    pub fn parse(s: &str) -> Result<ThinkingMode, RenderError> {
        match s {
            "chat" => Ok(ThinkingMode::Chat),
            "thinking" => Ok(ThinkingMode::Thinking),
            other => Err(RenderError::Assertion(format!(
                "Invalid thinking_mode `{other}`"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningEffort {
    High,
    Max,
}

impl ReasoningEffort {
    /// Parses the encoder argument (`None`, `"high"` or `"max"`).
    pub fn parse(s: Option<&str>) -> Result<Option<ReasoningEffort>, RenderError> {
        match s {
            None => Ok(None),
            Some("high") => Ok(Some(ReasoningEffort::High)),
            Some("max") => Ok(Some(ReasoningEffort::Max)),
            Some(other) => Err(RenderError::Assertion(format!(
                "Invalid reasoning effort: {other}"
            ))),
        }
    }
}

/// Encoder arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    pub thinking_mode: ThinkingMode,
    pub reasoning_effort: Option<ReasoningEffort>,
    pub drop_thinking: bool,
    pub add_default_bos_token: bool,
    /// Allocated context size; when `Some(n)` with `n < MAX_EFFORT_MIN_CONTEXT`,
    /// `reasoning_effort = max` is rendered as `high` (ds4 rule). `None`: official behaviour.
    pub context_window: Option<usize>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            thinking_mode: ThinkingMode::Thinking,
            reasoning_effort: None,
            drop_thinking: true,
            add_default_bos_token: true,
            context_window: None,
        }
    }
}

impl RenderOptions {
    /// The reasoning effort after the ds4 minimum-context rule.
    pub fn effective_reasoning_effort(&self) -> Option<ReasoningEffort> {
        match (self.reasoning_effort, self.context_window) {
            (Some(ReasoningEffort::Max), Some(ctx)) if ctx < MAX_EFFORT_MIN_CONTEXT => {
                Some(ReasoningEffort::High)
            }
            (e, _) => e,
        }
    }
}

/// Everything `encode_messages` takes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// Request-level tools. Like the official test harness, they are attached to `messages[0]`
    /// (so they render only if that is a `system` or `developer` message). Prepend a `system`
    /// message (possibly empty) to always render them.
    pub tools: Option<Vec<PyValue>>,
    /// Already-encoded prefix messages (`context`): they shape the output but are not rendered.
    pub context: Vec<Message>,
    pub options: RenderOptions,
}

/// The encoder's exceptions, named after the Python exception type they mirror.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("NotImplementedError: {0}")]
    NotImplemented(String),
    #[error("AssertionError: {0}")]
    Assertion(String),
    #[error("AttributeError: {0}")]
    Attribute(String),
    #[error("TypeError: {0}")]
    Type(String),
    #[error("KeyError: {0}")]
    Key(String),
}

impl RenderError {
    /// The Python exception type name (`"AssertionError"`, ...).
    pub fn python_type(&self) -> &'static str {
        match self {
            RenderError::NotImplemented(_) => "NotImplementedError",
            RenderError::Assertion(_) => "AssertionError",
            RenderError::Attribute(_) => "AttributeError",
            RenderError::Type(_) => "TypeError",
            RenderError::Key(_) => "KeyError",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    Template,
    Untrusted,
}

/// A rendered prompt: the exact text plus which byte ranges are template and which are request
/// data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenderedPrompt {
    text: String,
    /// `(end, kind)` of consecutive spans; adjacent spans have different kinds.
    spans: Vec<(usize, SegmentKind)>,
}

impl RenderedPrompt {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }

    pub fn push(&mut self, kind: SegmentKind, s: &str) {
        if s.is_empty() {
            return;
        }
        self.text.push_str(s);
        match self.spans.last_mut() {
            Some((end, k)) if *k == kind => *end = self.text.len(),
            _ => self.spans.push((self.text.len(), kind)),
        }
    }

    pub fn push_template(&mut self, s: &str) {
        self.push(SegmentKind::Template, s)
    }

    pub fn push_untrusted(&mut self, s: &str) {
        self.push(SegmentKind::Untrusted, s)
    }

    pub fn append(&mut self, other: &RenderedPrompt) {
        for seg in other.segments() {
            match seg {
                Segment::Template(s) => self.push_template(s),
                Segment::Untrusted(s) => self.push_untrusted(s),
            }
        }
    }

    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        let mut start = 0;
        self.spans.iter().map(move |&(end, kind)| {
            let s = &self.text[start..end];
            start = end;
            match kind {
                SegmentKind::Template => Segment::Template(s),
                SegmentKind::Untrusted => Segment::Untrusted(s),
            }
        })
    }

    /// Serving tokenization: added tokens recognised (with `template_mode`) in template segments
    /// only.
    pub fn tokenize(&self, tok: &Tokenizer, template_mode: EncodeMode) -> Vec<u32> {
        tok.encode_segments(self.segments(), template_mode)
    }
}

impl ChatRequest {
    /// A request from one render case object with the fields of the chat
    /// fixtures (`messages`, `tools`, `thinking_mode`, `reasoning_effort`,
    /// `drop_thinking`, `context`, `add_default_bos_token`); absent fields
    /// take the encoder's defaults. Used by `ds4 render --jsonl`.
    pub fn from_render_case(case: &PyValue) -> Result<ChatRequest, RenderError> {
        let present = |k: &str| case.get(k).filter(|v| !v.is_null());
        let defaults = RenderOptions::default();
        let thinking_mode = match present("thinking_mode") {
            None => defaults.thinking_mode,
            Some(v) => ThinkingMode::parse(&v.py_str())?,
        };
        let reasoning_effort = match present("reasoning_effort") {
            None => None,
            Some(PyValue::Str(s)) => ReasoningEffort::parse(Some(s))?,
            Some(_) => ReasoningEffort::parse(Some("<non-string>"))?,
        };
        let flag = |k: &str, default: bool| present(k).map_or(default, PyValue::truthy);
        let list = |k: &str| -> Result<Vec<Message>, RenderError> {
            match present(k) {
                None => Ok(Vec::new()),
                Some(v) => Message::list_from_json(v),
            }
        };
        Ok(ChatRequest {
            messages: list("messages")?,
            tools: present("tools")
                .and_then(PyValue::as_array)
                .map(<[PyValue]>::to_vec),
            context: list("context")?,
            options: RenderOptions {
                thinking_mode,
                reasoning_effort,
                drop_thinking: flag("drop_thinking", defaults.drop_thinking),
                add_default_bos_token: flag(
                    "add_default_bos_token",
                    defaults.add_default_bos_token,
                ),
                context_window: None,
            },
        })
    }
}
