//! `ds4 serve`: the HTTP API (OpenAI and Anthropic protocols) on one model
//! (see docs/server.md and the `ds4-server` crate).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use ds4_cpu::{CpuBackend, CpuOptions};
use ds4_engine::{CachePolicy, Engine, EngineOptions};
use ds4_model::backend::Backend;
use ds4_model::Model;
use ds4_server::{KvDiskOptions, ServerOptions};

use super::load::{resolve_backend, BackendKind};

#[derive(Args)]
pub struct ServeArgs {
    /// Model file (GGUF); default: the top-level -m
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: Option<PathBuf>,
    /// Context size allocated per live session (tokens)
    #[arg(short = 'c', long, default_value_t = 32768, value_parser = clap::value_parser!(u32).range(2..))]
    ctx: u32,
    /// Output tokens when a request sets no limit (clamped to the context)
    #[arg(short = 'n', long, default_value_t = 393_216, value_parser = clap::value_parser!(u32).range(1..))]
    tokens: u32,
    /// Backend: cpu, or cuda (builds with `--features cuda`) [default: cuda on CUDA builds, else cpu]
    #[arg(long, value_enum, value_name = "NAME")]
    backend: Option<BackendKind>,
    /// Shorthand for --backend cpu
    #[arg(long, conflicts_with_all = ["backend", "cuda"])]
    cpu: bool,
    /// Shorthand for --backend cuda
    #[arg(long, conflicts_with = "backend")]
    cuda: bool,
    /// CPU threads (default: one per core; the CPU backend only)
    #[arg(short = 't', long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Bind address, IPv4 only (localhost = 127.0.0.1)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Add Access-Control-Allow-* headers and answer CORS preflights
    #[arg(long)]
    cors: bool,
    /// Require this key as `Authorization: Bearer KEY` or `x-api-key: KEY`
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Write a human-readable trace of every request to FILE (truncated at start)
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Enable the disk KV cache in DIR (created, mode 0700)
    #[arg(long, value_name = "DIR")]
    kv_disk_dir: Option<PathBuf>,
    /// Disk cache budget in MiB
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    kv_disk_space_mb: u64,
    /// Smallest checkpoint saved or loaded (tokens)
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    kv_cache_min_tokens: u32,
    /// Cold prompts of min..=N tokens are saved; 0 disables cold saves
    #[arg(long, default_value_t = 30000)]
    kv_cache_cold_max_tokens: u32,
    /// Spacing of continued saves (rounded up to the alignment); 0 disables
    #[arg(long, default_value_t = 10000)]
    kv_cache_continued_interval_tokens: u32,
    /// Tail tokens trimmed before a cold save
    #[arg(long, default_value_t = 32)]
    kv_cache_boundary_trim_tokens: u32,
    /// Align cold/continued boundaries down to this multiple; 0 disables
    #[arg(long, default_value_t = 2048)]
    kv_cache_boundary_align_tokens: u32,
    /// Refuse checkpoints written with the other routed-expert quant
    #[arg(long)]
    kv_cache_reject_different_quant: bool,
    /// Do not remember sampled DSML by tool-call id (render tool calls canonically)
    #[arg(long)]
    disable_exact_dsml_tool_replay: bool,
    /// Most tool-call ids remembered for exact DSML replay
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    tool_memory_max_ids: u32,
    /// Live sessions kept in memory (each holds a --ctx KV cache)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    live_sessions: u32,
    /// TESTS ONLY: replace sampling by the scripted text of FILE's rules
    /// (exists only in debug builds with the `test-script` feature)
    #[cfg(feature = "test-script")]
    #[arg(long, value_name = "FILE")]
    test_script: Option<PathBuf>,
}

fn options(a: &ServeArgs) -> Result<ServerOptions> {
    if a.kv_cache_cold_max_tokens != 0 && a.kv_cache_cold_max_tokens < a.kv_cache_min_tokens {
        bail!(
            "--kv-cache-cold-max-tokens must be 0 or at least --kv-cache-min-tokens ({})",
            a.kv_cache_min_tokens
        );
    }
    let kv_disk = a.kv_disk_dir.as_ref().map(|dir| KvDiskOptions {
        dir: dir.clone(),
        budget_mb: a.kv_disk_space_mb,
        reject_different_quant: a.kv_cache_reject_different_quant,
        policy: CachePolicy {
            min_tokens: a.kv_cache_min_tokens as usize,
            cold_max_tokens: a.kv_cache_cold_max_tokens as usize,
            continued_interval_tokens: a.kv_cache_continued_interval_tokens as usize,
            boundary_trim_tokens: a.kv_cache_boundary_trim_tokens as usize,
            boundary_align_tokens: a.kv_cache_boundary_align_tokens as usize,
            user_token: None,
            assistant_token: None,
        },
    });
    Ok(ServerOptions {
        host: a.host.clone(),
        port: a.port,
        default_max_tokens: a.tokens as usize,
        cors: a.cors,
        api_key: a.api_key.clone(),
        trace: a.trace.clone(),
        kv_disk,
        tool_memory_max_ids: a.tool_memory_max_ids as usize,
        exact_dsml_replay: !a.disable_exact_dsml_tool_replay,
        live_sessions: a.live_sessions as usize,
        #[cfg(feature = "test-script")]
        script: match &a.test_script {
            None => None,
            Some(p) => {
                eprintln!("ds4 serve: WARNING: --test-script {}: scripted generation replaces sampling (test build)", p.display());
                Some(ds4_server::script::Script::load(p).map_err(anyhow::Error::msg)?)
            }
        },
        ..ServerOptions::default()
    })
}

pub fn run(a: ServeArgs, default_model: &Path) -> Result<ExitCode> {
    let opts = match options(&a) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let model = a
        .model
        .clone()
        .unwrap_or_else(|| default_model.to_path_buf());
    if !model.exists() {
        bail!(
            "no model at {} (get one with `ds4 gguf synth --preset tiny -o tiny.gguf`, then `ds4 serve -m tiny.gguf`)",
            model.display()
        );
    }
    let engine_opts = EngineOptions {
        ctx: a.ctx as usize,
        ..EngineOptions::default()
    };
    if resolve_backend(a.backend, a.cpu, a.cuda) == BackendKind::Cuda {
        serve_cuda(opts, model, engine_opts)?;
        return Ok(ExitCode::SUCCESS);
    }
    let threads = a
        .threads
        .map(|t| t as usize)
        .unwrap_or_else(|| CpuOptions::default().threads);
    serve_on(opts, model, engine_opts, move |m| {
        Ok(CpuBackend::new(
            m,
            CpuOptions {
                threads,
                ..CpuOptions::default()
            },
        ))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Serves the model on the backend `backend` builds; the server's worker
/// thread opens the model and builds the engine (an error there ends
/// `serve` with its message).
fn serve_on<B: Backend + 'static>(
    opts: ServerOptions,
    model: PathBuf,
    engine_opts: EngineOptions,
    backend: impl FnOnce(&Model) -> std::result::Result<B, String> + Send + 'static,
) -> Result<()> {
    let make = move || -> std::result::Result<Engine<B>, String> {
        let m = Model::open(&model).map_err(|e| format!("{}: {e}", model.display()))?;
        let b = backend(&m)?;
        Engine::new(m, b, engine_opts).map_err(|e| e.to_string())
    };
    ds4_server::run(opts, make)?;
    Ok(())
}

#[cfg(feature = "cuda")]
fn serve_cuda(opts: ServerOptions, model: PathBuf, engine_opts: EngineOptions) -> Result<()> {
    use ds4_cuda::{CudaBackend, CudaOptions};
    serve_on(opts, model, engine_opts, |m| {
        CudaBackend::new(m, CudaOptions::default()).map_err(|e| e.to_string())
    })
}

#[cfg(not(feature = "cuda"))]
fn serve_cuda(_opts: ServerOptions, _model: PathBuf, _engine_opts: EngineOptions) -> Result<()> {
    bail!(super::load::NO_CUDA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        a: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.a)
    }

    #[test]
    fn defaults_and_validation() {
        let o = options(&parse(&[]).unwrap()).unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.default_max_tokens),
            ("127.0.0.1", 8000, 393_216)
        );
        assert!(o.kv_disk.is_none() && o.api_key.is_none() && !o.cors);
        let a = parse(&[
            "--kv-disk-dir",
            "/tmp/x",
            "--kv-cache-min-tokens",
            "100",
            "--kv-cache-cold-max-tokens",
            "50",
        ])
        .unwrap();
        assert!(options(&a).is_err());
        let a = parse(&["--kv-disk-dir", "/tmp/x", "--kv-cache-cold-max-tokens", "0"]).unwrap();
        let d = options(&a).unwrap().kv_disk.unwrap();
        assert_eq!(
            (d.budget_mb, d.policy.min_tokens, d.policy.cold_max_tokens),
            (4096, 512, 0)
        );
        let kind = |args: &[&str]| {
            let a = parse(args).unwrap();
            resolve_backend(a.backend, a.cpu, a.cuda)
        };
        assert_eq!(kind(&["--cpu"]), BackendKind::Cpu);
        assert_eq!(kind(&["--cuda"]), BackendKind::Cuda);
        assert_eq!(kind(&["--backend", "cuda"]), BackendKind::Cuda);
        assert_eq!(kind(&[]), BackendKind::default_for_build());
        for bad in [
            &["--port", "0"][..],
            &["--cpu", "--cuda"],
            &["--backend", "cpu", "--cuda"],
            &["--backend", "tpu"],
            &["--ctx", "0"],
            &["--tokens", "-1"],
            &["--tool-memory-max-ids", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[cfg(not(feature = "test-script"))]
    #[test]
    fn test_script_flag_does_not_exist_in_a_normal_build() {
        let e = parse(&["--test-script", "x.json"]).err().expect("rejected");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
