//! Opening a model on a backend: the flags every inference command shares
//! (`-m`, `--backend`, `-t`, `--warm-weights`), progress on a TTY, and the
//! dispatch from the runtime backend choice to the generic engine code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ds4_engine::{tokenizer_from_gguf, Engine, EngineOptions, Progress};
use ds4_model::backend::Backend;
use ds4_model::Model;
use ds4_text::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};

/// Which backend runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Cpu,
    Cuda,
}

impl BackendKind {
    /// CUDA on CUDA builds, the CPU otherwise (as ds4 picks).
    pub fn default_for_build() -> Self {
        if cfg!(feature = "cuda") {
            BackendKind::Cuda
        } else {
            BackendKind::Cpu
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// Model and backend flags.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model file (GGUF)
    #[arg(
        short = 'm',
        long = "model",
        value_name = "FILE",
        default_value = "./ds4flash.gguf"
    )]
    pub model: PathBuf,
    /// Backend: cpu, or cuda (builds with `--features cuda`) [default: cuda on CUDA builds, else cpu]
    #[arg(long, value_enum, value_name = "NAME")]
    pub backend: Option<BackendKind>,
    /// Shorthand for --backend cpu
    #[arg(long, conflicts_with_all = ["backend", "cuda"])]
    pub cpu: bool,
    /// Shorthand for --backend cuda
    #[arg(long, conflicts_with = "backend")]
    pub cuda: bool,
    /// CPU worker threads [default: one per core]
    #[arg(short = 't', long = "threads", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,
    /// Touch every page of the mapped model at startup (with a progress bar on a TTY)
    #[arg(long)]
    pub warm_weights: bool,
}

/// The backend that `--backend NAME`, `--cpu` or `--cuda` names, else the
/// build's default.
pub fn resolve_backend(backend: Option<BackendKind>, cpu: bool, cuda: bool) -> BackendKind {
    if cpu {
        BackendKind::Cpu
    } else if cuda {
        BackendKind::Cuda
    } else {
        backend.unwrap_or_else(BackendKind::default_for_build)
    }
}

impl ModelArgs {
    pub fn backend_kind(&self) -> BackendKind {
        resolve_backend(self.backend, self.cpu, self.cuda)
    }

    fn cpu_threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t as usize,
        )
    }
}

pub const NO_CUDA: &str = "this ds4 was built without CUDA: rebuild with \
     `cargo build --release --features cuda`, or use --backend cpu";

/// Generic code that runs on an engine, whatever its backend.
pub trait EngineTask {
    type Output;
    /// `make(ctx)` builds a fresh engine of the same model and backend with
    /// another context size (the caller drops the old one first).
    fn run<B: Backend>(
        self,
        engine: Engine<B>,
        tok: Tokenizer,
        make: &dyn Fn(usize) -> Result<Engine<B>>,
        backend: BackendKind,
    ) -> Result<Self::Output>;
}

/// True when progress may be drawn (stderr is a terminal).
pub fn tty_progress() -> bool {
    std::io::stderr().is_terminal()
}

/// A spinner with a message on a TTY, hidden otherwise.
pub fn spinner(msg: &str) -> ProgressBar {
    if !tty_progress() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A prefill progress bar (`processing N input tokens`), drawn on a TTY for
/// prompts of at least `min_tokens` tokens.
pub struct PrefillBar {
    bar: Option<ProgressBar>,
    min_tokens: usize,
}

impl PrefillBar {
    pub fn new(min_tokens: usize) -> Self {
        Self {
            bar: None,
            min_tokens,
        }
    }

    pub fn update(&mut self, p: &Progress) {
        if p.total < self.min_tokens || !tty_progress() {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(p.total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "processing {len} input tokens [{bar:30}] {pos}/{len} ({percent}%) {per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        bar.set_position(p.done as u64);
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for PrefillBar {
    fn drop(&mut self) {
        self.finish();
    }
}

fn open_model(path: &Path) -> Result<Model> {
    if !path.exists() {
        bail!(
            "no model at {} (get one with `ds4 pull q2`, or synthesize a test model with \
             `ds4 gguf synth --preset tiny -o tiny.gguf`)",
            path.display()
        );
    }
    Model::open(path).with_context(|| format!("cannot load {}", path.display()))
}

/// Reads every page of the model's data once, so the first tokens do not
/// wait on the disk.
fn warm(model: &Model) {
    let data = model.file.bytes();
    let bar = if tty_progress() {
        let bar = ProgressBar::new(data.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "warming weights [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut sum = 0u8;
    for (i, chunk) in data.chunks(1 << 24).enumerate() {
        for page in chunk.iter().step_by(4096) {
            sum = sum.wrapping_add(*page);
        }
        bar.set_position(((i + 1) * (1 << 24)).min(data.len()) as u64);
    }
    std::hint::black_box(sum);
    bar.finish_and_clear();
}

/// The tokenizer of a model file, without binding the model.
pub fn tokenizer_only(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        bail!("no model at {}", path.display());
    }
    let file = ds4_gguf::GgufFile::open(path)
        .with_context(|| format!("cannot read {} as GGUF", path.display()))?;
    tokenizer_from_gguf(&file).with_context(|| format!("no chat tokenizer in {}", path.display()))
}

/// Opens the model on the chosen backend with a context of `ctx` tokens and
/// runs `task` on the engine.
pub fn with_engine<T: EngineTask>(args: &ModelArgs, ctx: usize, task: T) -> Result<T::Output> {
    let opts = EngineOptions {
        ctx,
        ..EngineOptions::default()
    };
    with_engine_opts(args, opts, task)
}

/// [`with_engine`] with every engine option given.
pub fn with_engine_opts<T: EngineTask>(
    args: &ModelArgs,
    opts: EngineOptions,
    task: T,
) -> Result<T::Output> {
    let ctx = opts.ctx;
    let kind = args.backend_kind();
    if kind == BackendKind::Cuda && !cfg!(feature = "cuda") {
        bail!(NO_CUDA);
    }
    let path = args.model.clone();
    let bar = spinner(&format!("loading {}", path.display()));
    let model = open_model(&path)?;
    let tok = tokenizer_from_gguf(&model.file)
        .with_context(|| format!("no chat tokenizer in {}", path.display()))?;
    bar.finish_and_clear();
    if args.warm_weights {
        warm(&model);
    }
    let engine_opts = |ctx: usize| EngineOptions {
        ctx,
        ..opts.clone()
    };
    match kind {
        BackendKind::Cpu => {
            let cpu_opts = ds4_cpu::CpuOptions {
                threads: args.cpu_threads(),
                ..ds4_cpu::CpuOptions::default()
            };
            let make_with = |model: Model, ctx: usize| -> Result<Engine<ds4_cpu::CpuBackend>> {
                let backend = ds4_cpu::CpuBackend::new(&model, cpu_opts.clone());
                Ok(Engine::new(model, backend, engine_opts(ctx))?)
            };
            let engine = make_with(model, ctx)?;
            let make = |ctx: usize| make_with(open_model(&path)?, ctx);
            task.run(engine, tok, &make, kind)
        }
        BackendKind::Cuda => cuda(model, tok, &path, &engine_opts, ctx, task),
    }
}

#[cfg(feature = "cuda")]
fn cuda<T: EngineTask>(
    model: Model,
    tok: Tokenizer,
    path: &Path,
    engine_opts: &dyn Fn(usize) -> EngineOptions,
    ctx: usize,
    task: T,
) -> Result<T::Output> {
    use ds4_cuda::{CudaBackend, CudaOptions};
    let make_with = |model: Model, ctx: usize| -> Result<Engine<CudaBackend>> {
        let bar = spinner("uploading weights to the GPU");
        let backend = CudaBackend::new(&model, CudaOptions::default());
        bar.finish_and_clear();
        Ok(Engine::new(model, backend?, engine_opts(ctx))?)
    };
    let engine = make_with(model, ctx)?;
    let make = |ctx: usize| make_with(open_model(path)?, ctx);
    task.run(engine, tok, &make, BackendKind::Cuda)
}

#[cfg(not(feature = "cuda"))]
fn cuda<T: EngineTask>(
    _model: Model,
    _tok: Tokenizer,
    _path: &Path,
    _engine_opts: &dyn Fn(usize) -> EngineOptions,
    _ctx: usize,
    _task: T,
) -> Result<T::Output> {
    bail!(NO_CUDA)
}
