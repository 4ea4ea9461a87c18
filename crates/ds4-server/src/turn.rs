//! One generated turn, token by token: detokenize (never a partial UTF-8
//! character), stop sequences (hold the bytes that could start one), DSML
//! tracking (forced greedy syntax, stop right after the tool-calls close
//! tag), streaming projection into reasoning / content / tool-call events,
//! and the final parse into a [`TurnResult`] (SERVING.md §3.2–3.6, §5.9).

use std::sync::atomic::{AtomicBool, Ordering};

use ds4_engine::{argmax, EngineError, Finish, Generated, Sampler, Step, TokenSink};
use ds4_text::dsml::{DsmlProjector, ProjectorOptions, StreamEvent};
use ds4_text::tokenizer::{THINK_END, THINK_START};
use ds4_text::{Tokenizer, Utf8Stream};
use tokio::sync::mpsc::UnboundedSender;

use crate::ids::random_id;
use crate::job::{Cancel, Event, FinishReason, ToolCallOut, TurnResult, Usage};
use crate::tracker::{DsmlTracker, StopList};

/// Why the sink stopped generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkStop {
    StopSequence,
    ToolClose,
    ClientGone,
    Shutdown,
}

/// Where the next token comes from when it is not sampled.
pub trait Forced: Send {
    /// The next token to emit instead of sampling, or `None` to sample.
    fn next(&mut self) -> Option<u32>;
}

pub struct TurnOptions<'a> {
    pub tok: &'a Tokenizer,
    pub eos: u32,
    /// The prompt left the model inside `<think>`.
    pub thinking: bool,
    /// Active tools: DSML tracking, greedy syntax, tool-call projection.
    pub tools: bool,
    /// Parse into reasoning / content / calls (chat kinds); else raw text.
    pub parse: bool,
    pub stops: Vec<String>,
    pub id_prefix: &'static str,
    pub events: &'a UnboundedSender<Event>,
    pub cancel: &'a Cancel,
    pub shutdown: &'a AtomicBool,
}

pub struct TurnSink<'a> {
    o: TurnOptions<'a>,
    utf8: Utf8Stream,
    /// Generated text so far (complete characters; truncated at a stop).
    text: String,
    /// Bytes of `text` handed to the projection.
    released: usize,
    stops: StopList,
    tracker: Option<DsmlTracker>,
    projector: Option<DsmlProjector>,
    pub reason: Option<SinkStop>,
    /// The close tag's token was accepted; stop before the next one.
    stop_next: bool,
    /// Scripted tokens that replace sampling (tests only).
    pub forced: Option<Box<dyn Forced + 'a>>,
}

impl<'a> TurnSink<'a> {
    pub fn new(o: TurnOptions<'a>) -> Self {
        let prefix = o.id_prefix;
        let projector = o.parse.then(|| {
            DsmlProjector::with_id_generator(
                ProjectorOptions {
                    thinking: o.thinking,
                    tools: o.tools,
                },
                move |_| random_id(prefix, 16),
            )
        });
        Self {
            stops: StopList::new(o.stops.clone()),
            tracker: o.tools.then(|| DsmlTracker::new(o.thinking)),
            projector,
            utf8: Utf8Stream::new(),
            text: String::new(),
            released: 0,
            reason: None,
            stop_next: false,
            forced: None,
            o,
        }
    }

    fn emit(&self, ev: StreamEvent) {
        let _ = self.o.events.send(Event::Delta(ev));
    }

    fn release_to(&mut self, end: usize) {
        if end <= self.released {
            return;
        }
        let piece = self.text[self.released..end].to_owned();
        self.released = end;
        match &mut self.projector {
            Some(p) => {
                for ev in p.push(&piece) {
                    self.emit(ev);
                }
            }
            None => self.emit(StreamEvent::Content(piece)),
        }
    }

    /// New text: stop sequences, DSML tracking, streaming.
    fn on_text(&mut self, new: &str) -> Step {
        if new.is_empty() {
            return Step::Continue;
        }
        self.text.push_str(new);
        if let Some(t) = &mut self.tracker {
            t.push(new);
        }
        if !self.stops.is_empty() {
            if let Some(i) = self.stops.earliest(&self.text[self.released..]) {
                let at = self.released + i;
                self.text.truncate(at);
                self.release_to(at);
                self.reason = Some(SinkStop::StopSequence);
                return Step::Stop;
            }
        }
        if self.tracker.as_ref().is_some_and(DsmlTracker::closed) {
            self.release_to(self.text.len());
            self.reason = Some(SinkStop::ToolClose);
            self.stop_next = true;
            return Step::Continue;
        }
        let safe = self.released + self.stops.safe_len(&self.text[self.released..]);
        self.release_to(safe);
        Step::Continue
    }

    fn gone(&self) -> Option<SinkStop> {
        if self.o.shutdown.load(Ordering::Relaxed) {
            Some(SinkStop::Shutdown)
        } else if self.o.events.is_closed() || self.o.cancel.is_raised() {
            Some(SinkStop::ClientGone)
        } else {
            None
        }
    }

    /// Ends the turn: flushes held text, parses, decides the finish reason.
    pub fn finish(
        mut self,
        generated: &Result<Generated, EngineError>,
        usage: Usage,
    ) -> TurnResult {
        if self.reason != Some(SinkStop::StopSequence) {
            let tail = self.utf8.finish();
            let _ = self.on_text(&tail);
            if self.reason != Some(SinkStop::StopSequence) {
                self.release_to(self.text.len());
            }
        }
        let base = match generated {
            Err(_) => FinishReason::Error,
            Ok(g) => match g.finish {
                Finish::StopToken(_) => FinishReason::Stop,
                Finish::Length | Finish::ContextFull => FinishReason::Length,
                Finish::Cancelled => FinishReason::Error,
                Finish::Sink => match self.reason {
                    Some(SinkStop::StopSequence) => FinishReason::Stop,
                    Some(SinkStop::ToolClose) => FinishReason::ToolCalls,
                    _ => FinishReason::Error,
                },
            },
        };
        let mut error = match (generated, self.reason) {
            (Err(e), _) => Some(e.to_string()),
            (_, Some(SinkStop::Shutdown)) => Some("shutdown requested".into()),
            (_, Some(SinkStop::ClientGone)) => Some("client disconnected".into()),
            (Ok(g), _) if g.finish == Finish::Cancelled => Some("cancelled".into()),
            _ => None,
        };
        let text = self.text.clone();
        let mut result = TurnResult {
            finish: base,
            error: None,
            recovered: false,
            reasoning: None,
            thinking_closed: false,
            content: text.clone(),
            calls: Vec::new(),
            streamed_calls: 0,
            closed_calls: 0,
            usage,
            text: text.clone(),
            raw_dsml: None,
            stop_sequence: self.reason == Some(SinkStop::StopSequence),
        };
        let Some(projector) = self.projector.take() else {
            result.error = error;
            return result;
        };
        let outcome = projector.finish();
        for ev in outcome.events {
            self.emit(ev);
        }
        result.streamed_calls = outcome.streamed_calls;
        result.closed_calls = outcome.closed_calls;
        let (reasoning, content, closed) = split_thinking(&text, self.o.thinking);
        result.thinking_closed = closed;
        let turn = outcome.turn;
        let mut finish = base;
        if self.o.tools {
            let opened = self.tracker.as_ref().is_some_and(DsmlTracker::opened);
            let closed_block = self.tracker.as_ref().is_some_and(DsmlTracker::closed);
            if opened && !closed_block && finish != FinishReason::Error {
                finish = FinishReason::Error;
                error = Some("unterminated tool call".into());
            }
        }
        if self.o.tools && turn.error.is_some() && finish != FinishReason::Error {
            // §3.4: a malformed block comes back as assistant text.
            result.recovered = true;
            result.content = text.clone();
            error = Some("invalid tool call returned as assistant text".into());
            finish = if base == FinishReason::Length {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
        } else if self.o.tools && !turn.tool_calls.is_empty() {
            result.reasoning = turn.reasoning.clone().or(reasoning);
            result.content = turn.content.clone();
            result.calls = turn
                .tool_calls
                .iter()
                .zip(&outcome.call_ids)
                .map(|(c, id)| ToolCallOut {
                    id: id.clone(),
                    name: c.name.clone(),
                    arguments: c.wire_arguments(),
                })
                .collect();
            if finish != FinishReason::Error {
                finish = FinishReason::ToolCalls;
            }
            result.raw_dsml = turn.raw_dsml.clone();
        } else {
            result.reasoning = reasoning;
            result.content = content;
        }
        if finish == FinishReason::ToolCalls && result.calls.is_empty() {
            finish = FinishReason::Stop;
        }
        result.finish = finish;
        result.error = error;
        result
    }
}

/// Reasoning / content of a turn without tool parsing. In thinking mode a
/// turn that never closed `</think>` is all reasoning (as it was streamed).
pub fn split_thinking(text: &str, thinking: bool) -> (Option<String>, String, bool) {
    let body = text.strip_prefix(THINK_START).unwrap_or(text);
    match body.find(THINK_END) {
        Some(i) => (
            Some(body[..i].to_owned()),
            body[i + THINK_END.len()..].to_owned(),
            true,
        ),
        None if thinking => (Some(body.to_owned()), String::new(), false),
        None => (None, text.to_owned(), false),
    }
}

impl TokenSink for TurnSink<'_> {
    fn choose(&mut self, sampler: &mut Sampler, logits: &[f32]) -> Option<u32> {
        if let Some(t) = self.forced.as_mut().and_then(|f| f.next()) {
            return Some(t);
        }
        if self
            .tracker
            .as_ref()
            .is_some_and(|t| t.state().forces_greedy())
        {
            return argmax(logits);
        }
        sampler.sample(logits)
    }

    /// No continued checkpoint inside a tool-call block (SERVING.md §6.4).
    fn checkpoint_ok(&self) -> bool {
        !self.tracker.as_ref().is_some_and(DsmlTracker::in_block)
    }

    fn accept(&mut self, token: u32, _logits: &[f32]) -> Step {
        if self.stop_next {
            return Step::Stop;
        }
        if let Some(r) = self.gone() {
            self.reason = Some(r);
            return Step::Stop;
        }
        if token == self.o.eos {
            return Step::Continue;
        }
        let new = self.utf8.push(self.o.tok.token_bytes(token));
        self.on_text(&new)
    }
}
