//! `POST /v1/messages`, the Anthropic Messages API (SERVING.md §5.4,
//! §5.8.4): thinking blocks with a signature, `tool_use` blocks with
//! `input_json_delta` streaming, Anthropic usage and stop reasons.

use std::collections::HashSet;
use std::sync::Arc;

use axum::response::Response;
use ds4_text::chat::{Message, Role, ToolCall};
use ds4_text::dsml::StreamEvent;
use ds4_text::pyjson::PyValue;

use super::{arguments_text, assistant_with_calls, function_tool, model_of, run_chat, Meta, Sent};
use crate::error::{ApiError, Protocol};
use crate::job::{
    final_think, parse_effort, parse_thinking, ChatInput, ClientSampling, Event, Kind, TurnResult,
    Usage,
};
use crate::json::{to_text, Fields};
use crate::obj;
use crate::sse::{named, StreamFormat};
use crate::state::Shared;

/// Text of a `tool_result` content: a string, or text blocks joined.
fn result_text(v: Option<&PyValue>) -> String {
    match v {
        Some(PyValue::Str(s)) => s.clone(),
        Some(PyValue::Array(items)) => {
            let parts: Vec<String> = items
                .iter()
                .filter_map(|b| match b {
                    PyValue::Str(s) => Some(s.clone()),
                    PyValue::Object(_) => {
                        b.get("text").and_then(PyValue::as_str).map(str::to_owned)
                    }
                    _ => None,
                })
                .collect();
            parts.join("\n")
        }
        Some(PyValue::Null) | None => String::new(),
        Some(other) => other.dumps_compact(),
    }
}

/// `system`: a string or an array of strings / `{text}` blocks; parts that
/// start with `x-anthropic-` are dropped; joined with `\n`.
fn system_text(v: Option<&PyValue>) -> Result<String, ApiError> {
    let parts: Vec<String> = match v {
        None | Some(PyValue::Null) => return Ok(String::new()),
        Some(PyValue::Str(s)) => vec![s.clone()],
        Some(PyValue::Array(items)) => items
            .iter()
            .filter_map(|b| match b {
                PyValue::Str(s) => Some(s.clone()),
                PyValue::Object(_) => b.get("text").and_then(PyValue::as_str).map(str::to_owned),
                _ => None,
            })
            .collect(),
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid JSON request: 'system' must be a string or an array",
            ))
        }
    };
    let mut out = String::new();
    for p in parts.iter().filter(|p| !p.starts_with("x-anthropic-")) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(p);
    }
    Ok(out)
}

/// Anthropic messages to chat messages; tool results become `tool`
/// messages. Fails when a `tool_result` names an id no replayed `tool_use`
/// carries (no live continuation state here).
pub fn parse_messages(items: &[PyValue]) -> Result<Vec<Message>, ApiError> {
    let mut out = Vec::new();
    let mut known: HashSet<String> = HashSet::new();
    for (i, m) in items.iter().enumerate() {
        let path = format!("messages[{i}]");
        if !matches!(m, PyValue::Object(_)) {
            return Err(ApiError::invalid(format!(
                "invalid JSON request: '{path}' must be an object"
            )));
        }
        let f = Fields::new(m, &path);
        let role = Role::parse(f.str("role")?.unwrap_or("user"));
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        match m.get("content") {
            None | Some(PyValue::Null) => {}
            Some(PyValue::Str(s)) => text.push_str(s),
            Some(PyValue::Array(blocks)) => {
                for b in blocks {
                    let kind = b.get("type").and_then(PyValue::as_str);
                    match (b, kind) {
                        (PyValue::Str(s), _) => text.push_str(s),
                        (_, Some("text")) => {
                            text.push_str(b.get("text").and_then(PyValue::as_str).unwrap_or(""))
                        }
                        (_, Some("thinking")) => reasoning
                            .push_str(b.get("thinking").and_then(PyValue::as_str).unwrap_or("")),
                        (_, Some("tool_use")) => {
                            let id = b.get("id").and_then(PyValue::as_str).unwrap_or("");
                            let name = b.get("name").and_then(PyValue::as_str).unwrap_or("");
                            let input = b
                                .get("input")
                                .filter(|v| !v.is_null())
                                .map_or_else(|| "{}".to_owned(), arguments_text);
                            known.insert(id.to_owned());
                            calls.push(ToolCall {
                                id: (!id.is_empty()).then(|| id.to_owned()),
                                name: name.to_owned(),
                                arguments: input,
                            });
                        }
                        (_, Some("tool_result")) => {
                            let id = b.get("tool_use_id").and_then(PyValue::as_str).unwrap_or("");
                            if !known.contains(id) {
                                return Err(ApiError::invalid(format!(
                                    "Anthropic continuation state is not available for tool_use_id {id}; retry by replaying the full messages history"
                                )));
                            }
                            results.push(Message::tool(id, &result_text(b.get("content"))));
                        }
                        // redacted_thinking, images, documents, …: dropped.
                        _ => {}
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "invalid JSON request: '{path}.content' must be a string or an array"
                )))
            }
        }
        if role == Role::Assistant {
            let r = (!reasoning.is_empty()).then_some(reasoning);
            out.push(assistant_with_calls(text, r, calls));
        } else {
            let had_results = !results.is_empty();
            out.extend(results);
            if !had_results || !text.is_empty() {
                out.push(Message::new(role, Some(&text)));
            }
        }
    }
    Ok(out)
}

pub fn parse(v: &PyValue, ctx: usize, raw: Option<String>) -> Result<ChatInput, ApiError> {
    let f = Fields::new(v, "");
    let Some(messages) = f.get("messages") else {
        return Err(ApiError::invalid("missing messages"));
    };
    let messages = messages
        .as_array()
        .ok_or_else(|| f.err("messages", "an array"))?;
    let mut messages = parse_messages(messages)?;
    let system = system_text(f.get("system"))?;
    if !system.is_empty() {
        messages.insert(0, Message::system(&system));
    }
    let model = model_of(&f)?;
    let tools: Vec<PyValue> = f
        .array("tools")?
        .unwrap_or(&[])
        .iter()
        .filter_map(|t| function_tool(t, None))
        .collect();
    let tools_enabled = f
        .get("tool_choice")
        .and_then(|t| t.get("type"))
        .and_then(PyValue::as_str)
        .is_none_or(|t| t != "none");
    let mut effort = parse_effort(&f, "reasoning_effort")?;
    if let Some(oc) = f.object("output_config")? {
        if let Some(e) = parse_effort(&Fields::new(oc, "output_config"), "effort")? {
            effort = Some(e);
        }
    }
    let think = final_think(&model, parse_thinking(&f, "thinking")?, effort, ctx);
    let stops = match f.array("stop_sequences")? {
        None => Vec::new(),
        Some(items) => items
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| f.err("stop_sequences", "an array of strings"))?
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
    };
    Ok(ChatInput {
        kind: Kind::Anthropic,
        model,
        messages,
        tools,
        tools_enabled,
        think,
        sampling: ClientSampling::parse(&f, &["temperature", "top_p", "top_k"])?,
        max_tokens: f.count("max_tokens")?,
        stops,
        stream: f.bool("stream")?.unwrap_or(false),
        param: "messages",
        raw,
    })
}

fn usage_json(u: &Usage, output: usize) -> PyValue {
    obj! {
        "input_tokens" => u.prompt.saturating_sub(u.cached + u.write()),
        "output_tokens" => output,
        "cache_read_input_tokens" => u.cached,
        "cache_creation_input_tokens" => u.write(),
    }
}

fn input_of(arguments: &str) -> PyValue {
    PyValue::parse(arguments).unwrap_or(PyValue::Object(Vec::new()))
}

pub fn body(meta: &Meta, r: &TurnResult) -> PyValue {
    let mut content = Vec::new();
    let reasoning = r.reasoning.as_deref().filter(|s| !s.is_empty());
    if let Some(t) = reasoning {
        content.push(obj! { "type" => "thinking", "thinking" => t, "signature" => &meta.id });
    }
    if !r.content.is_empty() {
        content.push(obj! { "type" => "text", "text" => &r.content });
    }
    for c in &r.calls {
        content.push(obj! { "type" => "tool_use", "id" => &c.id, "name" => &c.name, "input" => input_of(&c.arguments) });
    }
    if content.is_empty() || (reasoning.is_some() && content.len() == 1) {
        content.push(obj! { "type" => "text", "text" => "" });
    }
    obj! {
        "id" => &meta.id,
        "type" => "message",
        "role" => "assistant",
        "model" => &meta.model,
        "content" => content,
        "stop_reason" => r.finish.anthropic(),
        "stop_sequence" => None::<String>,
        "usage" => usage_json(&r.usage, r.usage.completion),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Thinking,
    Text,
    Tool,
}

pub struct AnthropicStream {
    meta: Meta,
    started: bool,
    index: usize,
    open: Open,
    any_thinking: bool,
    any_text: bool,
    any_tool: bool,
    sent: Sent,
}

impl AnthropicStream {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            started: false,
            index: 0,
            open: Open::None,
            any_thinking: false,
            any_text: false,
            any_tool: false,
            sent: Sent::default(),
        }
    }

    fn ev(&self, out: &mut String, name: &str, v: PyValue) {
        named(out, name, &to_text(&v));
    }

    fn start(&mut self, out: &mut String, usage: Usage) {
        if self.started {
            return;
        }
        self.started = true;
        let msg = obj! {
            "id" => &self.meta.id,
            "type" => "message",
            "role" => "assistant",
            "model" => &self.meta.model,
            "content" => Vec::<PyValue>::new(),
            "stop_reason" => None::<String>,
            "stop_sequence" => None::<String>,
            "usage" => usage_json(&usage, 0),
        };
        self.ev(
            out,
            "message_start",
            obj! { "type" => "message_start", "message" => msg },
        );
    }

    fn close(&mut self, out: &mut String) {
        match self.open {
            Open::None => return,
            Open::Thinking => {
                let d = obj! { "type" => "signature_delta", "signature" => &self.meta.id };
                self.ev(
                    out,
                    "content_block_delta",
                    obj! { "type" => "content_block_delta", "index" => self.index, "delta" => d },
                );
            }
            _ => {}
        }
        self.ev(
            out,
            "content_block_stop",
            obj! { "type" => "content_block_stop", "index" => self.index },
        );
        self.index += 1;
        self.open = Open::None;
    }

    fn open_block(&mut self, out: &mut String, kind: Open, block: PyValue) {
        self.close(out);
        self.open = kind;
        self.ev(out, "content_block_start", obj! { "type" => "content_block_start", "index" => self.index, "content_block" => block });
    }

    fn delta(&self, out: &mut String, d: PyValue) {
        self.ev(
            out,
            "content_block_delta",
            obj! { "type" => "content_block_delta", "index" => self.index, "delta" => d },
        );
    }

    fn text(&mut self, out: &mut String, s: &str) {
        if self.open != Open::Text {
            self.open_block(out, Open::Text, obj! { "type" => "text", "text" => "" });
            self.any_text = true;
        }
        self.delta(out, obj! { "type" => "text_delta", "text" => s });
    }
}

impl StreamFormat for AnthropicStream {
    fn event(&mut self, ev: Event, out: &mut String) {
        match ev {
            Event::Progress { .. } => {}
            Event::Started(u) => self.start(out, u),
            Event::Delta(d) => {
                self.start(out, Usage::default());
                self.sent.note(&d);
                match d {
                    StreamEvent::Reasoning(s) => {
                        if self.open != Open::Thinking {
                            self.open_block(
                                out,
                                Open::Thinking,
                                obj! { "type" => "thinking", "thinking" => "", "signature" => "" },
                            );
                            self.any_thinking = true;
                        }
                        self.delta(out, obj! { "type" => "thinking_delta", "thinking" => s });
                    }
                    StreamEvent::Content(s) => self.text(out, &s),
                    StreamEvent::ToolCallStart { id, name, .. } => {
                        self.any_tool = true;
                        self.open_block(out, Open::Tool, obj! { "type" => "tool_use", "id" => id, "name" => name, "input" => obj! {} });
                    }
                    StreamEvent::ToolCallArguments { delta, .. } => {
                        if self.open == Open::Tool {
                            self.delta(
                                out,
                                obj! { "type" => "input_json_delta", "partial_json" => delta },
                            );
                        }
                    }
                    StreamEvent::ToolCallEnd { .. } => self.close(out),
                }
            }
            Event::Done(r) => {
                self.start(out, r.usage);
                let tail = self.sent.unsent_tail(&r).to_owned();
                if !tail.is_empty() {
                    self.text(out, &tail);
                }
                self.close(out);
                for c in r.calls.iter().skip(r.closed_calls) {
                    self.any_tool = true;
                    self.open_block(out, Open::Tool, obj! { "type" => "tool_use", "id" => &c.id, "name" => &c.name, "input" => obj! {} });
                    self.delta(
                        out,
                        obj! { "type" => "input_json_delta", "partial_json" => &c.arguments },
                    );
                    self.close(out);
                }
                if self.any_thinking && !self.any_text && !self.any_tool {
                    self.open_block(out, Open::Text, obj! { "type" => "text", "text" => "" });
                    self.close(out);
                }
                let delta = obj! { "stop_reason" => r.finish.anthropic(), "stop_sequence" => None::<String> };
                self.ev(out, "message_delta", obj! { "type" => "message_delta", "delta" => delta, "usage" => obj! { "output_tokens" => r.usage.completion } });
                self.ev(out, "message_stop", obj! { "type" => "message_stop" });
            }
            Event::Failed(e) => self.error(&e, out),
        }
    }

    fn error(&mut self, e: &ApiError, out: &mut String) {
        out.push_str(&e.sse_event(Protocol::Anthropic));
    }
}

pub async fn handle(shared: Arc<Shared>, v: PyValue, raw: Option<String>) -> Response {
    let input = match parse(&v, shared.ctx, raw) {
        Ok(r) => r,
        Err(e) => return e.response(Protocol::Anthropic),
    };
    run_chat(
        shared,
        input,
        Protocol::Anthropic,
        |meta| Box::new(AnthropicStream::new(meta)),
        body,
    )
    .await
}
