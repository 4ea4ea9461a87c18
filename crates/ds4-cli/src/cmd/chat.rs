//! `ds4 -p TEXT` (one-shot) and the conversation machinery the REPL shares:
//! the flags of SERVING.md §4.1, the token transcript of a conversation
//! (rendered with `ds4_text::chat::render`, tokenized with the anti-injection
//! segment encoding), and one streamed turn (reasoning dimmed, answer plain,
//! split at `</think>`) with its stats line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ds4_engine::{
    generate, Control, Engine, EngineError, Finish, GenerateOptions, Sampler, SamplingParams,
    Session, Step, TokenSink,
};
use ds4_model::backend::Backend;
use ds4_text::chat::{
    render, ChatRequest, Message, RenderOptions, ThinkingMode, MAX_EFFORT_MIN_CONTEXT,
    MAX_EFFORT_PREFIX,
};
use ds4_text::{Detokenizer, EncodeMode, SpecialIds, Tokenizer};

use crate::cmd::load::{with_engine, BackendKind, EngineTask, ModelArgs, PrefillBar};

/// The default system prompt (ds4's).
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant";

/// Flags of `ds4` without a subcommand (SERVING.md §4.1).
#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One-shot prompt (without -p or --prompt-file: interactive chat)
    #[arg(
        short = 'p',
        long = "prompt",
        value_name = "TEXT",
        conflicts_with = "prompt_file"
    )]
    pub prompt: Option<String>,
    /// One-shot prompt read from a file (the whole file)
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// System prompt ("" for none); `-sys` works too
    #[arg(long = "system", value_name = "TEXT", default_value = DEFAULT_SYSTEM)]
    pub system: String,
    /// Thinking: reasoning before the answer (the default)
    #[arg(long, conflicts_with_all = ["think_max", "nothink"])]
    pub think: bool,
    /// Maximum-effort thinking (needs --ctx >= 393216, else normal thinking)
    #[arg(long, conflicts_with = "nothink")]
    pub think_max: bool,
    /// No thinking: answer directly
    #[arg(long)]
    pub nothink: bool,
    /// Most tokens to generate per answer (clamped to the room left in the context)
    #[arg(short = 'n', long = "tokens", value_name = "N", default_value_t = 50000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens: u64,
    /// Context size (tokens)
    #[arg(short = 'c', long = "ctx", value_name = "N", default_value_t = 32768,
          value_parser = clap::value_parser!(u64).range(2..=(u32::MAX as u64)))]
    pub ctx: u64,
    /// Temperature, 0-100 (0: greedy)
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = float_in(0.0, 100.0))]
    pub temp: f32,
    /// Nucleus sampling mass, 0-1
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = float_in(0.0, 1.0))]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the top token, 0-1
    #[arg(long, value_name = "F", default_value_t = 0.05, value_parser = float_in(0.0, 1.0))]
    pub min_p: f32,
    /// Random seed, > 0 [default: from the clock]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub seed: Option<u64>,
    /// Tokenize the rendered chat prompt of -p/--prompt-file and exit (no inference)
    #[arg(long)]
    pub dump_tokens: bool,
    /// Greedy continuation of the prompt with the top alternatives of every step, as JSON
    #[arg(long, value_name = "FILE")]
    pub dump_logprobs: Option<PathBuf>,
    /// Alternatives per step for --dump-logprobs (1-128)
    #[arg(long, value_name = "K", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=128))]
    pub logprobs_top_k: u32,
    /// Load the model, print a summary and exit
    #[arg(long)]
    pub inspect: bool,
}

fn float_in(lo: f32, hi: f32) -> impl Fn(&str) -> std::result::Result<f32, String> + Clone {
    move |s: &str| {
        let v: f32 = s.trim().parse().map_err(|_| format!("not a number: {s}"))?;
        if !(lo..=hi).contains(&v) {
            return Err(format!("must be between {lo} and {hi}"));
        }
        Ok(v)
    }
}

/// Thinking mode of a turn (SERVING.md §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Think {
    None,
    High,
    Max,
}

impl Think {
    /// Max only where the context allows it (ds4's rule), else High.
    pub fn effective(self, ctx: usize) -> Think {
        if self == Think::Max && ctx < MAX_EFFORT_MIN_CONTEXT {
            Think::High
        } else {
            self
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Think::None => "none",
            Think::High => "high",
            Think::Max => "max",
        }
    }
}

impl ChatArgs {
    pub fn think(&self) -> Think {
        if self.nothink {
            Think::None
        } else if self.think_max {
            Think::Max
        } else {
            Think::High
        }
    }

    pub fn ctx(&self) -> usize {
        self.ctx as usize
    }

    /// The think mode after the context rule, with ds4's warning.
    pub fn effective_think(&self) -> Think {
        let think = self.think();
        let eff = think.effective(self.ctx());
        if eff != think {
            eprintln!(
                "ds4: warning: --think-max needs --ctx >= {MAX_EFFORT_MIN_CONTEXT}; ctx={} uses normal thinking instead",
                self.ctx
            );
        }
        eff
    }

    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temp,
            top_k: 0,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed.unwrap_or(0),
        }
    }

    pub fn system(&self) -> Option<String> {
        Some(self.system.clone()).filter(|s| !s.is_empty())
    }

    /// The one-shot prompt text, if any.
    pub fn prompt_text(&self) -> Result<Option<String>> {
        if let Some(p) = &self.prompt {
            return Ok(Some(p.clone()));
        }
        match &self.prompt_file {
            None => Ok(None),
            Some(f) => {
                let bytes =
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
        }
    }
}

/// A conversation as the model sees it: the token transcript, kept exactly
/// as evaluated (so the live KV state stays a prefix of it), plus the
/// messages for rendering the next turn.
pub struct Conversation {
    system: Option<String>,
    /// Messages so far (system, then user/assistant pairs), the renderer's context.
    history: Vec<Message>,
    /// Every token of the conversation; each finished answer ends with EOS.
    pub transcript: Vec<u32>,
    /// Whether the max-effort prefix sits right after BOS.
    max_prefix: bool,
}

/// What the model is asked to continue.
pub struct TurnPrompt {
    pub tokens: Vec<u32>,
    user: String,
    think: Think,
}

impl Conversation {
    pub fn new(system: Option<String>) -> Self {
        Self {
            system,
            history: Vec::new(),
            transcript: Vec::new(),
            max_prefix: false,
        }
    }

    /// The prompt of the next turn: the transcript, then the user message
    /// and the assistant's opening as the official encoder renders them.
    pub fn prompt(&self, tok: &Tokenizer, user: &str, think: Think) -> Result<TurnPrompt> {
        let first = self.transcript.is_empty();
        let mut messages = Vec::new();
        if first {
            if let Some(s) = &self.system {
                messages.push(Message::system(s));
            }
        }
        messages.push(Message::user(user));
        let req = ChatRequest {
            messages,
            tools: None,
            context: if first {
                Vec::new()
            } else {
                self.history.clone()
            },
            options: RenderOptions {
                thinking_mode: if think == Think::None {
                    ThinkingMode::Chat
                } else {
                    ThinkingMode::Thinking
                },
                // The max prefix is placed by `set_max_prefix`, so that
                // switching modes later inserts or removes exactly it.
                reasoning_effort: None,
                ..RenderOptions::default()
            },
        };
        let rendered = render(&req).map_err(|e| anyhow::anyhow!("rendering the prompt: {e}"))?;
        let mut tokens = self.transcript.clone();
        tokens.extend(rendered.tokenize(tok, EncodeMode::Ds4));
        if first && think == Think::Max {
            insert_prefix(&mut tokens, tok);
        }
        Ok(TurnPrompt {
            tokens,
            user: user.to_string(),
            think,
        })
    }

    /// Records a finished (or interrupted, with at least one token) turn.
    pub fn commit(&mut self, prompt: TurnPrompt, generated: &[u32], eos: u32, reply: &Reply) {
        if self.transcript.is_empty() {
            if let Some(s) = &self.system {
                self.history.push(Message::system(s));
            }
            self.max_prefix = prompt.think == Think::Max;
        }
        self.history.push(Message::user(&prompt.user));
        let mut answer = Message::assistant(&reply.answer);
        if !reply.reasoning.is_empty() {
            answer.reasoning_content = Some(reply.reasoning.clone());
        }
        self.history.push(answer);
        self.transcript = prompt.tokens;
        self.transcript.extend_from_slice(generated);
        self.transcript.push(eos);
    }

    /// Inserts or removes the max-effort prefix after BOS (the live session
    /// then no longer matches beyond BOS: the next turn re-prefills).
    pub fn set_max_prefix(&mut self, on: bool, tok: &Tokenizer) {
        if self.transcript.is_empty() || on == self.max_prefix {
            return;
        }
        if on {
            insert_prefix(&mut self.transcript, tok);
        } else {
            let n = tok.encode_plain(MAX_EFFORT_PREFIX).len();
            if self.transcript.len() > n {
                self.transcript.drain(1..1 + n);
            }
        }
        self.max_prefix = on;
    }
}

fn insert_prefix(tokens: &mut Vec<u32>, tok: &Tokenizer) {
    let prefix = tok.encode_plain(MAX_EFFORT_PREFIX);
    let at = 1.min(tokens.len());
    tokens.splice(at..at, prefix);
}

/// The text of an answer, split at `</think>`.
#[derive(Default, Debug, Clone)]
pub struct Reply {
    pub reasoning: String,
    pub answer: String,
}

const GREY: &str = "\x1b[90m";
const RESET: &str = "\x1b[0m";

/// Streams a turn's text to stdout: reasoning (grey on a terminal), then a
/// forced newline at `</think>`, then the answer.
struct StreamSink<'t> {
    detok: Detokenizer<'t>,
    specials: SpecialIds,
    reasoning: bool,
    color: bool,
    reply: Reply,
    /// Whether the last byte printed was a newline (or nothing printed).
    at_line_start: bool,
    closed: bool,
}

impl<'t> StreamSink<'t> {
    fn new(tok: &'t Tokenizer, specials: SpecialIds, reasoning: bool) -> Self {
        Self {
            detok: tok.detokenizer(),
            specials,
            reasoning,
            color: std::io::stdout().is_terminal(),
            reply: Reply::default(),
            at_line_start: true,
            closed: false,
        }
    }

    fn print(&mut self, text: &str) {
        if text.is_empty() || self.closed {
            return;
        }
        let mut out = std::io::stdout().lock();
        let colored = self.reasoning && self.color;
        let r = (|| {
            if colored {
                out.write_all(GREY.as_bytes())?;
            }
            out.write_all(text.as_bytes())?;
            if colored {
                out.write_all(RESET.as_bytes())?;
            }
            out.flush()
        })();
        if r.is_err() {
            // The reader went away (`ds4 -p … | head`): stop generating.
            self.closed = true;
        }
        self.at_line_start = text.ends_with('\n');
        if self.reasoning {
            self.reply.reasoning.push_str(text);
        } else {
            self.reply.answer.push_str(text);
        }
    }

    fn flush_pending(&mut self) {
        let rest = self.detok.finish();
        self.print(&rest);
    }

    /// Ends the output with a newline.
    fn finish(&mut self) {
        self.flush_pending();
        if !self.at_line_start {
            self.print_raw("\n");
        }
    }

    fn print_raw(&mut self, text: &str) {
        if self.closed {
            return;
        }
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            self.closed = true;
        }
        self.at_line_start = text.ends_with('\n');
    }
}

impl TokenSink for StreamSink<'_> {
    fn accept(&mut self, token: u32, _logits: &[f32]) -> Step {
        let s = self.specials;
        if token == s.eos {
            return Step::Continue;
        }
        if token == s.think_end && self.reasoning {
            self.flush_pending();
            if !self.at_line_start {
                self.print_raw("\n");
            }
            self.reasoning = false;
        } else if token != s.think_start {
            let text = self.detok.push(token);
            self.print(&text);
        }
        if self.closed {
            Step::Stop
        } else {
            Step::Continue
        }
    }
}

/// How one turn went.
pub struct TurnStats {
    pub prompt_tokens: usize,
    pub reused: usize,
    pub evaluated: usize,
    pub prefill_secs: f64,
    pub generated: Vec<u32>,
    pub gen_secs: f64,
    /// `None`: interrupted during the prefill.
    pub finish: Option<Finish>,
    pub reply: Reply,
}

impl TurnStats {
    /// ds4's stats line, with the token counts that show KV reuse.
    pub fn line(&self) -> String {
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let end = match self.finish {
            None => ", interrupted during prefill",
            Some(Finish::Cancelled) => ", interrupted",
            Some(Finish::Length) => ", token limit",
            Some(Finish::ContextFull) => ", context full",
            _ => "",
        };
        format!(
            "ds4: prefill: {:.2} t/s, generation: {:.2} t/s \
             (prompt {} tokens: {} reused, {} evaluated; generated {}{end})",
            rate(self.evaluated, self.prefill_secs),
            rate(self.generated.len(), self.gen_secs),
            self.prompt_tokens,
            self.reused,
            self.evaluated,
            self.generated.len(),
        )
    }
}

/// What to ask of one turn.
pub struct Turn<'a> {
    pub prompt: &'a [u32],
    /// The prompt opened `<think>`: output starts as reasoning.
    pub thinking: bool,
    pub max_tokens: usize,
    pub cancel: Option<&'a AtomicBool>,
}

/// Prefills the prompt (reusing what the session holds) and streams the answer.
pub fn run_turn<B: Backend>(
    engine: &Engine<B>,
    session: &mut Session<B>,
    tok: &Tokenizer,
    sampler: &mut Sampler,
    turn: Turn<'_>,
) -> Result<TurnStats> {
    let Turn {
        prompt,
        thinking,
        max_tokens,
        cancel,
    } = turn;
    let specials = tok.specials()?;
    let ctx = engine.options().ctx;
    check_fits(prompt.len(), ctx)?;
    let mut bar = PrefillBar::new(engine.options().prefill_chunk);
    let mut progress = |p: &ds4_engine::Progress| bar.update(p);
    let t0 = Instant::now();
    let sync = engine.sync(
        session,
        prompt,
        Control {
            progress: Some(&mut progress),
            cancel,
        },
    );
    bar.finish();
    let prefill_secs = t0.elapsed().as_secs_f64();
    let report = match sync {
        Ok(r) => r,
        Err(EngineError::Cancelled { evaluated, .. }) => {
            return Ok(TurnStats {
                prompt_tokens: prompt.len(),
                reused: 0,
                evaluated,
                prefill_secs,
                generated: Vec::new(),
                gen_secs: 0.0,
                finish: None,
                reply: Reply::default(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let room = ctx - prompt.len() - 1;
    let opts = GenerateOptions {
        max_tokens: max_tokens.min(room),
        stop_tokens: vec![specials.eos],
    };
    let mut sink = StreamSink::new(tok, specials, thinking);
    let t1 = Instant::now();
    let gen = generate(engine, session, sampler, &opts, cancel, &mut sink);
    let gen_secs = t1.elapsed().as_secs_f64();
    sink.finish();
    let gen = gen?;
    Ok(TurnStats {
        prompt_tokens: prompt.len(),
        reused: report.reused,
        evaluated: report.evaluated,
        prefill_secs,
        generated: gen.tokens,
        gen_secs,
        finish: Some(gen.finish),
        reply: sink.reply,
    })
}

/// A prompt needs room for itself and one generated token.
pub fn check_fits(prompt: usize, ctx: usize) -> Result<()> {
    if prompt >= ctx {
        bail!(
            "the prompt has {prompt} tokens and does not fit the context (ctx={ctx}; raise --ctx)"
        );
    }
    Ok(())
}

/// The `ds4: context buffers …` line.
pub fn context_line<B: Backend>(
    engine: &Engine<B>,
    session: &Session<B>,
    backend: BackendKind,
) -> String {
    format!(
        "ds4: context buffers {:.1} MiB (ctx={}, backend={}, prefill_chunk={})",
        engine.session_bytes(session) as f64 / (1024.0 * 1024.0),
        engine.options().ctx,
        backend.name(),
        engine.options().prefill_chunk
    )
}

/// `ds4 -p TEXT`: one answer, streamed; stats on stderr.
struct OneShot {
    args: ChatArgs,
    user: String,
    think: Think,
}

impl EngineTask for OneShot {
    type Output = ExitCode;

    fn run<B: Backend>(
        self,
        engine: Engine<B>,
        tok: Tokenizer,
        _make: &dyn Fn(usize) -> Result<Engine<B>>,
        backend: BackendKind,
    ) -> Result<ExitCode> {
        let conv = Conversation::new(self.args.system());
        let prompt = conv.prompt(&tok, &self.user, self.think)?;
        check_fits(prompt.tokens.len(), engine.options().ctx)?;
        let mut session = engine.new_session()?;
        eprintln!("{}", context_line(&engine, &session, backend));
        let mut sampler = Sampler::new(self.args.sampling());
        let stats = run_turn(
            &engine,
            &mut session,
            &tok,
            &mut sampler,
            Turn {
                prompt: &prompt.tokens,
                thinking: self.think != Think::None,
                max_tokens: self.args.tokens as usize,
                cancel: None,
            },
        )?;
        eprintln!("{}", stats.line());
        Ok(ExitCode::SUCCESS)
    }
}

/// `ds4` without a subcommand: one-shot, dumps, or the REPL.
pub fn run(args: ChatArgs) -> Result<ExitCode> {
    if args.inspect || !args.model.model.exists() {
        // The model report, or what is missing and how to get a model.
        return crate::cmd::run::default(&args.model.model);
    }
    let prompt = args.prompt_text()?;
    if args.dump_tokens {
        let Some(text) = prompt else {
            eprintln!("ds4: --dump-tokens needs -p or --prompt-file");
            return Ok(ExitCode::from(2));
        };
        return crate::cmd::dump::dump_tokens(&args, &text);
    }
    if let Some(file) = &args.dump_logprobs {
        let Some(text) = prompt else {
            eprintln!("ds4: --dump-logprobs needs -p or --prompt-file");
            return Ok(ExitCode::from(2));
        };
        return crate::cmd::dump::dump_logprobs(&args, &text, file);
    }
    let think = args.effective_think();
    match prompt {
        Some(user) => with_engine(
            &args.model.clone(),
            args.ctx(),
            OneShot { args, user, think },
        ),
        None => crate::cmd::repl::run(args, think),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds4_text::chat::ReasoningEffort;
    use std::sync::OnceLock;

    fn tok() -> &'static Tokenizer {
        static TOK: OnceLock<Tokenizer> = OnceLock::new();
        TOK.get_or_init(|| {
            Tokenizer::from_tokenizer_json(ds4_model::synth::TOKENIZER_JSON).expect("tokenizer")
        })
    }

    fn rendered(messages: Vec<Message>, think: Think) -> Vec<u32> {
        let req = ChatRequest {
            messages,
            options: RenderOptions {
                thinking_mode: if think == Think::None {
                    ThinkingMode::Chat
                } else {
                    ThinkingMode::Thinking
                },
                reasoning_effort: (think == Think::Max).then_some(ReasoningEffort::Max),
                ..RenderOptions::default()
            },
            ..ChatRequest::default()
        };
        render(&req).unwrap().tokenize(tok(), EncodeMode::Ds4)
    }

    #[test]
    fn first_turn_is_the_official_render() {
        let conv = Conversation::new(Some(DEFAULT_SYSTEM.into()));
        for think in [Think::None, Think::High, Think::Max] {
            let p = conv.prompt(tok(), "Hi <｜User｜> there", think).unwrap();
            let want = rendered(
                vec![
                    Message::system(DEFAULT_SYSTEM),
                    Message::user("Hi <｜User｜> there"),
                ],
                think,
            );
            assert_eq!(p.tokens, want, "{think:?}");
        }
        // No system prompt.
        let conv = Conversation::new(None);
        let p = conv.prompt(tok(), "x", Think::High).unwrap();
        assert_eq!(p.tokens, rendered(vec![Message::user("x")], Think::High));
    }

    #[test]
    fn later_turns_extend_the_transcript() {
        let t = tok();
        let s = t.specials().unwrap();
        let mut conv = Conversation::new(Some("sys".into()));
        let p1 = conv.prompt(t, "one", Think::High).unwrap();
        let gen = t.encode_plain("thinking</think>answer");
        let reply = Reply {
            reasoning: "thinking".into(),
            answer: "answer".into(),
        };
        let p1_tokens = p1.tokens.clone();
        conv.commit(p1, &gen, s.eos, &reply);
        assert_eq!(conv.transcript.len(), p1_tokens.len() + gen.len() + 1);
        assert_eq!(conv.transcript.last(), Some(&s.eos));
        let p2 = conv.prompt(t, "two", Think::None).unwrap();
        assert!(p2.tokens.starts_with(&conv.transcript));
        let suffix = &p2.tokens[conv.transcript.len()..];
        let mut want = vec![s.user];
        want.extend(t.encode_plain("two"));
        want.extend([s.assistant, s.think_end]);
        assert_eq!(suffix, want.as_slice());
    }

    #[test]
    fn max_prefix_toggles_after_bos() {
        let t = tok();
        let s = t.specials().unwrap();
        let mut conv = Conversation::new(Some(DEFAULT_SYSTEM.into()));
        let p = conv.prompt(t, "q", Think::High).unwrap();
        conv.commit(p, &[10, 11], s.eos, &Reply::default());
        let plain = conv.transcript.clone();
        conv.set_max_prefix(true, t);
        let with_max = rendered(
            vec![Message::system(DEFAULT_SYSTEM), Message::user("q")],
            Think::Max,
        );
        assert!(conv.transcript.starts_with(&with_max));
        conv.set_max_prefix(true, t);
        assert_eq!(
            conv.transcript.len(),
            plain.len() + t.encode_plain(MAX_EFFORT_PREFIX).len()
        );
        conv.set_max_prefix(false, t);
        assert_eq!(conv.transcript, plain);
    }

    #[test]
    fn think_max_needs_a_large_context() {
        assert_eq!(Think::Max.effective(32768), Think::High);
        assert_eq!(Think::Max.effective(MAX_EFFORT_MIN_CONTEXT), Think::Max);
        assert_eq!(Think::None.effective(10), Think::None);
    }
}
