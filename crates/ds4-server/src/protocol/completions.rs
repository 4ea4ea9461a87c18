//! `POST /v1/completions` (SERVING.md §2.6, §5.4, §5.8.2): the prompt goes
//! into a fixed chat frame, the output is returned raw (reasoning included).

use std::sync::Arc;

use axum::response::Response;
use ds4_text::chat::{RenderedPrompt, MAX_EFFORT_PREFIX};
use ds4_text::dsml::StreamEvent;
use ds4_text::pyjson::PyValue;
use ds4_text::tokenizer::{ASSISTANT, BOS, THINK_END, THINK_START, USER};
use ds4_text::EncodeMode;
use tokio::sync::mpsc::unbounded_channel;

use super::chat::{usage_json, SAMPLING_KEYS};
use super::{finish_job, model_of, Meta};
use crate::error::{ApiError, Protocol};
use crate::job::{
    final_think, parse_effort, parse_thinking, Cancel, ClientSampling, Event, Job, Kind, Think,
    TurnResult,
};
use crate::json::{to_text, Fields};
use crate::obj;
use crate::sse::{data, StreamFormat};
use crate::state::Shared;
use crate::toolmem::ReplayStats;

/// `BOS (+MAX prefix) "You are a helpful assistant" <｜User｜> prompt
/// <｜Assistant｜> <think>|</think>`; specials in the prompt are live.
pub fn render(prompt: &str, think: Think) -> RenderedPrompt {
    let mut p = RenderedPrompt::new();
    p.push_template(BOS);
    if think == Think::Max {
        p.push_template(MAX_EFFORT_PREFIX);
    }
    p.push_template("You are a helpful assistant");
    p.push_template(USER);
    p.push_template(prompt);
    p.push_template(ASSISTANT);
    p.push_template(if think.on() { THINK_START } else { THINK_END });
    p
}

fn body(meta: &Meta, r: &TurnResult) -> PyValue {
    obj! {
        "id" => &meta.id,
        "object" => "text_completion",
        "created" => meta.created,
        "model" => &meta.model,
        "choices" => vec![obj! {
            "text" => &r.content,
            "index" => 0u64,
            "finish_reason" => r.finish.openai(),
        }],
        "usage" => usage_json(&r.usage),
    }
}

struct CompletionStream {
    meta: Meta,
    include_usage: bool,
}

impl CompletionStream {
    fn chunk(&self, out: &mut String, text: &str, finish: Option<&str>) {
        let c = obj! {
            "id" => &self.meta.id,
            "object" => "text_completion",
            "created" => self.meta.created,
            "model" => &self.meta.model,
            "choices" => vec![obj! { "text" => text, "index" => 0u64, "finish_reason" => finish }],
        };
        data(out, &to_text(&c));
    }
}

impl StreamFormat for CompletionStream {
    fn event(&mut self, ev: Event, out: &mut String) {
        match ev {
            Event::Delta(StreamEvent::Content(s) | StreamEvent::Reasoning(s)) => {
                self.chunk(out, &s, None)
            }
            Event::Done(r) => {
                self.chunk(out, "", Some(r.finish.openai()));
                if self.include_usage {
                    let c = obj! {
                        "id" => &self.meta.id,
                        "object" => "text_completion",
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
            _ => {}
        }
    }

    fn error(&mut self, e: &ApiError, out: &mut String) {
        out.push_str(&e.sse_event(Protocol::OpenAi));
    }
}

pub async fn handle(shared: Arc<Shared>, v: PyValue, raw: Option<String>) -> Response {
    match build(&shared, &v, raw).await {
        Ok(r) => r,
        Err(e) => e.response(Protocol::OpenAi),
    }
}

async fn build(
    shared: &Arc<Shared>,
    v: &PyValue,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let f = Fields::new(v, "");
    let prompt = match f.get("prompt") {
        None => return Err(ApiError::invalid("missing prompt")),
        Some(PyValue::Str(s)) => s.clone(),
        Some(PyValue::Array(items)) => items
            .first()
            .and_then(PyValue::as_str)
            .unwrap_or("")
            .to_owned(),
        Some(_) => String::new(),
    };
    let model = model_of(&f)?;
    let enabled = match parse_thinking(&f, "thinking")? {
        Some(b) => Some(b),
        None => f.bool("think")?,
    };
    let think = final_think(
        &model,
        enabled,
        parse_effort(&f, "reasoning_effort")?,
        shared.ctx,
    );
    let sampling = ClientSampling::parse(&f, &SAMPLING_KEYS)?.effective(think);
    let max_tokens = f
        .count("max_tokens")?
        .map_or(shared.opts.default_max_tokens, |n| n as usize);
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.object("stream_options")? {
        Some(o) => Fields::new(o, "stream_options")
            .bool("include_usage")?
            .unwrap_or(false),
        None => false,
    };
    let stops = f.stop_list("stop")?;
    let rendered = render(&prompt, think);
    let s2 = Arc::clone(shared);
    let (rendered, tokens) = tokio::task::spawn_blocking(move || {
        let t = rendered.tokenize(&s2.tok, EncodeMode::Hf);
        (rendered, t)
    })
    .await
    .map_err(|e| ApiError::server(format!("request task failed: {e}")))?;
    if tokens.len() >= shared.ctx {
        return Err(ApiError::context_length("prompt", tokens.len(), shared.ctx));
    }
    let (tx, rx) = unbounded_channel();
    let cancel = Cancel::new();
    let job = Job {
        seq: shared.next_seq(),
        kind: Kind::Completion,
        model: model.clone(),
        stream,
        prompt: rendered,
        tokens,
        think,
        tools: false,
        tool_context: false,
        parse: false,
        sampling,
        max_tokens,
        stops,
        id_prefix: "call_",
        replay: ReplayStats::default(),
        raw,
        events: tx,
        cancel: Arc::clone(&cancel),
    };
    let meta = Meta::new(format!("cmpl-{}", job.seq), &model);
    Ok(finish_job(
        Arc::clone(shared),
        job,
        rx,
        cancel,
        meta,
        stream,
        Protocol::OpenAi,
        move |meta| {
            Box::new(CompletionStream {
                meta,
                include_usage,
            })
        },
        body,
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_frame() {
        let p = render("Hi", Think::None);
        assert_eq!(
            p.text(),
            "<｜begin▁of▁sentence｜>You are a helpful assistant<｜User｜>Hi<｜Assistant｜></think>"
        );
        assert!(render("Hi", Think::High).text().ends_with("<think>"));
        assert!(render("Hi", Think::Max).text().contains("Reasoning Effort"));
    }
}
