//! `POST /v1/chat/completions` (SERVING.md §5.4, §5.8.1).

use std::sync::Arc;

use axum::response::Response;
use ds4_text::chat::{Message, Role, ToolCall};
use ds4_text::dsml::StreamEvent;
use ds4_text::pyjson::PyValue;

use super::{arguments_text, flatten_content, function_tool, model_of, run_chat, Meta, Sent};
use crate::error::{ApiError, Protocol};
use crate::job::{
    final_think, parse_effort, parse_thinking, ChatInput, ClientSampling, Event, Kind, TurnResult,
    Usage,
};
use crate::json::{push_field, to_text, Fields};
use crate::obj;
use crate::sse::{data, StreamFormat};
use crate::state::Shared;

/// Sampling knobs chat accepts.
pub const SAMPLING_KEYS: [&str; 5] = ["temperature", "top_p", "min_p", "top_k", "seed"];

fn tool_calls(v: &PyValue, path: &str) -> Result<Vec<ToolCall>, ApiError> {
    let Some(items) = v.as_array() else {
        return Err(ApiError::invalid(format!(
            "invalid JSON request: '{path}' must be an array"
        )));
    };
    let mut calls = Vec::new();
    for it in items {
        let f = it.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(PyValue::as_str);
        let args = f.and_then(|f| f.get("arguments")).filter(|a| !a.is_null());
        // Calls missing a name or arguments are dropped (ds4).
        let (Some(name), Some(args)) = (name, args) else {
            continue;
        };
        calls.push(ToolCall {
            id: it
                .get("id")
                .and_then(PyValue::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            name: name.to_owned(),
            arguments: arguments_text(args),
        });
    }
    Ok(calls)
}

/// OpenAI chat messages (§5.4): missing role → user; content string, null
/// or part array; `reasoning_content`; `tool_calls`; `tool_call_id`.
pub fn parse_messages(items: &[PyValue]) -> Result<Vec<Message>, ApiError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let path = format!("messages[{i}]");
        if !matches!(m, PyValue::Object(_)) {
            return Err(ApiError::invalid(format!(
                "invalid JSON request: '{path}' must be an object"
            )));
        }
        let f = Fields::new(m, &path);
        let role = Role::parse(f.str("role")?.unwrap_or("user"));
        let mut msg = Message::new(role, Some(&flatten_content(m.get("content"))));
        if let Some(r) = m.get("reasoning_content").filter(|r| !r.is_null()) {
            let r = flatten_content(Some(r));
            msg.reasoning_content = (!r.is_empty()).then_some(r);
        }
        if let Some(tc) = f.get("tool_calls") {
            msg.tool_calls = tool_calls(tc, &format!("{path}.tool_calls"))?;
        }
        msg.tool_call_id = f.str("tool_call_id")?.map(str::to_owned);
        out.push(msg);
    }
    Ok(out)
}

/// Tools of an OpenAI request, normalized to function tools.
pub fn parse_tools(f: &Fields<'_>) -> Result<Vec<PyValue>, ApiError> {
    Ok(f.array("tools")?
        .unwrap_or(&[])
        .iter()
        .filter_map(|t| function_tool(t, None))
        .collect())
}

/// Parsed chat request plus what only the response needs.
pub struct ChatRequest {
    pub input: ChatInput,
    pub include_usage: bool,
}

pub fn parse(v: &PyValue, ctx: usize, raw: Option<String>) -> Result<ChatRequest, ApiError> {
    let f = Fields::new(v, "");
    let Some(messages) = f.get("messages") else {
        return Err(ApiError::invalid("missing messages"));
    };
    let messages = messages
        .as_array()
        .ok_or_else(|| f.err("messages", "an array"))?;
    let messages = parse_messages(messages)?;
    let model = model_of(&f)?;
    let tools_enabled = !matches!(f.get("tool_choice"), Some(PyValue::Str(s)) if s == "none");
    let enabled = match parse_thinking(&f, "thinking")? {
        Some(b) => Some(b),
        None => f.bool("think")?,
    };
    let effort = parse_effort(&f, "reasoning_effort")?;
    let think = final_think(&model, enabled, effort, ctx);
    let max_tokens = match f.count("max_completion_tokens")? {
        Some(n) => Some(n),
        None => f.count("max_tokens")?,
    };
    let include_usage = match f.object("stream_options")? {
        Some(o) => Fields::new(o, "stream_options")
            .bool("include_usage")?
            .unwrap_or(false),
        None => false,
    };
    Ok(ChatRequest {
        input: ChatInput {
            kind: Kind::Chat,
            model,
            messages,
            tools: parse_tools(&f)?,
            tools_enabled,
            think,
            sampling: ClientSampling::parse(&f, &SAMPLING_KEYS)?,
            max_tokens,
            stops: f.stop_list("stop")?,
            stream: f.bool("stream")?.unwrap_or(false),
            param: "messages",
            raw,
        },
        include_usage,
    })
}

pub fn usage_json(u: &Usage) -> PyValue {
    obj! {
        "prompt_tokens" => u.prompt,
        "completion_tokens" => u.completion,
        "total_tokens" => u.total(),
        "prompt_tokens_details" => obj! { "cached_tokens" => u.cached, "cache_write_tokens" => u.write() },
    }
}

fn call_json(index: usize, c: &crate::job::ToolCallOut) -> PyValue {
    obj! {
        "index" => index,
        "id" => &c.id,
        "type" => "function",
        "function" => obj! { "name" => &c.name, "arguments" => &c.arguments },
    }
}

/// The non-streaming body.
pub fn body(meta: &Meta, r: &TurnResult) -> PyValue {
    let mut msg = obj! { "role" => "assistant", "content" => &r.content };
    if let Some(reasoning) = r.reasoning.as_deref().filter(|s| !s.is_empty()) {
        push_field(&mut msg, "reasoning_content", reasoning);
    }
    if !r.calls.is_empty() {
        let calls: Vec<PyValue> = r
            .calls
            .iter()
            .map(|c| {
                obj! {
                    "id" => &c.id,
                    "type" => "function",
                    "function" => obj! { "name" => &c.name, "arguments" => &c.arguments },
                }
            })
            .collect();
        push_field(&mut msg, "tool_calls", calls);
    }
    obj! {
        "id" => &meta.id,
        "object" => "chat.completion",
        "created" => meta.created,
        "model" => &meta.model,
        "choices" => vec![obj! {
            "index" => 0u64,
            "message" => msg,
            "finish_reason" => r.finish.openai(),
        }],
        "usage" => usage_json(&r.usage),
    }
}

/// SSE framing of chat completion chunks.
pub struct ChatStream {
    meta: Meta,
    include_usage: bool,
    started: bool,
    sent: Sent,
    streamed_calls: bool,
}

impl ChatStream {
    pub fn new(meta: Meta, include_usage: bool) -> Self {
        Self {
            meta,
            include_usage,
            started: false,
            sent: Sent::default(),
            streamed_calls: false,
        }
    }

    fn chunk(&self, out: &mut String, delta: PyValue, finish: Option<&str>) {
        let c = obj! {
            "id" => &self.meta.id,
            "object" => "chat.completion.chunk",
            "created" => self.meta.created,
            "model" => &self.meta.model,
            "choices" => vec![obj! { "index" => 0u64, "delta" => delta, "finish_reason" => finish }],
        };
        data(out, &to_text(&c));
    }

    fn start(&mut self, out: &mut String) {
        if !self.started {
            self.started = true;
            self.chunk(out, obj! { "role" => "assistant" }, None);
        }
    }
}

impl StreamFormat for ChatStream {
    fn event(&mut self, ev: Event, out: &mut String) {
        match ev {
            Event::Progress { .. } => {}
            Event::Started(_) => self.start(out),
            Event::Delta(d) => {
                self.start(out);
                self.sent.note(&d);
                let delta = match d {
                    StreamEvent::Reasoning(s) => obj! { "reasoning_content" => s },
                    StreamEvent::Content(s) => obj! { "content" => s },
                    StreamEvent::ToolCallStart { index, id, name } => {
                        self.streamed_calls = true;
                        obj! { "tool_calls" => vec![obj! {
                            "index" => index,
                            "id" => id,
                            "type" => "function",
                            "function" => obj! { "name" => name, "arguments" => "" },
                        }] }
                    }
                    StreamEvent::ToolCallArguments { index, delta } => {
                        obj! { "tool_calls" => vec![obj! {
                            "index" => index,
                            "function" => obj! { "arguments" => delta },
                        }] }
                    }
                    StreamEvent::ToolCallEnd { .. } => return,
                };
                self.chunk(out, delta, None);
            }
            Event::Done(r) => {
                self.start(out);
                let tail = self.sent.unsent_tail(&r);
                if !tail.is_empty() {
                    self.chunk(out, obj! { "content" => tail }, None);
                }
                if !self.streamed_calls && !r.calls.is_empty() {
                    let calls: Vec<PyValue> = r
                        .calls
                        .iter()
                        .enumerate()
                        .map(|(i, c)| call_json(i, c))
                        .collect();
                    self.chunk(out, obj! { "tool_calls" => calls }, None);
                }
                self.chunk(out, obj! {}, Some(r.finish.openai()));
                if self.include_usage {
                    let c = obj! {
                        "id" => &self.meta.id,
                        "object" => "chat.completion.chunk",
                        "created" => self.meta.created,
                        "model" => &self.meta.model,
                        "choices" => Vec::<PyValue>::new(),
                        "usage" => usage_json(&r.usage),
                    };
                    data(out, &to_text(&c));
                }
                data(out, "[DONE]");
            }
            Event::Failed(e) => self.error(&e, out),
        }
    }

    fn error(&mut self, e: &ApiError, out: &mut String) {
        out.push_str(&e.sse_event(Protocol::OpenAi));
    }
}

pub async fn handle(shared: Arc<Shared>, v: PyValue, raw: Option<String>) -> Response {
    let req = match parse(&v, shared.ctx, raw) {
        Ok(r) => r,
        Err(e) => return e.response(Protocol::OpenAi),
    };
    let include_usage = req.include_usage;
    run_chat(
        shared,
        req.input,
        Protocol::OpenAi,
        move |meta| Box::new(ChatStream::new(meta, include_usage)),
        body,
    )
    .await
}
