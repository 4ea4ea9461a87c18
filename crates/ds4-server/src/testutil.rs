//! Test helpers: the real DeepSeek V4 tokenizer, generated turns driven
//! token by token through a [`TurnSink`] (no model), SSE rendering.

use std::sync::mpsc::sync_channel;
use std::sync::{Arc, OnceLock};

use ds4_engine::{EngineError, Finish, Generated, Step, TokenSink};
use ds4_text::{EncodeMode, Tokenizer};
use tokio::sync::mpsc::unbounded_channel;

use crate::job::{Cancel, Event, Job, TurnResult, Usage};
use crate::options::ServerOptions;
use crate::sse::StreamFormat;
use crate::state::Shared;
use crate::turn::{TurnOptions, TurnSink};

fn tokenizer_arc() -> &'static Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        Arc::new(
            Tokenizer::from_tokenizer_json(ds4_model::synth::TOKENIZER_JSON)
                .expect("tokenizer.json"),
        )
    })
}

pub fn tokenizer() -> &'static Tokenizer {
    tokenizer_arc()
}

/// How a scripted turn is run.
pub struct Turn<'a> {
    pub text: &'a str,
    pub thinking: bool,
    pub tools: bool,
    pub parse: bool,
    pub stops: Vec<String>,
    pub prefix: &'static str,
    /// End with end-of-sentence (else: the token budget ran out).
    pub eos: bool,
    pub usage: Usage,
}

impl<'a> Turn<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            thinking: false,
            tools: false,
            parse: true,
            stops: Vec::new(),
            prefix: "call_",
            eos: true,
            usage: Usage {
                prompt: 10,
                cached: 7,
                completion: 2,
            },
        }
    }
}

/// Feeds the text's tokens through a sink as the generation loop would and
/// returns the events (ending with `Done`) and the result.
pub fn run_turn(t: &Turn<'_>) -> (Vec<Event>, TurnResult) {
    let tok = tokenizer();
    let eos = tok.specials().expect("specials").eos;
    let (tx, mut rx) = unbounded_channel();
    let cancel = Cancel::new();
    let shutdown = std::sync::atomic::AtomicBool::new(false);
    let mut sink = TurnSink::new(TurnOptions {
        tok,
        eos,
        thinking: t.thinking,
        tools: t.tools,
        parse: t.parse,
        stops: t.stops.clone(),
        id_prefix: t.prefix,
        events: &tx,
        cancel: &cancel,
        shutdown: &shutdown,
    });
    let mut tokens = Vec::new();
    let mut finish = if t.eos {
        Finish::StopToken(eos)
    } else {
        Finish::Length
    };
    for id in tok.encode_with(t.text, EncodeMode::Hf) {
        if sink.accept(id, &[]) == Step::Stop {
            finish = Finish::Sink;
            break;
        }
        tokens.push(id);
    }
    let generated: Result<Generated, EngineError> = Ok(Generated { tokens, finish });
    let result = sink.finish(&generated, t.usage);
    let mut events = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    events.push(Event::Done(Box::new(result.clone())));
    (events, result)
}

/// The SSE text a format produces for these events (after `Started`).
pub fn sse(mut fmt: impl StreamFormat, usage: Usage, events: Vec<Event>) -> String {
    let mut out = String::new();
    fmt.event(Event::Started(usage), &mut out);
    for ev in events {
        fmt.event(ev, &mut out);
    }
    out
}

/// The `data:` payloads of an SSE text, parsed.
pub fn data_lines(sse: &str) -> Vec<serde_json::Value> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect()
}

/// Shared state without an engine (a queue nobody reads).
pub fn shared(opts: ServerOptions, ctx: usize) -> (Arc<Shared>, std::sync::mpsc::Receiver<Job>) {
    let tok = Arc::clone(tokenizer_arc());
    let specials = tok.specials().expect("specials");
    let (tx, rx) = sync_channel(4);
    let memory = Arc::new(std::sync::Mutex::new(crate::toolmem::ToolMemory::new(
        opts.tool_memory_max_ids,
    )));
    (
        Arc::new(Shared::new(opts, ctx, tok, specials, tx, memory)),
        rx,
    )
}
