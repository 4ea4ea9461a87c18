//! One module per protocol: request parsing into a [`ChatInput`], the
//! non-streaming response body, and the SSE framing ([`StreamFormat`]).
//! This module holds what they share: message content flattening, tool
//! normalization, and running a job to a response.

pub mod anthropic;
pub mod chat;
pub mod completions;
pub mod responses;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use ds4_text::chat::{Message, Role, ToolCall};
use ds4_text::dsml::StreamEvent;
use ds4_text::pyjson::PyValue;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::{json_response, ApiError, Protocol};
use crate::ids::unix_now;
use crate::job::{chat_job, Cancel, ChatInput, Event, Job, TurnResult, Usage};
use crate::json::Fields;
use crate::obj;
use crate::sse::{CancelGuard, StreamFormat};
use crate::state::Shared;

/// Identity of a response: id, creation time, echoed model.
#[derive(Clone, Debug)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    pub fn new(id: String, model: &str) -> Self {
        Self {
            id,
            created: unix_now(),
            model: model.to_owned(),
        }
    }
}

/// Text of an OpenAI-style `content`: a string, null (""), or an array whose
/// string items and objects' `text` values are concatenated without a
/// separator (images and other parts are dropped). Other types give "".
pub fn flatten_content(v: Option<&PyValue>) -> String {
    match v {
        Some(PyValue::Str(s)) => s.clone(),
        Some(PyValue::Array(items)) => {
            let mut out = String::new();
            for it in items {
                match it {
                    PyValue::Str(s) => out.push_str(s),
                    PyValue::Object(_) => {
                        if let Some(PyValue::Str(t)) = it.get("text") {
                            out.push_str(t);
                        }
                    }
                    _ => {}
                }
            }
            out
        }
        _ => String::new(),
    }
}

/// Arguments of a client tool call as JSON text: a string as is, any other
/// value as compact JSON (key order kept).
pub fn arguments_text(v: &PyValue) -> String {
    match v {
        PyValue::Str(s) => s.clone(),
        other => other.dumps_compact(),
    }
}

/// A tool in the OpenAI form the renderer takes
/// (`{"type":"function","function":{name, description, parameters}}`), from
/// the OpenAI form, the flat Responses form, or Anthropic's `input_schema`.
/// `None` for tools that are not functions.
pub fn function_tool(t: &PyValue, name_override: Option<&str>) -> Option<PyValue> {
    if let Some(f @ PyValue::Object(_)) = t.get("function") {
        return Some(match name_override {
            None => obj! { "type" => "function", "function" => f.clone() },
            Some(n) => {
                let mut f = f.clone();
                if let PyValue::Object(entries) = &mut f {
                    PyValue::object_insert(entries, "name".into(), PyValue::Str(n.into()));
                }
                obj! { "type" => "function", "function" => f }
            }
        });
    }
    let name = match name_override {
        Some(n) => n.to_owned(),
        None => t.get("name")?.as_str()?.to_owned(),
    };
    let kind = t.get("type").and_then(PyValue::as_str);
    if !matches!(kind, None | Some("function" | "custom")) {
        return None;
    }
    let mut f = vec![("name".to_owned(), PyValue::Str(name))];
    if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
        f.push(("description".into(), d.clone()));
    }
    let params = t
        .get("parameters")
        .or_else(|| t.get("input_schema"))
        .filter(|p| !p.is_null());
    if let Some(p) = params {
        f.push(("parameters".into(), p.clone()));
    }
    Some(obj! { "type" => "function", "function" => PyValue::Object(f) })
}

/// An assistant message carrying tool calls.
pub fn assistant_with_calls(
    content: String,
    reasoning: Option<String>,
    calls: Vec<ToolCall>,
) -> Message {
    let mut m = Message::new(Role::Assistant, Some(&content));
    m.reasoning_content = reasoning;
    m.tool_calls = calls;
    m
}

/// Runs a chat-kind request: render + tokenize off the async threads,
/// queue, and answer (SSE or one JSON body).
pub async fn run_chat<F, R>(
    shared: Arc<Shared>,
    input: ChatInput,
    proto: Protocol,
    make_stream: F,
    make_body: R,
) -> Response
where
    F: FnOnce(Meta) -> Box<dyn StreamFormat>,
    R: FnOnce(&Meta, &TurnResult) -> PyValue,
{
    let (tx, rx) = unbounded_channel();
    let cancel = Cancel::new();
    let stream = input.stream;
    let model = input.model.clone();
    let s2 = Arc::clone(&shared);
    let c2 = Arc::clone(&cancel);
    let job = tokio::task::spawn_blocking(move || chat_job(&s2, input, tx, c2)).await;
    let job = match job {
        Ok(Ok(job)) => job,
        Ok(Err(e)) => return e.response(proto),
        Err(e) => return ApiError::server(format!("request task failed: {e}")).response(proto),
    };
    let prefix = match job.kind {
        crate::job::Kind::Completion => "cmpl-",
        crate::job::Kind::Responses => "resp_",
        _ => "chatcmpl-",
    };
    let id = if prefix == "resp_" {
        crate::ids::random_id("resp_", 12)
    } else {
        format!("{prefix}{}", job.seq)
    };
    finish_job(
        shared,
        job,
        rx,
        cancel,
        Meta::new(id, &model),
        stream,
        proto,
        make_stream,
        make_body,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
pub async fn finish_job<F, R>(
    shared: Arc<Shared>,
    job: Job,
    rx: UnboundedReceiver<Event>,
    cancel: Arc<Cancel>,
    meta: Meta,
    stream: bool,
    proto: Protocol,
    make_stream: F,
    make_body: R,
) -> Response
where
    F: FnOnce(Meta) -> Box<dyn StreamFormat>,
    R: FnOnce(&Meta, &TurnResult) -> PyValue,
{
    if let Err(e) = shared.submit(job) {
        return e.response(proto);
    }
    if stream {
        return crate::sse::response(
            rx,
            BoxedFormat(make_stream(meta)),
            cancel,
            shared.opts.keepalive,
        );
    }
    let mut guard = CancelGuard::new(cancel);
    let done = wait_done(rx).await;
    guard.disarm();
    match done {
        Ok(result) => json_response(StatusCode::OK, &make_body(&meta, &result)),
        Err(e) => e.response(proto),
    }
}

struct BoxedFormat(Box<dyn StreamFormat>);

impl StreamFormat for BoxedFormat {
    fn event(&mut self, ev: Event, out: &mut String) {
        self.0.event(ev, out)
    }
    fn error(&mut self, e: &ApiError, out: &mut String) {
        self.0.error(e, out)
    }
}

/// Waits for the end of a job (non-streaming requests).
pub async fn wait_done(mut rx: UnboundedReceiver<Event>) -> Result<TurnResult, ApiError> {
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Done(r) => return Ok(*r),
            Event::Failed(e) => return Err(e),
            _ => {}
        }
    }
    Err(ApiError::server("the inference worker stopped"))
}

/// What a stream has sent of the visible text, to resend a tail that the
/// final parse recovered as content (malformed tool markup).
#[derive(Default)]
pub struct Sent {
    pub content: String,
    pub reasoning: String,
    pub usage: Usage,
}

impl Sent {
    pub fn note(&mut self, ev: &StreamEvent) {
        match ev {
            StreamEvent::Content(s) => self.content.push_str(s),
            StreamEvent::Reasoning(s) => self.reasoning.push_str(s),
            _ => {}
        }
    }

    /// Content the final result has beyond what was streamed.
    pub fn unsent_tail<'r>(&self, r: &'r TurnResult) -> &'r str {
        if r.recovered {
            r.content.strip_prefix(self.content.as_str()).unwrap_or("")
        } else {
            ""
        }
    }
}

/// Shortcut for the common request fields.
pub fn model_of(f: &Fields<'_>) -> Result<String, ApiError> {
    Ok(f.str("model")?
        .unwrap_or(crate::options::MODEL_ID)
        .to_owned())
}
