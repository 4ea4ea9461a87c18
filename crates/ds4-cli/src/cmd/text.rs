//! `ds4 tokenize` and `ds4 render`: the text layer on its own, with stable
//! interfaces for external checks.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ds4_gguf::GgufFile;
use ds4_text::chat::{render, ChatRequest};
use ds4_text::pyjson::PyValue;
use ds4_text::{EncodeMode, Tokenizer};
use serde_json::json;

use crate::output::emit;

#[derive(Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Every added token in the text becomes its id (Hugging Face semantics)
    Hf,
    /// Byte-level BPE only: no added-token matching
    Plain,
    /// Only ds4's seven chat specials are matched
    Ds4,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Model file whose tokenizer metadata is used
    #[arg(short = 'm', long = "model", default_value = "./ds4flash.gguf")]
    model: PathBuf,
    /// Text to tokenize (with --decode: token ids separated by spaces or commas)
    text: Option<String>,
    /// Read the text (or ids) from a file instead
    #[arg(long, value_name = "F", conflicts_with = "text")]
    file: Option<PathBuf>,
    /// Decode ids to text instead
    #[arg(long)]
    decode: bool,
    /// Read JSON lines from stdin ({"text": ...}, or {"ids": [...]} with --decode),
    /// write one JSON line per input ({"ids": [...]}, or {"text", "bytes_hex"})
    #[arg(long, conflicts_with_all = ["text", "file"])]
    jsonl: bool,
    /// Which added tokens are recognised in the text
    #[arg(long, value_enum, default_value = "hf")]
    mode: Mode,
}

#[derive(Args)]
pub struct RenderArgs {
    /// Model file whose tokenizer metadata is used
    #[arg(short = 'm', long = "model", default_value = "./ds4flash.gguf")]
    model: PathBuf,
    /// Read render cases as JSON lines from stdin and write one result line each
    #[arg(long, required = true)]
    jsonl: bool,
}

/// The tokenizer of a model file (only its metadata is read).
pub fn load_tokenizer(model: &Path) -> Result<Tokenizer> {
    let file = GgufFile::open(model)
        .with_context(|| format!("cannot read {} as GGUF", model.display()))?;
    ds4_engine::tokenizer_from_gguf(&file).with_context(|| format!("{}", model.display()))
}

fn encode_mode(m: Mode) -> EncodeMode {
    match m {
        Mode::Hf => EncodeMode::Hf,
        Mode::Plain => EncodeMode::Plain,
        Mode::Ds4 => EncodeMode::Ds4,
    }
}

fn parse_ids(text: &str, vocab: usize) -> Result<Vec<u32>> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let id: u32 = s
                .parse()
                .with_context(|| format!("'{s}' is not a token id"))?;
            if id as usize >= vocab {
                bail!("token id {id} is outside the vocabulary ({vocab})");
            }
            Ok(id)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn tokenize(args: TokenizeArgs) -> Result<ExitCode> {
    let tok = load_tokenizer(&args.model)?;
    let mode = encode_mode(args.mode);
    if args.jsonl {
        let stdin = std::io::stdin();
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for (n, line) in stdin.lock().lines().enumerate() {
            let line = line.context("reading stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("line {}: not JSON", n + 1))?;
            let reply = if args.decode {
                let ids: Vec<u32> = v
                    .get("ids")
                    .and_then(|x| x.as_array())
                    .with_context(|| format!("line {}: needs \"ids\": [...]", n + 1))?
                    .iter()
                    .map(|x| {
                        x.as_u64()
                            .filter(|&i| (i as usize) < tok.vocab_size())
                            .map(|i| i as u32)
                    })
                    .collect::<Option<_>>()
                    .with_context(|| {
                        format!(
                            "line {}: ids must be token ids below {}",
                            n + 1,
                            tok.vocab_size()
                        )
                    })?;
                let bytes = tok.decode(&ids);
                json!({"text": String::from_utf8_lossy(&bytes), "bytes_hex": hex(&bytes)})
            } else {
                let text = v
                    .get("text")
                    .and_then(|x| x.as_str())
                    .with_context(|| format!("line {}: needs \"text\": \"...\"", n + 1))?;
                json!({"ids": tok.encode_with(text, mode)})
            };
            writeln!(out, "{reply}")?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let input = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("give TEXT, --file F or --jsonl"),
    };
    if args.decode {
        let ids = parse_ids(&input, tok.vocab_size())?;
        let bytes = tok.decode(&ids);
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        out.flush()?;
    } else {
        let ids = tok.encode_with(&input, mode);
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        emit(&format!("{}\n", line.join(" ")))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn render_cases(args: RenderArgs) -> Result<ExitCode> {
    debug_assert!(args.jsonl);
    let tok = load_tokenizer(&args.model)?;
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match PyValue::parse(&line) {
            Err(e) => {
                json!({"error": {"type": "JSONDecodeError", "message": format!("line {}: {e}", n + 1)}})
            }
            Ok(case) => match ChatRequest::from_render_case(&case).and_then(|r| render(&r)) {
                Ok(prompt) => {
                    let text = prompt.text();
                    json!({"rendered": text, "ids": tok.encode(text)})
                }
                Err(e) => json!({"error": {"type": e.python_type(), "message": e.to_string()}}),
            },
        };
        writeln!(out, "{reply}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
