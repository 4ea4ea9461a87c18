//! The GPU self-test: every stage against the CPU reference, the tiny_a
//! oracle tiers on the GPU, and run-to-run determinism. One line per check;
//! [`run`] returns whether all passed.

mod stages;
mod tiers;
pub mod wide;

use std::path::{Path, PathBuf};

use ds4_model::Model;

use crate::{CudaBackend, CudaOptions};

/// Largest relative error a stage may show against the CPU reference.
pub const STAGE_LIMIT: f64 = 1e-3;

/// One reported check.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub detail: String,
    pub pass: bool,
}

/// Collects checks and prints each as it comes.
#[derive(Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, name: impl Into<String>, detail: impl Into<String>, pass: bool) {
        let c = Check {
            name: name.into(),
            detail: detail.into(),
            pass,
        };
        println!(
            "{} {:<40} {}",
            if c.pass { "[PASS]" } else { "[FAIL]" },
            c.name,
            c.detail
        );
        self.checks.push(c);
    }

    /// A stage output against the CPU reference: max |gpu − cpu| / max |cpu|.
    pub fn compare(&mut self, name: &str, gpu: &[f32], cpu: &[f32]) -> f64 {
        self.compare_within(name, gpu, cpu, STAGE_LIMIT)
    }

    /// `compare` with another limit.
    pub fn compare_within(&mut self, name: &str, gpu: &[f32], cpu: &[f32], limit: f64) -> f64 {
        if gpu.len() != cpu.len() {
            self.push(
                name,
                format!("length {} vs CPU {}", gpu.len(), cpu.len()),
                false,
            );
            return f64::INFINITY;
        }
        let err = max_rel(gpu, cpu);
        self.push(
            name,
            format!("max rel err {err:.2e} (limit {limit:.0e})"),
            err <= limit,
        );
        err
    }

    /// Results that must be bit-identical.
    pub fn identical(&mut self, name: &str, gpu: &[f32], cpu: &[f32]) {
        let diff = gpu
            .iter()
            .zip(cpu)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        let pass = diff == 0 && gpu.len() == cpu.len();
        self.push(
            name,
            format!(
                "{diff} of {} values differ in any bit (max rel err {:.2e})",
                cpu.len(),
                max_rel(gpu, cpu)
            ),
            pass,
        );
    }

    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.pass).count()
    }

    pub fn all_pass(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
}

/// max |a − b| / max |b| (normwise, so near-zero elements do not dominate).
pub fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let mut diff = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        // Equal values (infinities included) contribute nothing.
        if x.to_bits() != y.to_bits() {
            diff = diff.max((f64::from(x) - f64::from(y)).abs());
        }
    }
    if diff.is_nan() {
        return f64::INFINITY;
    }
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

pub fn argmax_agreement(a: &[f32], b: &[f32], vocab: usize) -> usize {
    a.chunks_exact(vocab)
        .zip(b.chunks_exact(vocab))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count()
}

/// Reads a little-endian float32 C-order .npy file: (shape, values).
pub fn read_npy_f32(path: &Path) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    anyhow::ensure!(
        bytes.len() > 10 && &bytes[..6] == b"\x93NUMPY",
        "{} is not .npy",
        path.display()
    );
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(bytes[8..12].try_into()?) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len])?;
    anyhow::ensure!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{}: unsupported header {header}",
        path.display()
    );
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| anyhow::anyhow!("{}: no shape", path.display()))?;
    let shape = shape_str
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()?;
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    anyhow::ensure!(
        data.len() == shape.iter().product::<usize>(),
        "{}: size",
        path.display()
    );
    Ok((shape, data))
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SelftestOptions {
    /// Directory with tiny_ds4.gguf, tokens.i32 and the .npy oracles.
    pub data: PathBuf,
    /// Directory with the tier-2 oracles (ds4_faithful_decode_hc.npy,
    /// hf_tf_kv_hc.npy); `None` looks in `data`.
    pub oracle: Option<PathBuf>,
    pub device: usize,
    pub stages: bool,
    pub tiers: bool,
    pub determinism: bool,
    /// The production-width checks (generates a ~0.9 GB model).
    pub wide: bool,
}

/// `fixtures_*` directories beside the tiny_a data that hold a model.
fn own_fixture_dirs(data: &Path) -> Vec<PathBuf> {
    let Some(parent) = data.parent() else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(parent)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("fixtures_"))
                        && p.join("model.gguf").exists()
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Runs the self-test and prints one line per check, then a summary.
pub fn run(opts: &SelftestOptions) -> anyhow::Result<bool> {
    let model = Model::open(opts.data.join("tiny_ds4.gguf")).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the tiny_a model in {}: {e}",
            opts.data.display()
        )
    })?;
    let start = std::time::Instant::now();
    let mut gpu = CudaBackend::new(
        &model,
        CudaOptions {
            numerics: ds4_model::numerics::Numerics::Exact,
            device: opts.device,
            ..CudaOptions::default()
        },
    )?;
    let info = gpu.device_info().clone();
    println!(
        "device: {} (compute {}.{}, {:.1} GiB), kernels for {} ({}), ready in {:.2} s",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.total_bytes as f64 / (1u64 << 30) as f64,
        info.arch,
        if info.ptx_from_cache {
            "PTX from the disk cache"
        } else {
            "compiled by NVRTC now"
        },
        start.elapsed().as_secs_f64()
    );
    let mut report = Report::default();
    if opts.stages {
        stages::run(&model, &mut gpu, &mut report)?;
    }
    let tokens = tiers::tokens(&opts.data)?;
    if opts.tiers {
        tiers::run(&model, &mut gpu, &opts.data, &tokens, &mut report)?;
        let oracle = opts.oracle.as_deref().unwrap_or(&opts.data);
        tiers::teacher_forced(&model, &mut gpu, oracle, &tokens, &mut report)?;
        tiers::own_fixtures(&own_fixture_dirs(&opts.data), opts.device, &mut report)?;
    }
    if opts.determinism {
        tiers::determinism(&model, &mut gpu, &tokens, &mut report)?;
        tiers::session(&model, &mut gpu, &tokens, &mut report)?;
    }
    if opts.wide {
        let t0 = std::time::Instant::now();
        let model = wide::model()?;
        println!(
            "wide model: {} layers at production widths, {:.2} GiB, generated in {:.1} s",
            model.config.n_layer,
            model.file.file_size() as f64 / (1u64 << 30) as f64,
            t0.elapsed().as_secs_f64()
        );
        let mut gpu = CudaBackend::new(
            &model,
            CudaOptions {
                numerics: ds4_model::numerics::Numerics::Exact,
                device: opts.device,
                ..CudaOptions::default()
            },
        )?;
        stages::run_wide(&model, &mut gpu, &mut report)?;
        tiers::wide(&model, &mut gpu, &mut report)?;
    }
    println!(
        "summary: {}/{} checks passed on {} in {:.1} s",
        report.passed(),
        report.checks.len(),
        info.name,
        start.elapsed().as_secs_f64()
    );
    for c in report.checks.iter().filter(|c| !c.pass) {
        println!("failed: {} ({})", c.name, c.detail);
    }
    Ok(report.all_pass())
}
