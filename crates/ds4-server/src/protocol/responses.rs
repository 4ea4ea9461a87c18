//! `POST /v1/responses`, the OpenAI Responses API (SERVING.md §5.4,
//! §5.8.3): input items to messages, reasoning summaries only when asked
//! for, function-call items after generation, and the streaming event
//! lifecycle with sequence numbers.

use std::collections::HashSet;
use std::sync::Arc;

use axum::response::Response;
use ds4_text::chat::{Message, Role, ToolCall};
use ds4_text::dsml::StreamEvent;
use ds4_text::pyjson::PyValue;

use super::{arguments_text, assistant_with_calls, function_tool, model_of, run_chat, Meta, Sent};
use crate::error::{ApiError, Protocol};
use crate::ids::random_id;
use crate::job::{
    final_think, parse_effort, ChatInput, ClientSampling, Event, FinishReason, Kind, TurnResult,
    Usage,
};
use crate::json::{push_field, to_text, Fields};
use crate::obj;
use crate::sse::{data, StreamFormat};
use crate::state::Shared;

/// A namespace tool's joined name and its wire parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespaced {
    pub joined: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug)]
pub struct ResponsesRequest {
    pub input: ChatInput,
    /// `reasoning.summary` asked for reasoning output.
    pub summary: bool,
    pub namespaces: Vec<Namespaced>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::invalid(msg)
}

/// Text of a content array (strings and text-like parts); other parts fail.
fn parts_text(v: Option<&PyValue>, path: &str) -> Result<String, ApiError> {
    match v {
        None | Some(PyValue::Null) => Ok(String::new()),
        Some(PyValue::Str(s)) => Ok(s.clone()),
        Some(PyValue::Array(items)) => {
            let mut out = String::new();
            for p in items {
                match p {
                    PyValue::Str(s) => out.push_str(s),
                    PyValue::Object(_) => {
                        let kind = p.get("type").and_then(PyValue::as_str).unwrap_or("");
                        if !matches!(
                            kind,
                            "input_text"
                                | "output_text"
                                | "text"
                                | "summary_text"
                                | "reasoning_text"
                        ) {
                            return Err(bad(format!(
                                "invalid JSON request: content part of type '{kind}' in '{path}' is not supported"
                            )));
                        }
                        match p.get("text") {
                            Some(PyValue::Str(s)) => out.push_str(s),
                            None | Some(PyValue::Null) => {}
                            Some(_) => {
                                return Err(bad(format!(
                                    "invalid JSON request: '{path}[].text' must be a string"
                                )))
                            }
                        }
                    }
                    _ => {
                        return Err(bad(format!(
                            "invalid JSON request: '{path}' holds a part that is not text"
                        )))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(bad(format!(
            "invalid JSON request: '{path}' must be a string or an array"
        ))),
    }
}

/// Output of a tool: a string, a content array, or raw JSON.
fn output_text(v: Option<&PyValue>) -> String {
    match v {
        None | Some(PyValue::Null) => String::new(),
        Some(PyValue::Str(s)) => s.clone(),
        Some(a @ PyValue::Array(_)) => super::flatten_content(Some(a)),
        Some(other) => other.dumps_compact(),
    }
}

fn flush_reasoning(msgs: &mut Vec<Message>, pending: &mut Option<String>) {
    if let Some(r) = pending.take() {
        msgs.push(assistant_with_calls(String::new(), Some(r), Vec::new()));
    }
}

/// Input items to messages (§5.4). System and developer text is collected
/// into `system` (rendered as one system message at the head).
pub fn parse_items(items: &[PyValue], system: &mut Vec<String>) -> Result<Vec<Message>, ApiError> {
    let mut msgs: Vec<Message> = Vec::new();
    let mut pending: Option<String> = None;
    let mut known: HashSet<String> = HashSet::new();
    for (i, it) in items.iter().enumerate() {
        let path = format!("input[{i}]");
        if !matches!(it, PyValue::Object(_)) {
            return Err(bad(format!(
                "invalid JSON request: '{path}' must be an object"
            )));
        }
        let f = Fields::new(it, &path);
        if let Some(status) = f.str("status")? {
            if !status.is_empty() && status != "completed" {
                return Err(bad(format!(
                    "invalid JSON request: '{path}.status' is '{status}'; only completed items can be replayed"
                )));
            }
        }
        let kind = f.str("type")?.unwrap_or("message");
        match kind {
            "message" => {
                let role = f.str("role")?.unwrap_or("user");
                let text = parts_text(it.get("content"), &format!("{path}.content"))?;
                match role {
                    "system" | "developer" => system.push(text),
                    "assistant" => {
                        let r = pending.take();
                        msgs.push(assistant_with_calls(text, r, Vec::new()));
                    }
                    "user" => {
                        flush_reasoning(&mut msgs, &mut pending);
                        msgs.push(Message::user(&text));
                    }
                    other => {
                        return Err(bad(format!(
                            "invalid JSON request: '{path}.role' '{other}' is not supported"
                        )))
                    }
                }
            }
            "reasoning" => {
                let mut texts = Vec::new();
                for key in ["summary", "content"] {
                    if let Some(PyValue::Array(parts)) = it.get(key) {
                        for p in parts {
                            if let Some(t) = p.get("text").and_then(PyValue::as_str) {
                                texts.push(t.to_owned());
                            }
                        }
                    }
                }
                let joined = texts.join("\n");
                pending = Some(match pending.take() {
                    Some(p) if !p.is_empty() => format!("{p}\n{joined}"),
                    _ => joined,
                });
            }
            "function_call" | "custom_tool_call" => {
                let id = f.str("call_id")?.or(f.str("id")?).unwrap_or("").to_owned();
                let name = f.str("name")?.unwrap_or("");
                let name = match f.str("namespace")? {
                    Some(ns) if kind == "function_call" => format!("{ns}{name}"),
                    _ => name.to_owned(),
                };
                let args_key = if kind == "custom_tool_call" {
                    "input"
                } else {
                    "arguments"
                };
                let arguments = it
                    .get(args_key)
                    .filter(|a| !a.is_null())
                    .map_or_else(|| "{}".to_owned(), arguments_text);
                known.insert(id.clone());
                let call = ToolCall {
                    id: (!id.is_empty()).then_some(id),
                    name,
                    arguments,
                };
                match msgs.last_mut() {
                    Some(m) if m.role == Role::Assistant && pending.is_none() => {
                        m.tool_calls.push(call)
                    }
                    _ => {
                        let r = pending.take();
                        msgs.push(assistant_with_calls(String::new(), r, vec![call]));
                    }
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let id = f.str("call_id")?.or(f.str("id")?).unwrap_or("");
                if !known.contains(id) {
                    return Err(bad(format!(
                        "Responses continuation state is not available for call_id {id}; retry by replaying the full input history"
                    )));
                }
                flush_reasoning(&mut msgs, &mut pending);
                msgs.push(Message::tool(id, &output_text(it.get("output"))));
            }
            "compaction" | "context_compaction" => {}
            other => {
                return Err(bad(format!(
                    "invalid JSON request: input item type '{other}' is not supported"
                )))
            }
        }
    }
    flush_reasoning(&mut msgs, &mut pending);
    Ok(msgs)
}

/// Function tools, flat or wrapped, and namespace tools (joined names).
fn parse_tools(f: &Fields<'_>) -> Result<(Vec<PyValue>, Vec<Namespaced>), ApiError> {
    let mut tools = Vec::new();
    let mut ns = Vec::new();
    for t in f.array("tools")?.unwrap_or(&[]) {
        match t.get("type").and_then(PyValue::as_str) {
            Some("namespace") => {
                let space = t.get("name").and_then(PyValue::as_str).unwrap_or("");
                for inner in t.get("tools").and_then(PyValue::as_array).unwrap_or(&[]) {
                    let Some(name) = inner
                        .get("name")
                        .or_else(|| inner.get("function").and_then(|f| f.get("name")))
                        .and_then(PyValue::as_str)
                    else {
                        continue;
                    };
                    let joined = format!("{space}{name}");
                    if let Some(tool) = function_tool(inner, Some(&joined)) {
                        tools.push(tool);
                        ns.push(Namespaced {
                            joined,
                            namespace: space.to_owned(),
                            name: name.to_owned(),
                        });
                    }
                }
            }
            _ => tools.extend(function_tool(t, None)),
        }
    }
    Ok((tools, ns))
}

pub fn parse(v: &PyValue, ctx: usize, raw: Option<String>) -> Result<ResponsesRequest, ApiError> {
    let f = Fields::new(v, "");
    for key in ["previous_response_id", "conversation"] {
        if f.get(key).is_some() {
            return Err(bad(format!(
                "{key} is not supported; replay full input instead"
            )));
        }
    }
    let mut system = Vec::new();
    if let Some(i) = f.str("instructions")? {
        system.push(i.to_owned());
    }
    let mut messages = match f.get("input") {
        None => return Err(bad("missing input")),
        Some(PyValue::Str(s)) => vec![Message::user(s)],
        Some(PyValue::Array(items)) => parse_items(items, &mut system)?,
        Some(_) => return Err(f.err("input", "a string or an array")),
    };
    let system: Vec<String> = system.into_iter().filter(|s| !s.is_empty()).collect();
    if !system.is_empty() {
        messages.insert(0, Message::system(&system.join("\n\n")));
    }
    let tools_enabled = match f.get("tool_choice") {
        None => true,
        Some(PyValue::Str(s)) if s == "auto" => true,
        Some(PyValue::Str(s)) if s == "none" => false,
        Some(PyValue::Str(s)) => return Err(bad(format!("tool_choice={s} not supported"))),
        Some(_) => return Err(bad("forced tool_choice not supported")),
    };
    let (tools, namespaces) = parse_tools(&f)?;
    let (mut effort, mut summary) = (None, false);
    if let Some(r) = f.object("reasoning")? {
        let rf = Fields::new(r, "reasoning");
        effort = parse_effort(&rf, "effort")?;
        summary = matches!(rf.str("summary")?, Some("auto" | "concise" | "detailed"));
    }
    let model = model_of(&f)?;
    let think = final_think(&model, None, effort, ctx);
    let max_tokens = match f.count("max_output_tokens")? {
        Some(n) => Some(n),
        None => f.count("max_tokens")?,
    };
    Ok(ResponsesRequest {
        input: ChatInput {
            kind: Kind::Responses,
            model,
            messages,
            tools,
            tools_enabled,
            think,
            sampling: ClientSampling::parse(&f, &["temperature", "top_p"])?,
            max_tokens,
            stops: Vec::new(),
            stream: f.bool("stream")?.unwrap_or(false),
            param: "input",
            raw,
        },
        summary,
        namespaces,
    })
}

fn usage_json(u: &Usage) -> PyValue {
    obj! {
        "input_tokens" => u.prompt,
        "input_tokens_details" => obj! { "cached_tokens" => u.cached, "cache_write_tokens" => u.write() },
        "output_tokens" => u.completion,
        "output_tokens_details" => obj! { "reasoning_tokens" => 0u64 },
        "total_tokens" => u.total(),
    }
}

/// Item ids of one response (the same in the stream and the final output).
struct Items {
    reasoning: String,
    message: String,
    calls: Vec<String>,
}

impl Items {
    fn new() -> Self {
        Self {
            reasoning: random_id("rs_", 12),
            message: random_id("msg_", 12),
            calls: Vec::new(),
        }
    }

    fn call(&mut self, i: usize) -> String {
        while self.calls.len() <= i {
            self.calls.push(random_id("fc_", 12));
        }
        self.calls[i].clone()
    }
}

fn reasoning_item(id: &str, status: &str, text: Option<&str>) -> PyValue {
    let summary: Vec<PyValue> = text
        .map(|t| obj! { "type" => "summary_text", "text" => t })
        .into_iter()
        .collect();
    obj! { "id" => id, "type" => "reasoning", "status" => status, "summary" => summary }
}

fn message_item(id: &str, status: &str, text: Option<&str>) -> PyValue {
    let content: Vec<PyValue> = text
        .map(|t| obj! { "type" => "output_text", "text" => t, "annotations" => Vec::<PyValue>::new() })
        .into_iter()
        .collect();
    obj! { "id" => id, "type" => "message", "status" => status, "role" => "assistant", "content" => content }
}

fn call_item(
    id: &str,
    status: &str,
    c: &crate::job::ToolCallOut,
    ns: &[Namespaced],
    args: &str,
) -> PyValue {
    let mut item = obj! { "id" => id, "type" => "function_call", "status" => status };
    match ns.iter().find(|n| n.joined == c.name) {
        Some(n) => {
            push_field(&mut item, "name", &n.name);
            push_field(&mut item, "namespace", &n.namespace);
        }
        None => push_field(&mut item, "name", &c.name),
    }
    push_field(&mut item, "call_id", &c.id);
    push_field(&mut item, "arguments", args);
    item
}

fn status_of(r: &TurnResult) -> &'static str {
    match r.finish {
        FinishReason::Length => "incomplete",
        FinishReason::Error => "failed",
        _ => "completed",
    }
}

/// The response object; `output` as given.
fn response_obj(
    meta: &Meta,
    status: &str,
    output: Vec<PyValue>,
    r: Option<&TurnResult>,
) -> PyValue {
    let mut v = obj! {
        "id" => &meta.id,
        "object" => "response",
        "created_at" => meta.created,
        "status" => status,
        "model" => &meta.model,
    };
    if let Some(r) = r {
        match r.finish {
            FinishReason::Length => push_field(
                &mut v,
                "incomplete_details",
                obj! { "reason" => "max_tokens" },
            ),
            FinishReason::Error => push_field(
                &mut v,
                "error",
                obj! { "code" => "server_error", "message" => "generation failed" },
            ),
            _ => {}
        }
    }
    push_field(&mut v, "output", output);
    push_field(&mut v, "parallel_tool_calls", true);
    push_field(&mut v, "tool_choice", "auto");
    push_field(&mut v, "tools", Vec::<PyValue>::new());
    if let Some(r) = r {
        push_field(&mut v, "usage", usage_json(&r.usage));
    }
    v
}

fn final_output(
    items: &mut Items,
    r: &TurnResult,
    summary: bool,
    ns: &[Namespaced],
) -> Vec<PyValue> {
    let mut out = Vec::new();
    if let Some(t) = r.reasoning.as_deref().filter(|t| summary && !t.is_empty()) {
        let status = if r.thinking_closed {
            "completed"
        } else {
            "incomplete"
        };
        out.push(reasoning_item(&items.reasoning, status, Some(t)));
    }
    if !r.content.is_empty() {
        let status = if matches!(r.finish, FinishReason::Length | FinishReason::Error) {
            "incomplete"
        } else {
            "completed"
        };
        out.push(message_item(&items.message, status, Some(&r.content)));
    }
    for (i, c) in r.calls.iter().enumerate() {
        let id = items.call(i);
        out.push(call_item(&id, "completed", c, ns, &c.arguments));
    }
    out
}

pub struct ResponsesStream {
    meta: Meta,
    summary: bool,
    ns: Vec<Namespaced>,
    items: Items,
    seq: u64,
    next_index: usize,
    created: bool,
    /// Output index of the reasoning / message item once added.
    reasoning_at: Option<usize>,
    message_at: Option<usize>,
    sent: Sent,
}

impl ResponsesStream {
    pub fn new(meta: Meta, summary: bool, ns: Vec<Namespaced>) -> Self {
        Self {
            meta,
            summary,
            ns,
            items: Items::new(),
            seq: 0,
            next_index: 0,
            created: false,
            reasoning_at: None,
            message_at: None,
            sent: Sent::default(),
        }
    }

    /// One event: `type` first, `sequence_number` second.
    fn emit(&mut self, out: &mut String, kind: &str, fields: PyValue) {
        let mut v = obj! { "type" => kind, "sequence_number" => self.seq };
        if let (PyValue::Object(dst), PyValue::Object(src)) = (&mut v, fields) {
            dst.extend(src);
        }
        self.seq += 1;
        data(out, &to_text(&v));
    }

    fn created(&mut self, out: &mut String) {
        if !self.created {
            self.created = true;
            let r = response_obj(&self.meta, "in_progress", Vec::new(), None);
            self.emit(out, "response.created", obj! { "response" => r });
        }
    }

    fn open_reasoning(&mut self, out: &mut String) -> usize {
        if let Some(i) = self.reasoning_at {
            return i;
        }
        let i = self.next_index;
        self.next_index += 1;
        self.reasoning_at = Some(i);
        let id = self.items.reasoning.clone();
        self.emit(
            out,
            "response.output_item.added",
            obj! { "output_index" => i, "item" => reasoning_item(&id, "in_progress", None) },
        );
        self.emit(
            out,
            "response.reasoning_summary_part.added",
            obj! {
                "item_id" => &id, "output_index" => i, "summary_index" => 0u64,
                "part" => obj! { "type" => "summary_text", "text" => "" },
            },
        );
        i
    }

    fn open_message(&mut self, out: &mut String) -> usize {
        if let Some(i) = self.message_at {
            return i;
        }
        let i = self.next_index;
        self.next_index += 1;
        self.message_at = Some(i);
        let id = self.items.message.clone();
        self.emit(
            out,
            "response.output_item.added",
            obj! { "output_index" => i, "item" => message_item(&id, "in_progress", None) },
        );
        self.emit(out, "response.content_part.added", obj! {
            "item_id" => &id, "output_index" => i, "content_index" => 0u64,
            "part" => obj! { "type" => "output_text", "text" => "", "annotations" => Vec::<PyValue>::new() },
        });
        i
    }

    fn text_delta(&mut self, out: &mut String, s: &str) {
        let i = self.open_message(out);
        let id = self.items.message.clone();
        self.emit(
            out,
            "response.output_text.delta",
            obj! { "item_id" => id, "output_index" => i, "content_index" => 0u64, "delta" => s },
        );
    }

    fn done(&mut self, out: &mut String, r: &TurnResult) {
        self.created(out);
        let mut output = Vec::new();
        if let Some(i) = self.reasoning_at {
            let id = self.items.reasoning.clone();
            let text = self.sent.reasoning.clone();
            self.emit(out, "response.reasoning_summary_text.done", obj! { "item_id" => &id, "output_index" => i, "summary_index" => 0u64, "text" => &text });
            self.emit(
                out,
                "response.reasoning_summary_part.done",
                obj! {
                    "item_id" => &id, "output_index" => i, "summary_index" => 0u64,
                    "part" => obj! { "type" => "summary_text", "text" => &text },
                },
            );
            let status = if r.thinking_closed {
                "completed"
            } else {
                "incomplete"
            };
            let item = reasoning_item(&id, status, Some(&text));
            output.push(item.clone());
            self.emit(
                out,
                "response.output_item.done",
                obj! { "output_index" => i, "item" => item },
            );
        }
        let tail = self.sent.unsent_tail(r).to_owned();
        if !tail.is_empty() {
            self.sent.content.push_str(&tail);
            self.text_delta(out, &tail);
        }
        if let Some(i) = self.message_at {
            let id = self.items.message.clone();
            let text = if r.recovered {
                r.content.clone()
            } else {
                self.sent.content.clone()
            };
            self.emit(out, "response.output_text.done", obj! { "item_id" => &id, "output_index" => i, "content_index" => 0u64, "text" => &text });
            self.emit(out, "response.content_part.done", obj! {
                "item_id" => &id, "output_index" => i, "content_index" => 0u64,
                "part" => obj! { "type" => "output_text", "text" => &text, "annotations" => Vec::<PyValue>::new() },
            });
            let status = if matches!(r.finish, FinishReason::Length | FinishReason::Error) {
                "incomplete"
            } else {
                "completed"
            };
            let item = message_item(&id, status, Some(&text));
            output.push(item.clone());
            self.emit(
                out,
                "response.output_item.done",
                obj! { "output_index" => i, "item" => item },
            );
        }
        for (k, c) in r.calls.iter().enumerate() {
            let i = self.next_index;
            self.next_index += 1;
            let id = self.items.call(k);
            let added = call_item(&id, "in_progress", c, &self.ns, "");
            self.emit(
                out,
                "response.output_item.added",
                obj! { "output_index" => i, "item" => added },
            );
            self.emit(
                out,
                "response.function_call_arguments.delta",
                obj! { "item_id" => &id, "output_index" => i, "delta" => &c.arguments },
            );
            let mut d = obj! { "item_id" => &id, "output_index" => i };
            match self.ns.iter().find(|n| n.joined == c.name) {
                Some(n) => {
                    push_field(&mut d, "name", &n.name);
                    push_field(&mut d, "namespace", &n.namespace);
                }
                None => push_field(&mut d, "name", &c.name),
            }
            push_field(&mut d, "arguments", &c.arguments);
            self.emit(out, "response.function_call_arguments.done", d);
            let item = call_item(&id, "completed", c, &self.ns, &c.arguments);
            output.push(item.clone());
            self.emit(
                out,
                "response.output_item.done",
                obj! { "output_index" => i, "item" => item },
            );
        }
        let status = status_of(r);
        let kind = match status {
            "incomplete" => "response.incomplete",
            "failed" => "response.failed",
            _ => "response.completed",
        };
        let resp = response_obj(&self.meta, status, output, Some(r));
        self.emit(out, kind, obj! { "response" => resp });
    }
}

impl StreamFormat for ResponsesStream {
    fn event(&mut self, ev: Event, out: &mut String) {
        match ev {
            Event::Progress { .. } => {}
            Event::Started(_) => self.created(out),
            Event::Delta(d) => {
                self.created(out);
                match &d {
                    StreamEvent::Reasoning(s) if self.summary => {
                        let i = self.open_reasoning(out);
                        let id = self.items.reasoning.clone();
                        self.emit(out, "response.reasoning_summary_text.delta", obj! { "item_id" => id, "output_index" => i, "summary_index" => 0u64, "delta" => s });
                    }
                    StreamEvent::Content(s) => self.text_delta(out, s),
                    _ => {}
                }
                self.sent.note(&d);
            }
            Event::Done(r) => self.done(out, &r),
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
    let (summary, ns) = (req.summary, req.namespaces);
    let ns2 = ns.clone();
    run_chat(
        shared,
        req.input,
        Protocol::OpenAi,
        move |meta| Box::new(ResponsesStream::new(meta, summary, ns)),
        move |meta, r| {
            let mut items = Items::new();
            let output = final_output(&mut items, r, summary, &ns2);
            response_obj(meta, status_of(r), output, Some(r))
        },
    )
    .await
}
