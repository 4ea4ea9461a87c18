//! `ds4`: DeepSeek V4 Flash inference engine. This file only parses the
//! command line and turns errors into one clear line; each command group
//! lives in `cmd/`.

mod cmd;
mod output;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ds4",
    version,
    about = "DeepSeek V4 Flash inference engine",
    long_about = "DeepSeek V4 Flash inference engine.\n\nWithout a subcommand, ds4 checks the model \
                  at -m and reports what it can do with it; `ds4 --demo` runs without any model."
)]
struct Cli {
    /// Model file (GGUF)
    #[arg(short = 'm', long = "model", default_value = "./ds4flash.gguf")]
    model: PathBuf,
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
    /// HTTP API server (OpenAI chat/completions/responses, Anthropic messages)
    Serve(cmd::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Gguf(c)) => cmd::gguf::run(c),
        Some(Command::Serve(a)) => cmd::serve::run(a, &cli.model),
        None if cli.demo => cmd::run::demo(),
        None => cmd::run::default(&cli.model),
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
