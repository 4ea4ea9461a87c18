//! `ds4-cuda-selftest [--data DIR] [--oracle DIR] [--device N] [--only stages|tiers|determinism|wide]`
//!
//! Checks the CUDA backend on the GPU: every stage against the CPU
//! reference, the tiny_a oracle tiers, and bit-identical reruns. Prints one
//! line per check and exits non-zero if any fails (2 if it could not run).

use std::path::PathBuf;
use std::process::ExitCode;

use ds4_cuda::selftest::{run, SelftestOptions};

fn usage() -> ExitCode {
    eprintln!(
        "usage: ds4-cuda-selftest [--data DIR] [--oracle DIR] [--device N] [--only stages|tiers|determinism|wide]..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut opts = SelftestOptions {
        data: PathBuf::from("tests/data/tiny_a"),
        oracle: None,
        device: 0,
        stages: true,
        tiers: true,
        determinism: true,
        wide: true,
    };
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => match args.next() {
                Some(v) => opts.data = PathBuf::from(v),
                None => return usage(),
            },
            "--oracle" => match args.next() {
                Some(v) => opts.oracle = Some(PathBuf::from(v)),
                None => return usage(),
            },
            "--device" => match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => opts.device = v,
                None => return usage(),
            },
            "--only" => match args.next() {
                Some(v) => only.push(v),
                None => return usage(),
            },
            "-h" | "--help" => {
                usage();
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    if !only.is_empty() {
        opts.stages = only.iter().any(|o| o == "stages");
        opts.tiers = only.iter().any(|o| o == "tiers");
        opts.determinism = only.iter().any(|o| o == "determinism");
        opts.wide = only.iter().any(|o| o == "wide");
    }
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ds4-cuda-selftest: {e:#}");
            ExitCode::from(2)
        }
    }
}
