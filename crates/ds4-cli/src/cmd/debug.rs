//! `ds4 debug ...`: numerical dumps with stable interfaces for external checks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ds4_cpu::{CpuBackend, CpuOptions};
use ds4_model::backend::Backend;
use ds4_model::forward::forward_chunked;
use ds4_model::numerics::Numerics;
use ds4_model::Model;

#[derive(Subcommand)]
pub enum DebugCommand {
    /// Evaluate int32 token ids and write float32 logits for every position ([T × vocab], row-major)
    Logits(LogitsArgs),
}

#[derive(Args)]
pub struct LogitsArgs {
    #[arg(short = 'm', long = "model", default_value = "./ds4flash.gguf")]
    model: PathBuf,
    /// Token ids: int32 little-endian
    #[arg(long, value_name = "FILE.i32")]
    tokens: PathBuf,
    /// exact (no simulations) or official (FP8 KV, FP4 indexer, f16 rows)
    #[arg(long, default_value = "official", value_parser = parse_numerics)]
    numerics: Numerics,
    /// Tokens per batch (default: the whole sequence)
    #[arg(long, value_name = "N")]
    prefill_chunk: Option<usize>,
    /// Output file: float32 little-endian logits
    #[arg(long, value_name = "FILE.f32")]
    out: PathBuf,
    /// Threads (default: one per core)
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

fn parse_numerics(s: &str) -> Result<Numerics, String> {
    Numerics::parse(s).ok_or_else(|| format!("'{s}' is not a numerics mode (exact, official)"))
}

pub fn run(cmd: DebugCommand) -> Result<ExitCode> {
    match cmd {
        DebugCommand::Logits(a) => logits(a),
    }
}

fn logits(a: LogitsArgs) -> Result<ExitCode> {
    let bytes =
        std::fs::read(&a.tokens).with_context(|| format!("reading {}", a.tokens.display()))?;
    if bytes.len() % 4 != 0 {
        bail!(
            "{}: {} bytes is not a whole number of int32 ids",
            a.tokens.display(),
            bytes.len()
        );
    }
    let ids: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    if ids.is_empty() {
        bail!("{}: no tokens", a.tokens.display());
    }
    let model = Model::open(&a.model).with_context(|| format!("{}", a.model.display()))?;
    let vocab = model.config.vocab_size;
    let tokens: Vec<u32> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            u32::try_from(id)
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .with_context(|| format!("token {i} ({id}) is outside the vocabulary ({vocab})"))
        })
        .collect::<Result<_>>()?;
    let mut opts = CpuOptions {
        numerics: a.numerics,
        ..CpuOptions::default()
    };
    if let Some(t) = a.threads {
        opts.threads = t.max(1);
    }
    let backend = CpuBackend::new(&model, opts);
    let chunk = a.prefill_chunk.unwrap_or(tokens.len()).max(1);
    let mut kv = backend.new_kv(tokens.len(), chunk)?;
    let logits = forward_chunked(&backend, &model.weights, &mut kv, &tokens, chunk, true)?;
    let out: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&a.out, out).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} x {} logits ({} numerics, batches of {chunk}) to {}",
        tokens.len(),
        vocab,
        a.numerics.name(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
