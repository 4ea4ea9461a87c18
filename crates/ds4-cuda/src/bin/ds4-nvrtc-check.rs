//! `ds4-nvrtc-check [ARCH]...` — compiles every ds4 kernel with NVRTC (no
//! GPU needed) and fails on any compile error or missing kernel. The
//! defaults are `compute_90a` (the Hopper PTX the backend loads) and
//! `sm_90a` (the same through ptxas to SASS); CI runs it against the
//! pinned NVRTC 13.0 wheel (scripts/nvrtc_check.sh).

use std::process::ExitCode;

use ds4_cuda::kernels;

fn main() -> ExitCode {
    let mut archs: Vec<String> = std::env::args().skip(1).collect();
    if archs.is_empty() {
        archs.extend(["compute_90a".into(), "sm_90a".into()]);
    }
    let version = match kernels::nvrtc_version() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ds4-nvrtc-check: {e}");
            return ExitCode::from(2);
        }
    };
    let src = kernels::program_source();
    println!(
        "NVRTC {}.{}; {} kernels, {} lines of CUDA",
        version.0,
        version.1,
        kernels::KERNELS.len(),
        src.lines().count()
    );
    let mut ok = true;
    for arch in &archs {
        let start = std::time::Instant::now();
        match kernels::compile(arch) {
            Ok(ptx) => {
                let missing = kernels::missing_entries(&ptx);
                let target = ptx
                    .lines()
                    .find(|l| l.starts_with(".target"))
                    .unwrap_or(".target ?");
                if missing.is_empty() {
                    println!(
                        "ok   {arch}: {} bytes of PTX ({target}), all {} entries, {:.2} s",
                        ptx.len(),
                        kernels::KERNELS.len(),
                        start.elapsed().as_secs_f64()
                    );
                } else {
                    ok = false;
                    println!("FAIL {arch}: PTX lacks {missing:?}");
                }
            }
            Err(e) => {
                ok = false;
                println!("FAIL {arch}: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
