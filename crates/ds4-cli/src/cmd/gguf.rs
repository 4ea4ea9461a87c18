//! `ds4 gguf inspect|synth`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ds4_gguf::GgufFile;
use ds4_model::synth::{self, Preset, SynthReport, SynthSpec};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::emit;
use crate::report::{group, human, Report};

#[derive(Subcommand)]
pub enum GgufCommand {
    /// Show a GGUF file's header, metadata, tensors, and whether it binds as DeepSeek V4 Flash
    Inspect(InspectArgs),
    /// Write a synthetic DeepSeek V4 Flash model in exactly the published layout
    Synth(SynthArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// GGUF file
    file: PathBuf,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    /// flash-q2 (IQ2_XXS gate/up, Q2_K down; ~81 GiB), flash-q4 (Q4_K; ~153 GiB) or tiny (~120 MB)
    #[arg(long, value_parser = parse_preset)]
    preset: Preset,
    /// Keep the production widths but only the first N layers of the schedule
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// Seed of the random weights (same seed, same bytes)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (default: one per core)
    #[arg(long, value_name = "T", default_value_t = 0)]
    threads: usize,
    /// Output file
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Overwrite FILE if it exists
    #[arg(long)]
    force: bool,
}

fn parse_preset(s: &str) -> std::result::Result<Preset, String> {
    s.parse().map_err(|e: synth::SynthError| e.to_string())
}

pub fn run(cmd: GgufCommand) -> Result<ExitCode> {
    match cmd {
        GgufCommand::Inspect(a) => inspect(&a.file, a.json),
        GgufCommand::Synth(a) => {
            let spec = SynthSpec {
                preset: a.preset,
                layers: a.layers,
                seed: a.seed,
                threads: a.threads,
            };
            let report = synthesize(&spec, &a.output, a.force, true)?;
            emit(&format!("{}\n", describe_synth(&spec, &report)))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Parses the file (an error if it is not GGUF); exit status 0 even when it
/// does not bind, since the report says so.
pub fn inspect(path: &Path, json: bool) -> Result<ExitCode> {
    let file = open(path)?;
    let report = Report::new(&path.display().to_string(), &file);
    emit(&if json { report.json() } else { report.text() })?;
    Ok(ExitCode::SUCCESS)
}

pub fn open(path: &Path) -> Result<GgufFile> {
    GgufFile::open(path).with_context(|| format!("cannot read {} as GGUF", path.display()))
}

/// Writes the model, with a progress bar when stderr is a terminal.
pub fn synthesize(
    spec: &SynthSpec,
    output: &Path,
    force: bool,
    show_progress: bool,
) -> Result<SynthReport> {
    if output.exists() && !force {
        bail!(
            "{} already exists (pass --force to overwrite it)",
            output.display()
        );
    }
    let bar = if show_progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )?
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let progress = |done: u64, total: u64| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    };
    let result = synth::write(spec, output, force, &progress);
    bar.finish_and_clear();
    result.with_context(|| format!("writing {}", output.display()))
}

pub fn describe_synth(spec: &SynthSpec, r: &SynthReport) -> String {
    let layers = spec
        .layers
        .map_or_else(|| "all layers".to_string(), |n| format!("{n} layers"));
    format!(
        "wrote {}: {} bytes ({}, {} tensors) in {:.2} s = {:.2} GB/s \
         (preset {}, {layers}, seed {}, {} threads)",
        r.path.display(),
        group(r.file_size),
        human(r.file_size),
        r.tensors,
        r.seconds,
        r.gb_per_s(),
        spec.preset,
        spec.seed,
        r.threads
    )
}
