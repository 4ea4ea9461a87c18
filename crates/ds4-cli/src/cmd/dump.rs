//! `--dump-tokens` (the rendered prompt's tokens, no inference) and
//! `--dump-logprobs FILE` (a greedy continuation with the top alternatives
//! of every step, as JSON), SERVING.md §4.1–4.2.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use ds4_engine::{
    argmax, generate, top_logprobs, Control, Engine, GenerateOptions, Sampler, SamplingParams,
    Step, TokenSink,
};
use ds4_model::backend::Backend;
use ds4_text::Tokenizer;
use serde::Serialize;

use crate::cmd::chat::{check_fits, context_line, ChatArgs, Conversation, Think};
use crate::cmd::load::{tokenizer_only, with_engine, BackendKind, EngineTask};
use crate::output::emit;

/// The prompt `-p` would send, as tokens.
fn prompt_tokens(args: &ChatArgs, tok: &Tokenizer, text: &str, think: Think) -> Result<Vec<u32>> {
    Ok(Conversation::new(args.system())
        .prompt(tok, text, think)?
        .tokens)
}

/// Prints `[id, id, …]`, then one line per token: the id and its vocabulary
/// string (byte-level mapped form).
pub fn dump_tokens(args: &ChatArgs, text: &str) -> Result<ExitCode> {
    let tok = tokenizer_only(&args.model.model)?;
    let think = args.effective_think();
    let ids = prompt_tokens(args, &tok, text, think)?;
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let mut out = format!("[{}]\n", list.join(", "));
    for &id in &ids {
        out.push_str(&format!("{id:6}  {}\n", tok.id_to_token(id).unwrap_or("")));
    }
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Token bytes as text, each byte that is not part of valid UTF-8 as the
/// character U+00XX (JSON writes it `\u00XX`-equivalent).
fn escaped_text(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        s.push_str(chunk.valid());
        s.extend(chunk.invalid().iter().map(|&b| char::from(b)));
    }
    s
}

/// The JSON document, fields in ds4's order.
#[derive(Serialize)]
struct Doc {
    source: &'static str,
    prompt_tokens: usize,
    ctx: usize,
    top_k: usize,
    steps: Vec<StepJson>,
}

#[derive(Serialize)]
struct StepJson {
    step: usize,
    selected: TokenJson,
    top_logprobs: Vec<Alternative>,
}

#[derive(Serialize)]
struct Alternative {
    token: TokenJson,
    logit: f32,
    logprob: f32,
}

#[derive(Serialize)]
struct TokenJson {
    id: u32,
    text: String,
    bytes: Vec<u8>,
}

fn token_json(tok: &Tokenizer, id: u32) -> TokenJson {
    let bytes = tok.token_bytes(id);
    TokenJson {
        id,
        text: escaped_text(bytes),
        bytes: bytes.to_vec(),
    }
}

/// Greedy choice, recording the top alternatives of every step.
struct Recorder<'t> {
    tok: &'t Tokenizer,
    top_k: usize,
    steps: Vec<StepJson>,
}

impl TokenSink for Recorder<'_> {
    fn choose(&mut self, _sampler: &mut Sampler, logits: &[f32]) -> Option<u32> {
        argmax(logits)
    }

    fn accept(&mut self, token: u32, logits: &[f32]) -> Step {
        let top_logprobs = top_logprobs(logits, self.top_k)
            .into_iter()
            .map(|t| Alternative {
                token: token_json(self.tok, t.token),
                logit: logits[t.token as usize],
                logprob: t.logprob,
            })
            .collect();
        self.steps.push(StepJson {
            step: self.steps.len(),
            selected: token_json(self.tok, token),
            top_logprobs,
        });
        Step::Continue
    }
}

struct DumpLogprobs<'a> {
    args: &'a ChatArgs,
    text: &'a str,
    file: &'a Path,
    think: Think,
}

impl EngineTask for DumpLogprobs<'_> {
    type Output = ExitCode;

    fn run<B: Backend>(
        self,
        engine: Engine<B>,
        tok: Tokenizer,
        _make: &dyn Fn(usize) -> Result<Engine<B>>,
        backend: BackendKind,
    ) -> Result<ExitCode> {
        let prompt = prompt_tokens(self.args, &tok, self.text, self.think)?;
        let ctx = engine.options().ctx;
        check_fits(prompt.len(), ctx)?;
        let mut session = engine.new_session()?;
        eprintln!("{}", context_line(&engine, &session, backend));
        let t0 = Instant::now();
        engine.sync(&mut session, &prompt, Control::default())?;
        let prefill = t0.elapsed().as_secs_f64();
        let top_k = self.args.logprobs_top_k as usize;
        let mut rec = Recorder {
            tok: &tok,
            top_k,
            steps: Vec::new(),
        };
        let opts = GenerateOptions {
            max_tokens: (self.args.tokens as usize).min(ctx - prompt.len() - 1),
            stop_tokens: vec![tok.specials()?.eos],
        };
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let t1 = Instant::now();
        generate(&engine, &mut session, &mut sampler, &opts, None, &mut rec)?;
        let gen = t1.elapsed().as_secs_f64();
        let n_steps = rec.steps.len();
        let doc = Doc {
            source: "ds4",
            prompt_tokens: prompt.len(),
            ctx,
            top_k,
            steps: rec.steps,
        };
        let mut text = serde_json::to_string(&doc)?;
        text.push('\n');
        std::fs::write(self.file, text)
            .with_context(|| format!("cannot write {}", self.file.display()))?;
        eprintln!(
            "ds4: prefill: {:.2} t/s, generation: {:.2} t/s ({} prompt tokens, {n_steps} steps written to {})",
            prompt.len() as f64 / prefill.max(1e-9),
            n_steps as f64 / gen.max(1e-9),
            prompt.len(),
            self.file.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

pub fn dump_logprobs(args: &ChatArgs, text: &str, file: &Path) -> Result<ExitCode> {
    let think = args.effective_think();
    with_engine(
        &args.model,
        args.ctx(),
        DumpLogprobs {
            args,
            text,
            file,
            think,
        },
    )
}
