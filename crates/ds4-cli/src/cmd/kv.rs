//! `ds4 kv ls|inspect`: the disk KV cache's files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::output::emit;

#[derive(Subcommand)]
pub enum KvCommand {
    /// List the cache files of a directory: prefix, tokens, size, reason, validity
    Ls {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check one cache file field by field (with -m, also its payload against the model)
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Model whose shape the payload must fit
        #[arg(short = 'm', long = "model")]
        model: Option<PathBuf>,
        /// Context size the payload must fit (with -m)
        #[arg(long, default_value_t = 32768)]
        ctx: usize,
    },
}

pub fn run(cmd: KvCommand) -> Result<ExitCode> {
    match cmd {
        KvCommand::Ls { dir, json } => {
            let listing =
                ds4_engine::list_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
            emit(&if json {
                format!("{}\n", listing.to_json())
            } else {
                listing.to_string()
            })?;
            Ok(ExitCode::SUCCESS)
        }
        KvCommand::Inspect {
            file,
            json,
            model,
            ctx,
        } => {
            let model = model.map(ds4_model::Model::open).transpose()?;
            let report =
                ds4_engine::inspect_file_with(&file, model.as_ref().map(|m| (&m.config, ctx)));
            emit(&if json {
                format!("{}\n", report.to_json())
            } else {
                report.to_string()
            })?;
            Ok(if report.valid() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
