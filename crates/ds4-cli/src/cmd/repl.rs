//! The interactive chat (SERVING.md §4.3): a rustyline prompt `ds4> ` with
//! history in `~/.ds4_history`, slash commands, and turns that reuse the
//! live KV state (only the new user message is prefilled). Ctrl+C during a
//! generation stops it and returns to the prompt; the conversation stays.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use ds4_engine::{Engine, Sampler};
use ds4_model::backend::Backend;
use ds4_text::chat::MAX_EFFORT_MIN_CONTEXT;
use ds4_text::Tokenizer;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Config, Editor};

use crate::cmd::chat::{context_line, run_turn, ChatArgs, Conversation, Think, Turn};
use crate::cmd::load::{with_engine, BackendKind, EngineTask};

/// Raised by Ctrl+C (SIGINT) while a turn runs; the prompt itself reads
/// Ctrl+C as a key.
static CANCEL: AtomicBool = AtomicBool::new(false);

const HELP: &str = "\
ds4 chat: type a message and press Enter. Commands:
  /help          this help
  /think         thinking: reasoning before the answer (default)
  /think-max     maximum-effort thinking (needs a context of at least 393216)
  /nothink       answer without thinking
  /ctx N         switch to a context of N tokens (the conversation is kept)
  /tokens N      generate at most N tokens per answer
  /read FILE     send the content of FILE as the next message
  /quit, /exit   leave (Ctrl+D too)
Ctrl+C stops a generation and keeps the conversation.";

const HISTORY_SIZE: usize = 512;

/// Makes SIGINT (Ctrl+C while a turn runs; the editor reads Ctrl+C as a key)
/// raise [`CANCEL`] instead of ending the process.
#[cfg(unix)]
fn on_sigint_cancel() -> std::io::Result<()> {
    extern "C" fn handler(_: libc::c_int) {
        // An atomic store is async-signal-safe.
        CANCEL.store(true, Ordering::SeqCst);
    }
    // SAFETY: a zeroed `sigaction` is a valid value; the handler only
    // touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn on_sigint_cancel() -> std::io::Result<()> {
    Err(std::io::Error::other("not supported on this platform"))
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ds4_history"))
}

pub fn run(args: ChatArgs, think: Think) -> Result<ExitCode> {
    let model = args.model.clone();
    let ctx = args.ctx();
    with_engine(&model, ctx, Repl { args, think })
}

struct Repl {
    args: ChatArgs,
    think: Think,
}

/// What a line asks for.
enum Line {
    Turn(String),
    Command(String, String),
}

fn parse_line(line: &str) -> Option<Line> {
    let t = line.trim();
    if t.is_empty() {
        return None;
    }
    if let Some(cmd) = t.strip_prefix('/') {
        let (name, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        return Some(Line::Command(name.to_string(), arg.trim().to_string()));
    }
    Some(Line::Turn(line.to_string()))
}

/// The state of a chat: engine, live session, conversation and settings.
struct Chat<'m, B: Backend> {
    engine: Engine<B>,
    session: ds4_engine::Session<B>,
    tok: Tokenizer,
    make: &'m dyn Fn(usize) -> Result<Engine<B>>,
    backend: BackendKind,
    conv: Conversation,
    think: Think,
    sampler: Sampler,
    max_tokens: usize,
}

impl<B: Backend> Chat<'_, B> {
    fn ctx(&self) -> usize {
        self.engine.options().ctx
    }

    fn set_think(&mut self, want: Think) {
        let eff = want.effective(self.ctx());
        self.think = eff;
        self.conv.set_max_prefix(eff == Think::Max, &self.tok);
        match (want, eff) {
            (Think::Max, Think::High) => {
                println!("Thinking mode: high (ctx below {MAX_EFFORT_MIN_CONTEXT}).")
            }
            _ => println!("Thinking mode: {}.", eff.name()),
        }
    }

    /// A new engine with another context; the transcript stays, so the next
    /// turn prefills it again.
    fn set_ctx(&mut self, arg: &str) -> Result<()> {
        let n: usize = match arg.parse() {
            Ok(n) if (2..=u32::MAX as usize).contains(&n) => n,
            _ => {
                eprintln!("ds4: /ctx needs a number of tokens (at least 2), got '{arg}'");
                return Ok(());
            }
        };
        let old = self.ctx();
        // The old engine goes first: on a GPU both may not fit.
        let placeholder = self.engine.new_session()?;
        drop(std::mem::replace(&mut self.session, placeholder));
        let fresh = match (self.make)(n) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: cannot switch to ctx={n}: {e:#}; keeping ctx={old}");
                self.session = self.engine.new_session()?;
                return Ok(());
            }
        };
        self.engine = fresh;
        self.session = self.engine.new_session()?;
        eprintln!(
            "{}",
            context_line(&self.engine, &self.session, self.backend)
        );
        if self.think == Think::Max && n < MAX_EFFORT_MIN_CONTEXT {
            self.set_think(Think::Max);
        }
        Ok(())
    }

    /// One user turn. Errors are printed and the conversation stays as it was.
    fn turn(&mut self, user: &str) {
        CANCEL.store(false, Ordering::SeqCst);
        let prompt = match self.conv.prompt(&self.tok, user, self.think) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                return;
            }
        };
        let stats = run_turn(
            &self.engine,
            &mut self.session,
            &self.tok,
            &mut self.sampler,
            Turn {
                prompt: &prompt.tokens,
                thinking: self.think != Think::None,
                max_tokens: self.max_tokens,
                cancel: Some(&CANCEL),
            },
        );
        CANCEL.store(false, Ordering::SeqCst);
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                // The turn is rolled back; the session holds a prefix of
                // the transcript or less, which the next sync handles.
                eprintln!("error: {e:#}");
                return;
            }
        };
        if !stats.generated.is_empty() {
            let eos = self.tok.specials().map_or(1, |s| s.eos);
            self.conv
                .commit(prompt, &stats.generated, eos, &stats.reply);
        }
        eprintln!("{}", stats.line());
    }
}

impl EngineTask for Repl {
    type Output = ExitCode;

    fn run<B: Backend>(
        self,
        engine: Engine<B>,
        tok: Tokenizer,
        make: &dyn Fn(usize) -> Result<Engine<B>>,
        backend: BackendKind,
    ) -> Result<ExitCode> {
        let session = engine.new_session()?;
        eprintln!("{}", context_line(&engine, &session, backend));
        let mut chat = Chat {
            engine,
            session,
            tok,
            make,
            backend,
            conv: Conversation::new(self.args.system()),
            think: self.think,
            sampler: Sampler::new(self.args.sampling()),
            max_tokens: self.args.tokens as usize,
        };
        let config = Config::builder()
            .max_history_size(HISTORY_SIZE)?
            .auto_add_history(false)
            .build();
        let mut rl: Editor<(), FileHistory> = Editor::with_config(config)?;
        // After the editor, which takes SIGINT over for as long as it lives.
        if let Err(e) = on_sigint_cancel() {
            eprintln!("ds4: warning: Ctrl+C cannot stop generations here ({e})");
        }
        let history = history_path();
        if let Some(h) = &history {
            // A missing history file is the normal first run.
            let _ = rl.load_history(h);
        }
        println!("{HELP}");
        loop {
            let line = match rl.readline("ds4> ") {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            };
            let Some(parsed) = parse_line(&line) else {
                continue;
            };
            let _ = rl.add_history_entry(line.as_str());
            match parsed {
                Line::Turn(text) => chat.turn(&text),
                Line::Command(name, arg) => match name.as_str() {
                    "help" => println!("{HELP}"),
                    "think" => chat.set_think(Think::High),
                    "think-max" => chat.set_think(Think::Max),
                    "nothink" => chat.set_think(Think::None),
                    "ctx" => chat.set_ctx(&arg)?,
                    "tokens" => match arg.parse::<usize>() {
                        Ok(n) if n > 0 => {
                            chat.max_tokens = n;
                            println!("At most {n} tokens per answer.");
                        }
                        _ => eprintln!("ds4: /tokens needs a number above 0, got '{arg}'"),
                    },
                    "read" if arg.is_empty() => eprintln!("ds4: /read needs a file name"),
                    "read" => match std::fs::read(&arg) {
                        Ok(bytes) => chat.turn(&String::from_utf8_lossy(&bytes)),
                        Err(e) => eprintln!("ds4: cannot read {arg}: {e}"),
                    },
                    "quit" | "exit" => break,
                    _ => eprintln!("ds4: unknown command: /{name}"),
                },
            }
        }
        if let Some(h) = &history {
            if let Err(e) = rl.save_history(h) {
                eprintln!("ds4: warning: cannot save history to {}: {e}", h.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        assert!(parse_line("   ").is_none());
        assert!(matches!(parse_line("hello"), Some(Line::Turn(t)) if t == "hello"));
        match parse_line("/ctx 4096") {
            Some(Line::Command(n, a)) => assert_eq!((n.as_str(), a.as_str()), ("ctx", "4096")),
            _ => panic!("not a command"),
        }
        match parse_line("/quit") {
            Some(Line::Command(n, a)) => assert_eq!((n.as_str(), a.as_str()), ("quit", "")),
            _ => panic!("not a command"),
        }
    }
}
