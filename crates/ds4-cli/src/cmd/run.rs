//! `ds4` without a subcommand: check the model at `-m`, or `--demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use ds4_gguf::GgufFile;
use ds4_model::synth::{Preset, SynthSpec};

use crate::cmd::gguf::{describe_synth, open, synthesize};
use crate::output::emit;
use crate::report::Report;

const USAGE: &str = "Chat with it: ds4 -m FILE; one answer: ds4 -m FILE -p TEXT; \
                     throughput: ds4 bench -m FILE.";

/// With a model: say what it is and whether ds4 can bind it. Without: say
/// what is missing and how to get a model, and fail.
pub fn default(model: &Path) -> Result<ExitCode> {
    if !model.exists() {
        eprintln!(
            "ds4: no model at {path}\n\
             \n\
             ds4 runs DeepSeek V4 Flash from a GGUF file (the published q2 file is ~81 GiB).\n\
             To get one:\n\
             \x20 - synthesize a random model in exactly the published layout (for testing;\n\
             \x20   86.7 GB; 44 s into /dev/shm on a 16-core machine):\n\
             \x20       ds4 gguf synth --preset flash-q2 -o {path}\n\
             \x20   or a small one:  ds4 gguf synth --preset tiny -o tiny.gguf && ds4 -m tiny.gguf\n\
             \x20 - download the published weights (~81 GiB): ds4 pull q2\n\
             Or run `ds4 --demo`, which needs no model.",
            path = model.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let file = open(model)?;
    let report = Report::new(&model.display().to_string(), &file);
    emit(&format!(
        "model {}:\n{}{}\n",
        model.display(),
        report.summary(),
        USAGE
    ))?;
    Ok(if report.binding.binds {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth failing for.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ids of a few chat tokens, read back from the written file's metadata.
fn tokenizer_line(file: &GgufFile) -> String {
    let list = |key: &str| file.get(key).and_then(|v| v.as_array()).unwrap_or(&[]);
    let tokens = list("tokenizer.ggml.tokens");
    let ids: Vec<String> = [
        "<｜begin▁of▁sentence｜>",
        "<｜User｜>",
        "<｜Assistant｜>",
        "<think>",
    ]
    .iter()
    .map(|t| {
        let id = tokens.iter().position(|v| v.as_str() == Some(t));
        format!("{t} = {}", id.map_or("missing".into(), |i| i.to_string()))
    })
    .collect();
    format!(
        "  tokenizer: {} tokens, {} merges (the real DeepSeek V4 tokenizer); {}",
        tokens.len(),
        list("tokenizer.ggml.merges").len(),
        ids.join(", ")
    )
}

/// Synthesizes the tiny preset into a temporary directory, inspects it and
/// reports; the directory is removed afterwards.
pub fn demo() -> Result<ExitCode> {
    let dir = TempDir::new("ds4-demo")?;
    let path = dir.0.join("tiny.gguf");
    emit("ds4 demo (no model needed): synthesizing the `tiny` preset, a 6-layer DeepSeek V4\nmodel with random weights and the real tokenizer, then binding it.\n")?;
    let spec = SynthSpec::new(Preset::Tiny);
    let written = synthesize(&spec, &path, false, true)?;
    let file = open(&path)?;
    let report = Report::new(&path.display().to_string(), &file);
    emit(&format!(
        "{}\n{}{}\n\nGenerating 16 tokens (greedy, no thinking) for \"Hello\" with random weights:\n",
        describe_synth(&spec, &written),
        report.summary(),
        tokenizer_line(&file),
    ))?;
    let path_arg = path.display().to_string();
    let args = crate::Cli::try_parse_from([
        "ds4",
        "-m",
        &path_arg,
        "--cpu",
        "-p",
        "Hello",
        "-n",
        "16",
        "--nothink",
        "--temp",
        "0",
    ])?;
    crate::cmd::chat::run(args.chat)?;
    emit("\nTo keep a model: ds4 gguf synth --preset tiny -o tiny.gguf && ds4 -m tiny.gguf\n(the demo's temporary file is removed now)\n")?;
    Ok(if report.binding.binds {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
