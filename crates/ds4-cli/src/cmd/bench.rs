//! `ds4 bench`: prefill and decode throughput at context frontiers, as
//! ds4-bench measures them (SERVING.md §7), on any backend; CSV rows with
//! ds4-bench's columns and an optional SVG chart.
//!
//! For each frontier `f`: sync the session to the first `f` prompt tokens
//! (only the interval since the previous frontier is evaluated) and time it;
//! snapshot the session (untimed); decode `gen-tokens` tokens greedily with
//! end-of-sentence excluded, and time it; restore the snapshot (untimed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ds4_engine::{Control, Engine, EngineOptions};
use ds4_model::backend::Backend;
use ds4_text::chat::{render, ChatRequest, Message, RenderOptions, ThinkingMode};
use ds4_text::{EncodeMode, Tokenizer};

use crate::cmd::load::{with_engine_opts, BackendKind, EngineTask, ModelArgs, PrefillBar};
use crate::cmd::svg;

/// ds4-bench's CSV header.
pub const CSV_HEADER: &str =
    "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes";

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Raw text, tokenized plainly (no special tokens) [default: a generated text]
    #[arg(long, value_name = "FILE", conflicts_with = "chat_prompt_file")]
    pub prompt_file: Option<PathBuf>,
    /// Text rendered as one non-thinking chat user message
    #[arg(long, value_name = "FILE")]
    pub chat_prompt_file: Option<PathBuf>,
    /// System prompt for --chat-prompt-file; `-sys` works too
    #[arg(
        long = "system",
        value_name = "TEXT",
        default_value = "You are a helpful assistant."
    )]
    pub system: String,
    /// First frontier (tokens)
    #[arg(long, value_name = "N", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub ctx_start: u64,
    /// Last frontier (the prompt must have at least this many tokens)
    #[arg(long, value_name = "N", default_value_t = 32768, value_parser = clap::value_parser!(u64).range(1..))]
    pub ctx_max: u64,
    /// Linear step between frontiers (with --step-mul 1)
    #[arg(long, value_name = "N", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub step_incr: u64,
    /// Multiplicative step (>= 1): next = ceil(frontier * F)
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub step_mul: f64,
    /// Frontiers as a list (e.g. 512,1024,4096), instead of --ctx-start/--ctx-max/--step-*
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub frontiers: Option<Vec<u64>>,
    /// Allocated context, more than the last frontier + gen-tokens [default: that + 1]
    #[arg(long = "ctx-alloc", alias = "ctx", value_name = "N", value_parser = clap::value_parser!(u64).range(2..=(u32::MAX as u64)))]
    pub ctx_alloc: Option<u64>,
    /// Greedy decode tokens per frontier
    #[arg(short = 'n', long = "gen-tokens", alias = "tokens", value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub gen_tokens: u64,
    /// Tokens per prefill batch
    #[arg(long, value_name = "N", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub prefill_chunk: u64,
    /// Write the CSV there instead of stdout
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also draw prefill and decode tokens/s against context as an SVG chart
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// One CSV row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub ctx_tokens: usize,
    pub prefill_tokens: usize,
    pub prefill_tps: f64,
    pub gen_tokens: usize,
    pub gen_tps: f64,
    pub kvcache_bytes: usize,
}

impl Row {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{:.2},{},{:.2},{}",
            self.ctx_tokens,
            self.prefill_tokens,
            self.prefill_tps,
            self.gen_tokens,
            self.gen_tps,
            self.kvcache_bytes
        )
    }
}

impl BenchArgs {
    /// The frontiers, ascending, each at most `--ctx-max` (or the list's).
    pub fn frontiers(&self) -> Result<Vec<usize>> {
        if let Some(list) = &self.frontiers {
            let v: Vec<usize> = list.iter().map(|&f| f as usize).collect();
            if v.windows(2).any(|w| w[0] >= w[1]) {
                bail!("--frontiers must be strictly increasing, got {list:?}");
            }
            return Ok(v);
        }
        let (start, max) = (self.ctx_start as usize, self.ctx_max as usize);
        if start > max {
            bail!("--ctx-start {start} is above --ctx-max {max}");
        }
        if !(self.step_mul >= 1.0 && self.step_mul.is_finite()) {
            bail!("--step-mul must be a number >= 1, got {}", self.step_mul);
        }
        let mut out = Vec::new();
        let mut f = start;
        loop {
            out.push(f);
            if f >= max {
                break;
            }
            let next = if self.step_mul > 1.0 {
                ((f as f64 * self.step_mul).ceil() as usize).max(f + 1)
            } else {
                f + self.step_incr as usize
            };
            f = next.min(max);
        }
        Ok(out)
    }
}

/// A deterministic English text of at least `n` tokens, for running without
/// a prompt file (the weights of a synthetic model do not care what it says).
fn generated_prompt(tok: &Tokenizer, n: usize) -> Vec<u32> {
    const PARAGRAPH: &str = "The committee met again on a grey morning to review the \
        measurements from the northern stations. Rainfall had been above the seasonal \
        average for three weeks, and the river gauges showed a slow but steady rise. \
        Several members asked whether the old models still held, given the new sensors \
        and the changed course of the lower channel. The engineer in charge explained \
        each correction, compared the figures with last year's, and proposed a plan: \
        more frequent readings, a second pump at the eastern gate, and a public notice \
        if the level crossed the agreed mark. ";
    let per = tok.encode_plain(PARAGRAPH).len().max(1);
    let mut text = String::new();
    let mut i = 0;
    while i * per < n + per {
        text.push_str(&format!("Section {}. {PARAGRAPH}", i + 1));
        i += 1;
    }
    tok.encode_plain(&text)
}

struct Bench {
    args: BenchArgs,
    frontiers: Vec<usize>,
}

impl Bench {
    fn prompt(&self, tok: &Tokenizer) -> Result<Vec<u32>> {
        let read = |f: &PathBuf| -> Result<String> {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        let need = *self.frontiers.last().unwrap_or(&0);
        let tokens = if let Some(f) = &self.args.prompt_file {
            tok.encode_plain(&read(f)?)
        } else if let Some(f) = &self.args.chat_prompt_file {
            let mut messages = Vec::new();
            if !self.args.system.is_empty() {
                messages.push(Message::system(&self.args.system));
            }
            messages.push(Message::user(&read(f)?));
            let req = ChatRequest {
                messages,
                options: RenderOptions {
                    thinking_mode: ThinkingMode::Chat,
                    ..RenderOptions::default()
                },
                ..ChatRequest::default()
            };
            render(&req)
                .map_err(|e| anyhow::anyhow!("rendering the prompt: {e}"))?
                .tokenize(tok, EncodeMode::Ds4)
        } else {
            generated_prompt(tok, need)
        };
        if tokens.len() < need {
            bail!(
                "the prompt has {} tokens; the last frontier needs {need} (use a longer file or a lower --ctx-max)",
                tokens.len()
            );
        }
        Ok(tokens)
    }
}

/// Argmax over every token but `skip`.
fn argmax_except(logits: &[f32], skip: u32) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if i as u32 != skip && l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

impl EngineTask for Bench {
    type Output = ExitCode;

    fn run<B: Backend>(
        self,
        engine: Engine<B>,
        tok: Tokenizer,
        _make: &dyn Fn(usize) -> Result<Engine<B>>,
        backend: BackendKind,
    ) -> Result<ExitCode> {
        let prompt = self.prompt(&tok)?;
        let eos = tok.specials()?.eos;
        let gen_tokens = self.args.gen_tokens as usize;
        let mut out: Box<dyn Write> = match &self.args.csv {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(std::io::stdout()),
        };
        let write_line = |out: &mut Box<dyn Write>, line: &str| -> Result<()> {
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .context("writing the CSV")
        };
        eprintln!(
            "ds4 bench: {} on {}, ctx={}, prompt {} tokens, frontiers {:?}, {gen_tokens} decode tokens each",
            self.args.model.model.display(),
            backend.name(),
            engine.options().ctx,
            prompt.len(),
            self.frontiers
        );
        write_line(&mut out, CSV_HEADER)?;
        let mut session = engine.new_session()?;
        let mut rows = Vec::new();
        let mut prev = 0;
        for &f in &self.frontiers {
            let mut bar = PrefillBar::new(1);
            let mut progress = |p: &ds4_engine::Progress| bar.update(p);
            let t0 = Instant::now();
            engine.sync(
                &mut session,
                &prompt[..f],
                Control {
                    progress: Some(&mut progress),
                    cancel: None,
                },
            )?;
            let prefill_secs = t0.elapsed().as_secs_f64();
            bar.finish();
            let snap = engine.snapshot(&session)?;
            let kvcache_bytes = snap.0.encode(engine.config())?.len();
            let t1 = Instant::now();
            for _ in 0..gen_tokens {
                let t = argmax_except(session.logits(), eos)
                    .context("the model produced no finite logit")?;
                engine.eval(&mut session, &[t])?;
            }
            let gen_secs = t1.elapsed().as_secs_f64();
            engine.restore(&mut session, &snap)?;
            let row = Row {
                ctx_tokens: f,
                prefill_tokens: f - prev,
                prefill_tps: (f - prev) as f64 / prefill_secs.max(1e-9),
                gen_tokens,
                gen_tps: gen_tokens as f64 / gen_secs.max(1e-9),
                kvcache_bytes,
            };
            write_line(&mut out, &row.csv())?;
            if self.args.csv.is_some() {
                eprintln!(
                    "ctx {f}: prefill {} tokens {:.2} t/s, decode {gen_tokens} tokens {:.2} t/s, kv {:.1} MiB",
                    row.prefill_tokens,
                    row.prefill_tps,
                    row.gen_tps,
                    kvcache_bytes as f64 / (1024.0 * 1024.0)
                );
            }
            rows.push(row);
            prev = f;
        }
        if let Some(path) = &self.args.svg {
            let title = format!(
                "ds4 bench: {} ({}, {} decode tokens per frontier)",
                self.args
                    .model
                    .model
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                backend.name(),
                gen_tokens
            );
            std::fs::write(path, svg::chart(&rows, &title))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let frontiers = args.frontiers()?;
    let last = *frontiers.last().context("no frontiers")?;
    let need = last + args.gen_tokens as usize;
    let ctx = match args.ctx_alloc {
        Some(c) if (c as usize) <= need => bail!(
            "--ctx-alloc {c} must be above the last frontier + gen-tokens ({last} + {} = {need})",
            args.gen_tokens
        ),
        Some(c) => c as usize,
        None => need + 1,
    };
    let opts = EngineOptions {
        ctx,
        prefill_chunk: args.prefill_chunk as usize,
        // No rewind points: the timed prefill is the forward pass alone.
        checkpoint_interval: 0,
        max_rewind_points: 0,
    };
    let model = args.model.clone();
    with_engine_opts(&model, opts, Bench { args, frontiers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        b: BenchArgs,
    }

    fn frontiers(args: &[&str]) -> Result<Vec<usize>> {
        let mut v = vec!["bench"];
        v.extend_from_slice(args);
        T::try_parse_from(v)?.b.frontiers()
    }

    #[test]
    fn frontier_schedules() {
        assert_eq!(
            frontiers(&["--ctx-start", "2048", "--ctx-max", "8192"]).unwrap(),
            vec![2048, 4096, 6144, 8192]
        );
        assert_eq!(
            frontiers(&[
                "--ctx-start",
                "1000",
                "--ctx-max",
                "5000",
                "--step-incr",
                "3000"
            ])
            .unwrap(),
            vec![1000, 4000, 5000]
        );
        assert_eq!(
            frontiers(&["--ctx-start", "100", "--ctx-max", "400", "--step-mul", "2"]).unwrap(),
            vec![100, 200, 400]
        );
        assert_eq!(
            frontiers(&["--ctx-start", "1", "--ctx-max", "3", "--step-mul", "1.1"]).unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(
            frontiers(&["--frontiers", "16,32,64"]).unwrap(),
            vec![16, 32, 64]
        );
        assert!(frontiers(&["--frontiers", "32,16"]).is_err());
        assert!(frontiers(&["--ctx-start", "10", "--ctx-max", "5"]).is_err());
        assert!(frontiers(&["--step-mul", "0.5"]).is_err());
    }

    #[test]
    fn rows_format_like_ds4_bench() {
        let r = Row {
            ctx_tokens: 2048,
            prefill_tokens: 2048,
            prefill_tps: 312.549,
            gen_tokens: 128,
            gen_tps: 27.1,
            kvcache_bytes: 123456789,
        };
        assert_eq!(r.csv(), "2048,2048,312.55,128,27.10,123456789");
        assert_eq!(argmax_except(&[1.0, 5.0, 3.0], 1), Some(2));
    }
}
