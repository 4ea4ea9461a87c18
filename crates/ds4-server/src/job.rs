//! What a protocol handler hands the worker (a [`Job`]) and what comes back
//! ([`Event`]s ending in a [`TurnResult`]); thinking controls (§5.6) and
//! sampling (§5.7) shared by all endpoints; rendering a chat request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ds4_engine::SamplingParams;
use ds4_text::chat::{
    render, ChatRequest, Message, ReasoningEffort, RenderOptions, RenderedPrompt, Role,
    ThinkingMode, MAX_EFFORT_MIN_CONTEXT,
};
use ds4_text::dsml::StreamEvent;
use ds4_text::pyjson::PyValue;
use ds4_text::EncodeMode;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::json::Fields;
use crate::state::Shared;
use crate::toolmem::ReplayStats;

/// Thinking mode of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Think {
    None,
    High,
    Max,
}

impl Think {
    pub fn on(self) -> bool {
        self != Think::None
    }

    pub fn name(self) -> &'static str {
        match self {
            Think::None => "none",
            Think::High => "high",
            Think::Max => "max",
        }
    }
}

/// An effort string (`reasoning_effort`, `output_config.effort`,
/// `reasoning.effort`): `max` → MAX; `xhigh`/`high`/`medium`/`low`/`minimal`
/// → HIGH; `none` → NONE; null → unchanged; anything else is rejected.
pub fn parse_effort(f: &Fields<'_>, key: &str) -> Result<Option<Think>, ApiError> {
    match f.str(key)? {
        None => Ok(None),
        Some("max") => Ok(Some(Think::Max)),
        Some("xhigh" | "high" | "medium" | "low" | "minimal") => Ok(Some(Think::High)),
        Some("none") => Ok(Some(Think::None)),
        Some(other) => Err(ApiError::invalid(format!(
            "invalid JSON request: '{key}' must be one of none, minimal, low, medium, high, xhigh, max (got '{other}')"
        ))),
    }
}

/// `thinking`: a boolean, `{"type": "enabled"|"disabled"|"adaptive", …}`
/// (other keys ignored) or null. `Some(false)` disables thinking.
pub fn parse_thinking(f: &Fields<'_>, key: &str) -> Result<Option<bool>, ApiError> {
    match f.get(key) {
        None => Ok(None),
        Some(PyValue::Bool(b)) => Ok(Some(*b)),
        Some(v @ PyValue::Object(_)) => match v.get("type") {
            Some(PyValue::Str(t)) if t == "disabled" => Ok(Some(false)),
            Some(PyValue::Str(t)) if t == "enabled" || t == "adaptive" => Ok(Some(true)),
            Some(PyValue::Str(_)) | None | Some(PyValue::Null) => Ok(None),
            Some(_) => Err(f.err(key, "a boolean or an object with a string 'type'")),
        },
        Some(_) => Err(f.err(key, "a boolean or an object")),
    }
}

/// The final thinking mode (§5.6): NONE when disabled explicitly, by effort
/// `none`, or by the `deepseek-chat` alias (unless an explicit control is
/// present); MAX for effort `max` with a context of at least 384 Ki tokens;
/// HIGH otherwise (the default, also for `deepseek-reasoner`).
pub fn final_think(model: &str, enabled: Option<bool>, effort: Option<Think>, ctx: usize) -> Think {
    let explicit = enabled.is_some() || effort.is_some();
    let disabled = enabled == Some(false)
        || effort == Some(Think::None)
        || (!explicit && model == "deepseek-chat");
    if disabled {
        Think::None
    } else if effort == Some(Think::Max) && ctx >= MAX_EFFORT_MIN_CONTEXT {
        Think::Max
    } else {
        Think::High
    }
}

/// Sampling knobs as the client sent them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientSampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub seed: Option<f64>,
}

impl ClientSampling {
    /// Reads the knobs an endpoint accepts (`keys` lists them).
    pub fn parse(f: &Fields<'_>, keys: &[&str]) -> Result<Self, ApiError> {
        let mut c = ClientSampling::default();
        for &k in keys {
            match k {
                "temperature" => c.temperature = f.f64(k)?,
                "top_p" => c.top_p = f.f64(k)?,
                "min_p" => c.min_p = f.f64(k)?,
                "top_k" => c.top_k = f.count(k)?,
                "seed" => c.seed = f.f64(k)?,
                _ => {}
            }
        }
        Ok(c)
    }

    /// The effective sampler (§5.7): in thinking mode the client's knobs are
    /// ignored and ds4's fixed defaults apply.
    pub fn effective(&self, think: Think) -> SamplingParams {
        let d = SamplingParams::default();
        if think.on() {
            return d;
        }
        SamplingParams {
            temperature: self.temperature.map_or(d.temperature, |t| t as f32),
            top_p: self.top_p.map_or(d.top_p, |p| p as f32),
            min_p: self.min_p.map_or(d.min_p, |p| p.max(0.0) as f32),
            top_k: self.top_k.map_or(d.top_k, |k| {
                k.min(ds4_engine::sampling::MAX_TOP_K as u64) as usize
            }),
            seed: self
                .seed
                .filter(|s| *s > 0.0)
                .map_or(0, |s| s.min(u64::MAX as f64) as u64),
        }
    }
}

/// Which endpoint a job came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
    Responses,
    Anthropic,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Completion => "completion",
            Kind::Responses => "responses",
            Kind::Anthropic => "anthropic",
        }
    }
}

/// One request for the worker.
pub struct Job {
    /// Request number (for logs and the trace).
    pub seq: u64,
    pub kind: Kind,
    pub model: String,
    pub stream: bool,
    pub prompt: RenderedPrompt,
    /// The whole prompt tokenized.
    pub tokens: Vec<u32>,
    pub think: Think,
    /// The request has active tools (DSML detection, stop, greedy syntax).
    pub tools: bool,
    /// Tool calls or results occur in the history.
    pub tool_context: bool,
    /// Parse the output into reasoning / content / tool calls (chat kinds).
    pub parse: bool,
    pub sampling: SamplingParams,
    /// Requested output limit (clamped to the context at generation start).
    pub max_tokens: usize,
    pub stops: Vec<String>,
    /// `call_` or `toolu_`.
    pub id_prefix: &'static str,
    pub replay: ReplayStats,
    /// The raw request, for the trace.
    pub raw: Option<String>,
    pub events: UnboundedSender<Event>,
    pub cancel: Arc<Cancel>,
}

/// A job's cancel flag and when it was raised (the client went away, or
/// shutdown).
#[derive(Debug, Default)]
pub struct Cancel {
    flag: AtomicBool,
    at: Mutex<Option<Instant>>,
}

impl Cancel {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn raise(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            if let Ok(mut at) = self.at.lock() {
                *at = Some(Instant::now());
            }
        }
    }

    pub fn is_raised(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag the engine polls.
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    pub fn raised_at(&self) -> Option<Instant> {
        self.at.lock().ok().and_then(|a| *a)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the effective prompt.
    pub prompt: usize,
    /// Reused prefix tokens.
    pub cached: usize,
    /// Generated tokens (a final end-of-sentence not counted).
    pub completion: usize,
}

impl Usage {
    pub fn write(&self) -> usize {
        self.prompt.saturating_sub(self.cached)
    }

    pub fn total(&self) -> usize {
        self.prompt + self.completion
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    Error,
}

impl FinishReason {
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Error => "error",
        }
    }

    pub fn anthropic(self) -> &'static str {
        match self {
            FinishReason::ToolCalls => "tool_use",
            FinishReason::Length => "max_tokens",
            _ => "end_turn",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCallOut {
    pub id: String,
    pub name: String,
    /// Compact wire JSON (§3.3).
    pub arguments: String,
}

/// A finished turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnResult {
    pub finish: FinishReason,
    /// Why the turn failed or was recovered.
    pub error: Option<String>,
    /// A malformed tool block came back as text.
    pub recovered: bool,
    pub reasoning: Option<String>,
    /// `</think>` was generated.
    pub thinking_closed: bool,
    pub content: String,
    pub calls: Vec<ToolCallOut>,
    /// Calls whose start / end were streamed live.
    pub streamed_calls: usize,
    pub closed_calls: usize,
    pub usage: Usage,
    /// The generated text (after stop-sequence truncation).
    pub text: String,
    /// The exact tool-call block as generated (for replay by id).
    pub raw_dsml: Option<String>,
    /// A stop sequence ended the turn.
    pub stop_sequence: bool,
}

/// Worker → handler.
#[derive(Debug)]
pub enum Event {
    /// A prefill chunk finished.
    Progress {
        done: usize,
        total: usize,
    },
    /// Prefill done, generation starts.
    Started(Usage),
    Delta(StreamEvent),
    Done(Box<TurnResult>),
    Failed(ApiError),
}

/// A chat-kind request after protocol parsing.
#[derive(Debug)]
pub struct ChatInput {
    pub kind: Kind,
    pub model: String,
    pub messages: Vec<Message>,
    /// Tools in OpenAI form (`{"type":"function","function":{…}}`).
    pub tools: Vec<PyValue>,
    /// `tool_choice` is not `none`.
    pub tools_enabled: bool,
    pub think: Think,
    pub sampling: ClientSampling,
    pub max_tokens: Option<u64>,
    pub stops: Vec<String>,
    pub stream: bool,
    /// The error `param` for a too-long prompt.
    pub param: &'static str,
    pub raw: Option<String>,
}

/// Renders and tokenizes a chat request and checks it fits the context.
pub fn chat_job(
    shared: &Shared,
    mut input: ChatInput,
    events: UnboundedSender<Event>,
    cancel: Arc<Cancel>,
) -> Result<Job, ApiError> {
    let tools = input.tools_enabled && !input.tools.is_empty();
    let tool_context = input
        .messages
        .iter()
        .any(|m| !m.tool_calls.is_empty() || m.role == Role::Tool);
    shared.load_disk_tool_ids(&input.messages);
    let replay = shared.apply_tool_memory(&mut input.messages);
    if tools
        && !matches!(
            input.messages.first().map(|m| &m.role),
            Some(Role::System | Role::Developer)
        )
    {
        // Request tools render on the first message, which must be a
        // system or developer message.
        input.messages.insert(0, Message::system(""));
    }
    let req = ChatRequest {
        messages: input.messages,
        tools: tools.then_some(input.tools),
        context: Vec::new(),
        options: RenderOptions {
            thinking_mode: if input.think.on() {
                ThinkingMode::Thinking
            } else {
                ThinkingMode::Chat
            },
            reasoning_effort: (input.think == Think::Max).then_some(ReasoningEffort::Max),
            drop_thinking: true,
            add_default_bos_token: true,
            context_window: Some(shared.ctx),
        },
    };
    let prompt = render(&req).map_err(|e| ApiError::invalid(format!("invalid request: {e}")))?;
    let tokens = prompt.tokenize(&shared.tok, EncodeMode::Hf);
    if tokens.len() >= shared.ctx {
        return Err(ApiError::context_length(
            input.param,
            tokens.len(),
            shared.ctx,
        ));
    }
    Ok(Job {
        seq: shared.next_seq(),
        kind: input.kind,
        model: input.model,
        stream: input.stream,
        prompt,
        tokens,
        think: input.think,
        tools,
        tool_context,
        parse: true,
        sampling: input.sampling.effective(input.think),
        max_tokens: input
            .max_tokens
            .map_or(shared.opts.default_max_tokens, |m| m as usize),
        stops: input.stops,
        id_prefix: if input.kind == Kind::Anthropic {
            "toolu_"
        } else {
            "call_"
        },
        replay,
        raw: input.raw,
        events,
        cancel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse_body;

    fn fields(v: &PyValue) -> Fields<'_> {
        Fields::new(v, "")
    }

    #[test]
    fn request_defaults_use_min_p_filtering() {
        // SERVING.md §9 item 1.
        let think = final_think("deepseek-v4-flash", None, None, 32768);
        assert_eq!(think, Think::High);
        let s = ClientSampling::default().effective(think);
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p),
            (1.0, 1.0, 0, 0.05)
        );
    }

    #[test]
    fn reasoning_effort_mapping() {
        // SERVING.md §9 item 2.
        for (e, want) in [
            ("low", Think::High),
            ("medium", Think::High),
            ("high", Think::High),
            ("xhigh", Think::High),
            ("max", Think::Max),
            ("none", Think::None),
        ] {
            let v = parse_body(format!("{{\"reasoning_effort\":\"{e}\"}}").as_bytes()).unwrap();
            assert_eq!(
                parse_effort(&fields(&v), "reasoning_effort").unwrap(),
                Some(want)
            );
        }
        let v = parse_body(br#"{"reasoning_effort":"banana"}"#).unwrap();
        assert!(parse_effort(&fields(&v), "reasoning_effort").is_err());
        let v = parse_body(br#"{"reasoning_effort":null}"#).unwrap();
        assert_eq!(parse_effort(&fields(&v), "reasoning_effort").unwrap(), None);
        assert_eq!(final_think("m", None, Some(Think::Max), 32768), Think::High);
        assert_eq!(
            final_think("m", None, Some(Think::Max), 393_216),
            Think::Max
        );
    }

    #[test]
    fn api_thinking_controls_parse() {
        // SERVING.md §9 item 3.
        let v = parse_body(br#"{"thinking":{"type":"disabled","budget_tokens":1024},"a":true,"b":{"type":"adaptive"},"c":3}"#).unwrap();
        let f = fields(&v);
        assert_eq!(parse_thinking(&f, "thinking").unwrap(), Some(false));
        assert_eq!(parse_thinking(&f, "a").unwrap(), Some(true));
        assert_eq!(parse_thinking(&f, "b").unwrap(), Some(true));
        assert!(parse_thinking(&f, "c").is_err());
        let v =
            parse_body(br#"{"output_config":{"effort":"max"},"x":{"effort":"xhigh"}}"#).unwrap();
        let oc = v.get("output_config").unwrap();
        assert_eq!(
            parse_effort(&Fields::new(oc, "output_config"), "effort").unwrap(),
            Some(Think::Max)
        );
        let x = v.get("x").unwrap();
        assert_eq!(
            parse_effort(&Fields::new(x, "x"), "effort").unwrap(),
            Some(Think::High)
        );
        assert_eq!(
            final_think("m", Some(false), Some(Think::Max), 1 << 20),
            Think::None
        );
    }

    #[test]
    fn aliases_select_thinking_unless_explicit() {
        assert_eq!(final_think("deepseek-chat", None, None, 32768), Think::None);
        assert_eq!(
            final_think("deepseek-chat", Some(true), None, 32768),
            Think::High
        );
        assert_eq!(
            final_think("deepseek-reasoner", None, None, 32768),
            Think::High
        );
        assert_eq!(
            final_think("deepseek-v4-flash", None, Some(Think::None), 32768),
            Think::None
        );
    }

    #[test]
    fn non_thinking_sampling_follows_client() {
        let c = ClientSampling {
            temperature: Some(0.0),
            top_p: Some(0.5),
            top_k: Some(5000),
            min_p: Some(-1.0),
            seed: Some(7.0),
        };
        let s = c.effective(Think::None);
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p, s.seed),
            (0.0, 0.5, 1024, 0.0, 7)
        );
        assert_eq!(c.effective(Think::High), SamplingParams::default());
    }
}
