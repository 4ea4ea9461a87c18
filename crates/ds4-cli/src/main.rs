//! `ds4`: DeepSeek V4 Flash inference engine. This file only parses the
//! command line and turns errors into one clear line; each command group
//! lives in `cmd/`.

mod cmd;
mod output;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ds4",
    version,
    about = "DeepSeek V4 Flash inference engine",
    long_about = "DeepSeek V4 Flash inference engine.\n\nWithout a subcommand: `ds4 -p TEXT` answers \
                  one prompt, `ds4` alone chats interactively, `ds4 --inspect` reports on the model \
                  at -m, and `ds4 --demo` runs without any model."
)]
pub struct Cli {
    #[command(flatten)]
    pub chat: cmd::chat::ChatArgs,
    /// Synthesize a tiny model in a temporary directory, inspect it, and show what ds4 does today
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// GGUF files: inspect, synthesize
    #[command(subcommand)]
    Gguf(cmd::gguf::GgufCommand),
    /// Print the token ids of a text (or, with --decode, the text of ids)
    Tokenize(cmd::text::TokenizeArgs),
    /// Render chat requests with the official encoding (JSON lines in, JSON lines out)
    Render(cmd::text::RenderArgs),
    /// Numerical dumps for external checks
    #[command(subcommand)]
    Debug(cmd::debug::DebugCommand),
    /// Disk KV cache files
    #[command(subcommand)]
    Kv(cmd::kv::KvCommand),
    /// Prefill and decode tokens/s at context frontiers (CSV as ds4-bench, optional SVG chart)
    Bench(cmd::bench::BenchArgs),
    /// Download a published model (q2, q4, q2-imatrix, q4-imatrix) or the MTP head
    Pull(cmd::pull::PullArgs),
    /// HTTP API server (OpenAI chat/completions/responses, Anthropic messages)
    Serve(cmd::serve::ServeArgs),
}

fn main() -> ExitCode {
    // ds4 spells the system-prompt flag `-sys`.
    let args = std::env::args_os().map(|a| if a == "-sys" { "--system".into() } else { a });
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Some(Command::Gguf(c)) => cmd::gguf::run(c),
        Some(Command::Tokenize(a)) => cmd::text::tokenize(a),
        Some(Command::Render(a)) => cmd::text::render_cases(a),
        Some(Command::Debug(c)) => cmd::debug::run(c),
        Some(Command::Kv(c)) => cmd::kv::run(c),
        Some(Command::Bench(a)) => cmd::bench::run(a),
        Some(Command::Pull(a)) => cmd::pull::run(a),
        Some(Command::Serve(a)) => cmd::serve::run(a, &cli.chat.model.model),
        None if cli.demo => cmd::run::demo(),
        None => cmd::chat::run(cli.chat),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", skipping a cause whose text the
/// line already holds (library errors often print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
