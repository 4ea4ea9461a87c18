//! Incremental projection of a generation into reasoning, content and tool-call events
//! (SERVING.md §3.6).
//!
//! The projector keeps the whole generated text and a cursor. Each step either completes a unit
//! (a tag, a value piece) and emits its events, or waits because the bytes after the cursor may
//! still become syntax. Nothing that could later turn out to be markup is ever emitted:
//!
//! * reasoning holds a trailing partial `</think>`;
//! * content (with tools) holds a trailing partial tool-calls open tag and the whitespace before
//!   it, since that separator is trimmed when a block follows;
//! * parameter values hold a trailing partial close tag and, for string values, a trailing
//!   partial entity (`&am`), so entity unescaping never straddles two emissions.
//!
//! Because every decision is made only once the bytes that decide it are present, the events
//! are the same (after merging adjacent deltas) however the text is split into chunks. The
//! final [`StreamOutcome::turn`] is [`parse_generated`] of the whole text, so it is exactly the
//! one-shot parse; the streamed events agree with it for well-formed turns. They can disagree on
//! malformed ones, as in ds4: a thinking turn that never closes `</think>` was streamed as
//! reasoning but parses as content, and tool-call deltas that were sent cannot be retracted when
//! the block later fails to parse. Streaming switches from reasoning to content at the first
//! `</think>`, the final parse at the last one; and without thinking mode the stream treats think
//! tags as content while the final parse still splits at a `</think>` (§3.2 step 6).

use super::{
    is_c_space, json_escape_fragment_into, json_escape_into, parse_generated, partial_entity_start,
    partial_tag_start, skip_ws, tag_attr, trim_end_ws, unescape_entities, ParsedTurn, Syntax,
    SYNTAXES,
};
use crate::tokenizer::{THINK_END, THINK_START};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorOptions {
    /// Thinking mode: the output starts inside reasoning (a leading `<think>` is skipped) and
    /// the final parse requires `</think>` before tool calls.
    pub thinking: bool,
    /// The request has active tools: content is scanned for tool-call blocks and they are
    /// projected as tool-call events. Without tools, content streams through untouched.
    pub tools: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Reasoning(String),
    Content(String),
    /// The invoke tag is complete; arguments follow as deltas.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A fragment of the compact JSON arguments object (non-string values raw, as generated).
    ToolCallArguments {
        index: usize,
        delta: String,
    },
    ToolCallEnd {
        index: usize,
    },
}

/// What [`DsmlProjector::finish`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOutcome {
    /// Events released by the end of the stream (held bytes).
    pub events: Vec<StreamEvent>,
    /// [`parse_generated`] of the whole text.
    pub turn: ParsedTurn,
    /// One id per `turn.tool_calls`: the ids sent while streaming first, then fresh ones.
    pub call_ids: Vec<String>,
    /// Invokes whose start was streamed.
    pub streamed_calls: usize,
    /// Invokes whose end was streamed.
    pub closed_calls: usize,
    /// A tool-call block was opened but its close tag never came.
    pub unterminated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    BetweenInvokes,
    InInvoke {
        first: bool,
    },
    Value {
        string: bool,
        nested: bool,
        any: bool,
    },
    Nested {
        first: bool,
    },
    AfterNested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ThinkOpen,
    Reasoning,
    Content,
    Block(Syntax, Phase),
    /// The block closed; generation should stop here (§3.4).
    Done,
    /// Unexpected bytes inside a block: nothing more is emitted.
    Broken,
}

/// Streaming projector; see the module docs.
pub struct DsmlProjector {
    opts: ProjectorOptions,
    buf: String,
    pos: usize,
    state: State,
    started: usize,
    closed: usize,
    ids: Vec<String>,
    id_gen: Box<dyn FnMut(usize) -> String + Send>,
}

impl std::fmt::Debug for DsmlProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsmlProjector")
            .field("opts", &self.opts)
            .field("pos", &self.pos)
            .field("state", &self.state)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

enum Step {
    Progress,
    Wait,
}

impl DsmlProjector {
    /// A projector whose tool-call ids are `call_0`, `call_1`, ...
    pub fn new(opts: ProjectorOptions) -> Self {
        Self::with_id_generator(opts, |i| format!("call_{i}"))
    }

    /// `id_gen(i)` names the `i`-th tool call (e.g. `call_` + 32 random hex digits, §3.7).
    pub fn with_id_generator(
        opts: ProjectorOptions,
        id_gen: impl FnMut(usize) -> String + Send + 'static,
    ) -> Self {
        DsmlProjector {
            opts,
            buf: String::new(),
            pos: 0,
            state: if opts.thinking {
                State::ThinkOpen
            } else {
                State::Content
            },
            started: 0,
            closed: 0,
            ids: Vec::new(),
            id_gen: Box::new(id_gen),
        }
    }

    /// The text received so far.
    pub fn text(&self) -> &str {
        &self.buf
    }

    /// The tool-call block has closed: generation should stop (§3.4).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A tool-call block has been opened.
    pub fn in_tool_block(&self) -> bool {
        matches!(self.state, State::Block(..) | State::Done | State::Broken)
    }

    /// Feeds a chunk; returns the events it releases.
    pub fn push(&mut self, chunk: &str) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        self.push_into(chunk, &mut events);
        events
    }

    pub fn push_into(&mut self, chunk: &str, events: &mut Vec<StreamEvent>) {
        self.buf.push_str(chunk);
        self.run(false, events);
    }

    /// Ends the stream: flushes held text and parses the whole generation.
    pub fn finish(mut self) -> StreamOutcome {
        let mut events = Vec::new();
        self.run(true, &mut events);
        let turn = parse_generated(&self.buf, self.opts.thinking);
        let mut call_ids: Vec<String> = self
            .ids
            .iter()
            .take(turn.tool_calls.len())
            .cloned()
            .collect();
        while call_ids.len() < turn.tool_calls.len() {
            call_ids.push((self.id_gen)(call_ids.len()));
        }
        StreamOutcome {
            events,
            turn,
            call_ids,
            streamed_calls: self.started,
            closed_calls: self.closed,
            unterminated: matches!(self.state, State::Block(..)),
        }
    }

    fn run(&mut self, last: bool, ev: &mut Vec<StreamEvent>) {
        while let Step::Progress = self.step(last, ev) {}
    }

    fn args(&self, ev: &mut Vec<StreamEvent>, delta: String) {
        if !delta.is_empty() {
            ev.push(StreamEvent::ToolCallArguments {
                index: self.started - 1,
                delta,
            });
        }
    }

    fn step(&mut self, last: bool, ev: &mut Vec<StreamEvent>) -> Step {
        match self.state {
            State::ThinkOpen => {
                let rest = &self.buf[self.pos..];
                if rest.starts_with(THINK_START) {
                    self.pos += THINK_START.len();
                } else if THINK_START.starts_with(rest) && !last {
                    return Step::Wait;
                }
                self.state = State::Reasoning;
                Step::Progress
            }
            State::Reasoning => {
                let rest = &self.buf[self.pos..];
                if let Some(i) = rest.find(THINK_END) {
                    push_text(ev, StreamEvent::Reasoning, &rest[..i]);
                    self.pos += i + THINK_END.len();
                    self.state = State::Content;
                    return Step::Progress;
                }
                let keep = if last {
                    rest.len()
                } else {
                    partial_tag_start(rest, THINK_END).unwrap_or(rest.len())
                };
                push_text(ev, StreamEvent::Reasoning, &rest[..keep]);
                self.pos += keep;
                Step::Wait
            }
            State::Content => self.step_content(last, ev),
            State::Block(sx, phase) => self.step_block(sx, phase, last, ev),
            State::Done | State::Broken => Step::Wait,
        }
    }

    fn step_content(&mut self, last: bool, ev: &mut Vec<StreamEvent>) -> Step {
        let rest = &self.buf[self.pos..];
        if !self.opts.tools {
            push_text(ev, StreamEvent::Content, rest);
            self.pos = self.buf.len();
            return Step::Wait;
        }
        let open = SYNTAXES
            .iter()
            .filter_map(|sx| rest.find(sx.calls_open).map(|i| (i, *sx)))
            .min_by_key(|(i, _)| *i);
        if let Some((i, sx)) = open {
            push_text(ev, StreamEvent::Content, trim_end_ws(&rest[..i]));
            self.pos += i + sx.calls_open.len();
            self.state = State::Block(sx, Phase::BetweenInvokes);
            return Step::Progress;
        }
        let keep = if last {
            rest.len()
        } else {
            let tag = SYNTAXES
                .iter()
                .filter_map(|sx| partial_tag_start(rest, sx.calls_open))
                .min()
                .unwrap_or(rest.len());
            // The separator before a block is trimmed, so trailing whitespace waits too.
            trim_end_ws(&rest[..tag]).len()
        };
        push_text(ev, StreamEvent::Content, &rest[..keep]);
        self.pos += keep;
        Step::Wait
    }

    fn step_block(
        &mut self,
        sx: Syntax,
        phase: Phase,
        last: bool,
        ev: &mut Vec<StreamEvent>,
    ) -> Step {
        if !matches!(phase, Phase::Value { .. }) {
            self.pos = skip_ws(&self.buf, self.pos);
        }
        let p = self.pos;
        let rest = &self.buf[p..];
        // A proper prefix of one of `tags` may still become it.
        let partial = |tags: &[&str]| !last && tags.iter().any(|t| t.starts_with(rest));
        match phase {
            Phase::BetweenInvokes => {
                if rest.starts_with(sx.calls_close) {
                    self.pos += sx.calls_close.len();
                    self.state = State::Done;
                    return Step::Progress;
                }
                if rest.starts_with(sx.invoke_open) {
                    let Some(gt) = rest.find('>') else {
                        return Step::Wait;
                    };
                    let Some(name) = tag_attr(&rest[..=gt], "name") else {
                        return self.broken();
                    };
                    let index = self.started;
                    let id = (self.id_gen)(index);
                    self.ids.push(id.clone());
                    self.started += 1;
                    ev.push(StreamEvent::ToolCallStart { index, id, name });
                    self.args(ev, "{".into());
                    self.pos += gt + 1;
                    self.state = State::Block(sx, Phase::InInvoke { first: true });
                    return Step::Progress;
                }
                if partial(&[sx.calls_close, sx.invoke_open]) {
                    return Step::Wait;
                }
                self.broken()
            }
            Phase::InInvoke { first } => {
                if rest.starts_with(sx.invoke_close) {
                    self.args(ev, "}".into());
                    ev.push(StreamEvent::ToolCallEnd {
                        index: self.started - 1,
                    });
                    self.closed += 1;
                    self.pos += sx.invoke_close.len();
                    self.state = State::Block(sx, Phase::BetweenInvokes);
                    return Step::Progress;
                }
                if rest.starts_with(sx.param_open) {
                    let Some(gt) = rest.find('>') else {
                        return Step::Wait;
                    };
                    let tag = &rest[..=gt];
                    let Some(name) = tag_attr(tag, "name") else {
                        return self.broken();
                    };
                    let string_attr = tag_attr(tag, "string");
                    let value_start = p + gt + 1;
                    let mut nested = false;
                    if string_attr.is_none() {
                        let v = &self.buf[skip_ws(&self.buf, value_start)..];
                        if v.starts_with(sx.param_open) {
                            nested = true;
                        } else if !last && sx.param_open.starts_with(v) {
                            return Step::Wait;
                        }
                    }
                    let string = string_attr.as_deref().is_none_or(|s| s == "true");
                    let mut d = String::new();
                    if !first {
                        d.push(',');
                    }
                    json_escape_into(&mut d, &name);
                    d.push(':');
                    if nested {
                        d.push('{');
                    } else if string {
                        d.push('"');
                    }
                    self.args(ev, d);
                    self.pos = value_start;
                    self.state = State::Block(
                        sx,
                        if nested {
                            Phase::Nested { first: true }
                        } else {
                            Phase::Value {
                                string,
                                nested: false,
                                any: false,
                            }
                        },
                    );
                    return Step::Progress;
                }
                if partial(&[sx.invoke_close, sx.param_open]) {
                    return Step::Wait;
                }
                self.broken()
            }
            Phase::Value {
                string,
                nested,
                any,
            } => {
                let (piece_end, closed) = match rest.find(sx.param_close) {
                    Some(i) => (i, true),
                    None if last => return Step::Wait,
                    None => {
                        let mut keep =
                            partial_tag_start(rest, sx.param_close).unwrap_or(rest.len());
                        if string {
                            if let Some(e) = partial_entity_start(&rest[..keep]) {
                                keep = e;
                            }
                        }
                        (keep, false)
                    }
                };
                let piece = &rest[..piece_end];
                let mut d = String::new();
                let mut any = any;
                if string {
                    json_escape_fragment_into(&mut d, &unescape_entities(piece));
                } else {
                    d.push_str(piece);
                    any |= piece.bytes().any(|b| !is_c_space(b));
                }
                if closed {
                    if string {
                        d.push('"');
                    } else if !any {
                        // The parser turns an empty value into `null`.
                        d.push_str("null");
                    }
                }
                self.args(ev, d);
                if closed {
                    self.pos += piece_end + sx.param_close.len();
                    self.state = State::Block(
                        sx,
                        if nested {
                            Phase::Nested { first: false }
                        } else {
                            Phase::InInvoke { first: false }
                        },
                    );
                    Step::Progress
                } else {
                    self.pos += piece_end;
                    self.state = State::Block(
                        sx,
                        Phase::Value {
                            string,
                            nested,
                            any,
                        },
                    );
                    Step::Wait
                }
            }
            Phase::Nested { first } => {
                if rest.starts_with(sx.param_open) {
                    let Some(gt) = rest.find('>') else {
                        return Step::Wait;
                    };
                    let tag = &rest[..=gt];
                    let Some(name) = tag_attr(tag, "name") else {
                        return self.broken();
                    };
                    let string = tag_attr(tag, "string")
                        .as_deref()
                        .is_none_or(|s| s == "true");
                    let mut d = String::new();
                    if !first {
                        d.push(',');
                    }
                    json_escape_into(&mut d, &name);
                    d.push(':');
                    if string {
                        d.push('"');
                    }
                    self.args(ev, d);
                    self.pos += gt + 1;
                    self.state = State::Block(
                        sx,
                        Phase::Value {
                            string,
                            nested: true,
                            any: false,
                        },
                    );
                    return Step::Progress;
                }
                if partial(&[sx.param_open]) {
                    return Step::Wait;
                }
                self.args(ev, "}".into());
                self.state = State::Block(sx, Phase::AfterNested);
                Step::Progress
            }
            Phase::AfterNested => {
                if rest.starts_with(sx.param_close) {
                    self.pos += sx.param_close.len();
                } else if partial(&[sx.param_close]) {
                    return Step::Wait;
                }
                self.state = State::Block(sx, Phase::InInvoke { first: false });
                Step::Progress
            }
        }
    }

    fn broken(&mut self) -> Step {
        self.state = State::Broken;
        Step::Wait
    }
}

fn push_text(ev: &mut Vec<StreamEvent>, make: fn(String) -> StreamEvent, s: &str) {
    if !s.is_empty() {
        ev.push(make(s.to_owned()));
    }
}

/// Merges adjacent events of the same kind (for comparing streams split differently).
pub fn coalesce(events: impl IntoIterator<Item = StreamEvent>) -> Vec<StreamEvent> {
    let mut out: Vec<StreamEvent> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (Some(StreamEvent::Reasoning(a)), StreamEvent::Reasoning(b)) => a.push_str(&b),
            (Some(StreamEvent::Content(a)), StreamEvent::Content(b)) => a.push_str(&b),
            (
                Some(StreamEvent::ToolCallArguments { index: i, delta: a }),
                StreamEvent::ToolCallArguments { index: j, delta: b },
            ) if *i == j => a.push_str(&b),
            (_, e) => out.push(e),
        }
    }
    out
}
