//! `ds4-cuda-bench`: prefill and decode throughput of the CUDA backend at
//! context frontiers, against the memory-bandwidth bound, with a per-stage
//! breakdown of one decode step.
//!
//! ```text
//! ds4-cuda-bench synth --preset flash-q2 [--layers N] -o MODEL.gguf
//! ds4-cuda-bench run -m MODEL.gguf [--ctx 2048,8192,16384,65536] [--chunk 2048]
//!     [--gen 32] [--csv FILE] [--breakdown FILE] [--deadline-s 300]
//! ds4-cuda-bench products -m MODEL.gguf [--reps 50] [--runs 7]
//! ds4-cuda-bench marginal -m MODEL.gguf [--ctx 2048] [--reps 5] [--kernels LIST]
//! ```
//!
//! `products` times each weight product of one decode step on its own (for
//! GEMV kernel work: a `--layers 8` synthetic file has every shape, and
//! enough layers that the launches read DRAM, not L2). `marginal` times a
//! decode step with each kernel's launches left out in turn (garbage
//! results, real timing): what each kernel costs the step's critical path.
//!
//! For each frontier f: prefill the next f − previous tokens (chunks of
//! `--chunk`), then decode `--gen` tokens greedily (median step time), then
//! rewind to f. The bound is the device-to-device copy bandwidth (bytes
//! read + written, measured first) over the weight bytes a decode step
//! reads (`Weights::decode_bytes_per_token`). The breakdown times one
//! decode step with CUDA events around every Backend stage, with the stream
//! held until the whole step is queued (so it shows GPU time, not launch
//! gaps); the step's ungated wall time is printed next to it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use ds4_cuda::bench::{
    copy_bandwidth, decode_products, decode_stage_bytes, gate, Stage, StageTimes, Timed,
};
use ds4_cuda::{CudaBackend, CudaOptions, GemvStaging};
use ds4_model::backend::{Backend, Export};
use ds4_model::forward::{forward, forward_chunked, Logits};
use ds4_model::numerics::Numerics;
use ds4_model::synth::{self, SynthSpec};
use ds4_model::Model;

fn usage() -> ExitCode {
    eprintln!(
        "usage: ds4-cuda-bench synth --preset NAME [--layers N] -o FILE\n       \
         ds4-cuda-bench run -m FILE [--ctx LIST] [--chunk N] [--gen N] [--csv FILE] \
         [--breakdown FILE] [--deadline-s S] [--exact] [GPU OPTIONS]\n       \
         ds4-cuda-bench products -m FILE [--reps N] [--runs N] [GPU OPTIONS]\n       \
         ds4-cuda-bench marginal -m FILE [--ctx N] [--reps N] [--kernels LIST] [GPU OPTIONS]\n\
         GPU OPTIONS: [--gemv-stage q8_0,q2_k,iq2_xxs|all|none] [--no-dependent-launch]\n       \
         [--q8-x-registers on|off] [--attention-mma on|off]\n       \
         [--int8-experts on|off]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("synth") => cmd_synth(&args[1..]),
        Some("run") => cmd_run(&args[1..]),
        Some("products") => cmd_products(&args[1..]),
        Some("marginal") => cmd_marginal(&args[1..]),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ds4-cuda-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("{flag} needs a value"))
}

/// Applies `args[*i]` (and its value) to `opts` if it is one of the GPU
/// options both `run` and `products` take; false if it is not one.
fn gpu_option(args: &[String], i: &mut usize, opts: &mut CudaOptions) -> Result<bool> {
    match args[*i].as_str() {
        "--gemv-stage" => {
            opts.gemv_staging =
                GemvStaging::parse(value(args, i, "--gemv-stage")?).map_err(anyhow::Error::msg)?
        }
        "--no-dependent-launch" => opts.dependent_launch = false,
        "--q8-x-registers" => opts.q8_0_x_registers = on_off(value(args, i, "--q8-x-registers")?)?,
        "--attention-mma" => {
            opts.tensor_core_attention = on_off(value(args, i, "--attention-mma")?)?
        }
        "--int8-experts" => opts.int8_expert_gemvs = on_off(value(args, i, "--int8-experts")?)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn on_off(v: &str) -> Result<bool> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        v => bail!("expected on or off, not '{v}'"),
    }
}

/// Each weight product of one decode step on its own (`bench::decode_products`):
/// µs per launch and GB/s against a device copy measured in the same run.
fn cmd_products(args: &[String]) -> Result<()> {
    let (mut model, mut reps, mut runs) = (None, 50usize, 7usize);
    let mut opts = CudaOptions::default();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-m" | "--model" => model = Some(PathBuf::from(value(args, &mut i, "-m")?)),
            "--reps" => reps = value(args, &mut i, "--reps")?.parse()?,
            "--runs" => runs = value(args, &mut i, "--runs")?.parse()?,
            _ if gpu_option(args, &mut i, &mut opts)? => {}
            a => bail!("unknown argument {a}"),
        }
        i += 1;
    }
    let model = model.ok_or_else(|| anyhow!("-m MODEL is required"))?;
    if reps == 0 || runs == 0 {
        bail!("--reps and --runs must be positive");
    }
    let m = Model::open(&model).with_context(|| format!("opening {}", model.display()))?;
    let b = CudaBackend::new(&m, opts)?;
    let info = b.device_info().clone();
    let copy_gbs = copy_bandwidth(&b, 2 << 30, 20)?;
    println!(
        "card: {} (compute {}.{}), date {}, model {} ({} layers, launch i uses layer i mod {}), {reps} launches x {runs} runs\n\
         device-to-device copy: {copy_gbs:.0} GB/s (read + write)\n",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        today(),
        model.display(),
        m.config.n_layer,
        m.config.n_layer,
    );
    println!("| product | weights | MB | µs/launch | GB/s | of copy |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut total = (0usize, 0f64);
    for t in decode_products(&b, &m.weights, reps, runs)? {
        let gbs = t.bytes as f64 / (t.us * 1e-6) / 1e9;
        println!(
            "| {} | {} | {:.1} | {:.2} | {gbs:.0} | {:.0} % |",
            t.name,
            t.what,
            t.bytes as f64 / 1e6,
            t.us,
            100.0 * gbs / copy_gbs
        );
        total = (total.0 + t.bytes, total.1 + t.us);
    }
    println!(
        "| **all** | | {:.1} | {:.2} | {:.0} | {:.0} % |",
        total.0 as f64 / 1e6,
        total.1,
        total.0 as f64 / (total.1 * 1e-6) / 1e9,
        100.0 * total.0 as f64 / (total.1 * 1e-6) / 1e9 / copy_gbs
    );
    Ok(())
}

fn cmd_synth(args: &[String]) -> Result<()> {
    let (mut preset, mut layers, mut out) = (None, None, None);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--preset" => preset = Some(value(args, &mut i, "--preset")?.to_string()),
            "--layers" => layers = Some(value(args, &mut i, "--layers")?.parse::<usize>()?),
            "-o" | "--output" => out = Some(PathBuf::from(value(args, &mut i, "-o")?)),
            a => bail!("unknown argument {a}"),
        }
        i += 1;
    }
    let preset: synth::Preset = preset
        .ok_or_else(|| anyhow!("--preset is required"))?
        .parse()?;
    let out = out.ok_or_else(|| anyhow!("-o is required"))?;
    let mut spec = SynthSpec::new(preset);
    if let Some(n) = layers {
        spec = spec.layers(n);
    }
    let r = synth::write(&spec, &out, true, &|_, _| {})?;
    println!(
        "synth {preset}{}: {} ({:.2} GB) in {:.1} s ({:.2} GB/s, {} threads)",
        layers.map_or(String::new(), |n| format!(" --layers {n}")),
        out.display(),
        r.file_size as f64 / 1e9,
        r.seconds,
        r.gb_per_s(),
        r.threads
    );
    Ok(())
}

struct RunOpts {
    model: PathBuf,
    ctx: Vec<usize>,
    chunk: usize,
    gen: usize,
    csv: Option<PathBuf>,
    breakdown: Option<PathBuf>,
    deadline_s: f64,
    cuda: CudaOptions,
}

fn parse_run(args: &[String]) -> Result<RunOpts> {
    let mut o = RunOpts {
        model: PathBuf::new(),
        ctx: vec![2048, 8192, 16384, 65536],
        chunk: 2048,
        gen: 32,
        csv: None,
        breakdown: None,
        deadline_s: f64::INFINITY,
        cuda: CudaOptions::default(),
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-m" | "--model" => o.model = PathBuf::from(value(args, &mut i, "-m")?),
            "--ctx" => {
                o.ctx = value(args, &mut i, "--ctx")?
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()?
            }
            "--chunk" => o.chunk = value(args, &mut i, "--chunk")?.parse()?,
            "--gen" => o.gen = value(args, &mut i, "--gen")?.parse()?,
            "--csv" => o.csv = Some(PathBuf::from(value(args, &mut i, "--csv")?)),
            "--breakdown" => o.breakdown = Some(PathBuf::from(value(args, &mut i, "--breakdown")?)),
            "--deadline-s" => o.deadline_s = value(args, &mut i, "--deadline-s")?.parse()?,
            "--exact" => o.cuda.numerics = Numerics::Exact,
            _ if gpu_option(args, &mut i, &mut o.cuda)? => {}
            a => bail!("unknown argument {a}"),
        }
        i += 1;
    }
    if o.model.as_os_str().is_empty() {
        bail!("-m MODEL is required");
    }
    o.ctx.sort_unstable();
    o.ctx.dedup();
    if o.ctx.is_empty() || o.ctx[0] == 0 || o.chunk == 0 || o.gen == 0 {
        bail!("--ctx, --chunk and --gen must be positive");
    }
    Ok(o)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as u32
}

/// `YYYY-MM-DD` (UTC) of now.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    // Civil-from-days (H. Hinnant).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The benchmark prompt: `n` pseudo-random token ids below `vocab`, the
/// same for every command and run.
fn bench_prompt(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % u64::from(vocab)) as u32)
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cmd_run(args: &[String]) -> Result<()> {
    let o = parse_run(args)?;
    let t_start = Instant::now();
    let model = Model::open(&o.model).with_context(|| format!("opening {}", o.model.display()))?;
    let cfg = model.config.clone();
    let t0 = Instant::now();
    let b = CudaBackend::new(&model, o.cuda.clone())?;
    let load_s = t0.elapsed().as_secs_f64();
    let info = b.device_info().clone();
    let bytes_tok = model.weights.decode_bytes_per_token(&cfg);
    let copy_gbs = copy_bandwidth(&b, 2 << 30, 20)?;
    let bound = copy_gbs * 1e9 / bytes_tok as f64;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "card: {} (compute {}.{}, {:.1} GiB)\ndate: {}\ncommand: ds4-cuda-bench run {}\nmodel: {} ({} layers, {:.2} GB file, weights uploaded in {load_s:.1} s)\nnumerics: {}\nweight bytes per decode token: {:.3} GB\ndevice-to-device copy: {copy_gbs:.0} GB/s (read + write)\nbound: {bound:.1} tokens/s\n",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.total_bytes as f64 / (1u64 << 30) as f64,
        today(),
        args.join(" "),
        o.model.display(),
        cfg.n_layer,
        model.file.file_size() as f64 / 1e9,
        o.cuda.numerics.name(),
        bytes_tok as f64 / 1e9,
    );
    print!("{report}");

    let max_ctx = *o.ctx.last().expect("non-empty");
    let vocab = cfg.vocab_size as u32;
    let prompt = bench_prompt(max_ctx, vocab);
    let mut kv = b.new_kv(max_ctx + o.chunk.max(o.gen + 8) + 8, o.chunk)?;
    let timed = Timed::new(&b);
    let mut csv = String::from(
        "card,ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes,\
         decode_ms_median,gpu_ms_step,bytes_per_token,copy_gbs,bound_tps,frac_bound\n",
    );
    let mut breakdown = report.clone();
    let mut done = 0usize;
    let mut last_tps: Option<f64> = None;
    for &f in &o.ctx {
        let mut frontier = || -> Result<bool> {
            let n_new = f - done;
            if let Some(tps) = last_tps {
                // Attention grows with the context: assume 1.5x slower.
                let est = n_new as f64 / tps * 1.5;
                if t_start.elapsed().as_secs_f64() + est > o.deadline_s {
                    println!(
                    "frontier {f}: skipped (estimated {est:.0} s of prefill exceeds the deadline)"
                );
                    let _ = writeln!(breakdown, "frontier {f}: skipped (deadline)");
                    return Ok(false);
                }
            }
            // Prefill.
            let t = Instant::now();
            let logits = forward_chunked(
                &b,
                &model.weights,
                &mut kv,
                &prompt[done..f],
                o.chunk,
                false,
            )?;
            let prefill_s = t.elapsed().as_secs_f64();
            let prefill_tps = n_new as f64 / prefill_s;
            last_tps = Some(prefill_tps);
            done = f;
            let point = b.kv_export(&kv, Export::RewindPoint)?;
            // Decode: warm-up step, then `gen` timed steps.
            let mut next = argmax(&logits);
            next = argmax(&forward(
                &b,
                &model.weights,
                &mut kv,
                &[next],
                Logits::Last,
            )?);
            let mut steps = Vec::with_capacity(o.gen);
            for _ in 0..o.gen {
                let t = Instant::now();
                next = argmax(&forward(
                    &b,
                    &model.weights,
                    &mut kv,
                    &[next],
                    Logits::Last,
                )?);
                steps.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let step_ms = median(&mut steps);
            let gen_tps = 1e3 / step_ms;
            // GPU time of one step: the stream held until the step is queued.
            gate(&b, 30_000_000)?;
            let (r, span) = b
                .gpu()
                .span(|| forward(&b, &model.weights, &mut kv, &[next], Logits::Last))?;
            next = argmax(&r?);
            let gpu_ms = f64::from(span.ms()?);
            // Per-stage and per-kernel breakdown of one step, likewise gated.
            gate(&b, 30_000_000)?;
            timed.on.set(true);
            b.gpu().profile_start();
            let pos = b.kv_len(&kv);
            let r = forward(&timed, &model.weights, &mut kv, &[next], Logits::Last);
            timed.on.set(false);
            r?;
            let kernels = b.gpu().profile_take()?;
            let times = timed.take()?;
            b.kv_rewind(&mut kv, &point)?;
            // One prefill chunk at this frontier, per stage and per kernel.
            let piece: Vec<u32> = (0..o.chunk as u64)
                .map(|i| ((i.wrapping_mul(40_503) >> 3) % u64::from(vocab)) as u32)
                .collect();
            timed.on.set(true);
            b.gpu().profile_start();
            let t = Instant::now();
            let r = forward(&timed, &model.weights, &mut kv, &piece, Logits::Last);
            timed.on.set(false);
            r?;
            let chunk_s = t.elapsed().as_secs_f64();
            let pkernels = b.gpu().profile_take()?;
            let ptimes = timed.take()?;
            b.kv_rewind(&mut kv, &point)?;
            let kv_bytes = b.kv_bytes(&kv);
            let frac = gen_tps / bound;
            println!(
            "ctx {f}: prefill {n_new} tokens in {prefill_s:.2} s = {prefill_tps:.1} tok/s; decode {step_ms:.3} ms/token = {gen_tps:.1} tok/s ({:.1}% of the {bound:.1} tok/s bound); GPU time of a gated step {gpu_ms:.3} ms",
            100.0 * frac
        );
            let _ = writeln!(
            csv,
            "{},{f},{n_new},{prefill_tps:.2},{},{gen_tps:.2},{kv_bytes},{step_ms:.4},{gpu_ms:.4},{bytes_tok},{copy_gbs:.1},{bound:.2},{frac:.4}",
            info.name, o.gen
        );
            let table = stage_table(
                &times,
                &decode_stage_bytes(&model.weights, &cfg, pos),
                gpu_ms,
                step_ms,
            );
            let ktable = kernel_table(&kernels, 30);
            let ptable = prefill_table(&ptimes, o.chunk);
            let pktable = kernel_table(&pkernels, 20);
            let _ = writeln!(
            breakdown,
            "\n## ctx {f}: decode {step_ms:.3} ms/token wall ({gen_tps:.1} tok/s, {:.1}% of bound), gated GPU step {gpu_ms:.3} ms; prefill {prefill_tps:.1} tok/s\n\n### decode step, per stage\n\n{table}\n### decode step, per kernel (events around every launch)\n\n{ktable}\n### one prefill chunk of {} tokens at {f} ({chunk_s:.3} s wall with events = {:.1} tok/s), per stage\n\n{ptable}\n### that chunk, per kernel\n\n{pktable}",
            100.0 * frac,
            o.chunk,
            o.chunk as f64 / chunk_s
        );
            println!("{table}\n{ktable}\n{ptable}\n{pktable}");
            Ok(true)
        };
        match frontier() {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                println!("frontier {f}: failed: {e:#}");
                let _ = writeln!(breakdown, "\nfrontier {f}: failed: {e:#}");
                break;
            }
        }
    }
    if let Some(p) = &o.csv {
        std::fs::write(p, &csv).with_context(|| format!("writing {}", p.display()))?;
    }
    print!("{csv}");
    if let Some(p) = &o.breakdown {
        std::fs::write(p, &breakdown).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// A markdown table of per-kernel times (the `top` slowest, then the rest).
fn kernel_table(k: &[(&'static str, usize, f64)], top: usize) -> String {
    let total: f64 = k.iter().map(|x| x.2).sum();
    let mut s =
        String::from("| kernel | launches | ms | share | µs/launch |\n|---|---:|---:|---:|---:|\n");
    for (name, n, ms) in k.iter().take(top) {
        let _ = writeln!(
            s,
            "| {name} | {n} | {ms:.3} | {:.1}% | {:.1} |",
            100.0 * ms / total.max(1e-12),
            1e3 * ms / *n as f64
        );
    }
    let rest: f64 = k.iter().skip(top).map(|x| x.2).sum();
    let launches: usize = k.iter().map(|x| x.1).sum();
    let _ = writeln!(
        s,
        "| (other {} kernels) | | {rest:.3} | | |\n| **total** | {launches} | {total:.3} | 100% | |",
        k.len().saturating_sub(top)
    );
    s
}

/// A markdown table of one prefill chunk's stage times.
fn prefill_table(t: &StageTimes, tokens: usize) -> String {
    let mut s =
        String::from("| stage | calls | ms | share | µs/token |\n|---|---:|---:|---:|---:|\n");
    let total: f64 = t.ms.iter().sum();
    for st in Stage::ALL {
        let i = st as usize;
        if t.calls[i] == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.1}% | {:.2} |",
            st.name(),
            t.calls[i],
            t.ms[i],
            100.0 * t.ms[i] / total.max(1e-12),
            1e3 * t.ms[i] / tokens as f64
        );
    }
    let _ = writeln!(
        s,
        "| **sum** | | {total:.3} | 100% | {:.2} |",
        1e3 * total / tokens as f64
    );
    s
}

/// A markdown table of one step's stage times.
fn stage_table(t: &StageTimes, bytes: &[u64; 14], gpu_ms: f64, wall_ms: f64) -> String {
    let mut s = String::from(
        "| stage | calls | GPU ms | share | MB moved | GB/s |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let total: f64 = t.ms.iter().sum();
    let total_bytes: u64 = bytes.iter().sum();
    for st in Stage::ALL {
        let i = st as usize;
        if t.calls[i] == 0 {
            continue;
        }
        let gbs = if t.ms[i] > 0.0 {
            bytes[i] as f64 / (t.ms[i] * 1e-3) / 1e9
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.1}% | {:.1} | {:.0} |",
            st.name(),
            t.calls[i],
            t.ms[i],
            100.0 * t.ms[i] / total.max(1e-12),
            bytes[i] as f64 / 1e6,
            gbs
        );
    }
    let _ = writeln!(
        s,
        "| **sum of stages** | | {total:.3} | 100% | {:.1} | {:.0} |\n\n(stage sum with events {total:.3} ms; gated step without events {gpu_ms:.3} ms; ungated wall {wall_ms:.3} ms)",
        total_bytes as f64 / 1e6,
        total_bytes as f64 / (total * 1e-3) / 1e9
    );
    s
}

/// Kernels `marginal` never leaves out: the stream gate, and those whose
/// outputs are indices later launches address memory with.
const NEVER_SKIPPED: [&str; 6] = [
    "spin_ns",
    "route",
    "topk_select",
    "expert_count",
    "expert_tiles",
    "expert_place",
];

/// What each kernel costs a decode step: the gated GPU time of one step
/// (median of `--reps`, KV rewound to the same context each time) with all
/// launches, then with each kernel's launches left out (`Gpu::skip_launches`;
/// the results are garbage, the timing is what counts), then with all again.
/// Where the profiler cannot run, this says which kernels sit on the step's
/// critical path and by how much (docs/bench r53).
fn cmd_marginal(args: &[String]) -> Result<()> {
    let (mut model, mut ctx, mut reps) = (None, 2048usize, 5usize);
    let mut only: Option<Vec<String>> = None;
    let mut opts = CudaOptions::default();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-m" | "--model" => model = Some(PathBuf::from(value(args, &mut i, "-m")?)),
            "--ctx" => ctx = value(args, &mut i, "--ctx")?.parse()?,
            "--reps" => reps = value(args, &mut i, "--reps")?.parse()?,
            "--kernels" => {
                only = Some(
                    value(args, &mut i, "--kernels")?
                        .split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(String::from)
                        .collect(),
                )
            }
            _ if gpu_option(args, &mut i, &mut opts)? => {}
            a => bail!("unknown argument {a}"),
        }
        i += 1;
    }
    let model = model.ok_or_else(|| anyhow!("-m MODEL is required"))?;
    if ctx == 0 || reps == 0 {
        bail!("--ctx and --reps must be positive");
    }
    if let Some(k) = only
        .iter()
        .flatten()
        .find(|k| NEVER_SKIPPED.contains(&k.as_str()))
    {
        bail!("{k} cannot be left out (the gate, or its output is used as indices)");
    }
    let m = Model::open(&model).with_context(|| format!("opening {}", model.display()))?;
    let b = CudaBackend::new(&m, opts)?;
    let prompt = bench_prompt(ctx, m.config.vocab_size as u32);
    let chunk = 2048;
    let mut kv = b.new_kv(ctx + 16, chunk)?;
    let logits = forward_chunked(&b, &m.weights, &mut kv, &prompt, chunk, false)?;
    let next = argmax(&logits);
    let point = b.kv_export(&kv, Export::RewindPoint)?;
    // Warm-up, then which kernels one step launches (and how often).
    forward(&b, &m.weights, &mut kv, &[next], Logits::Last)?;
    b.kv_rewind(&mut kv, &point)?;
    b.gpu().profile_start();
    let r = forward(&b, &m.weights, &mut kv, &[next], Logits::Last);
    let kernels = b.gpu().profile_take()?;
    r?;
    b.kv_rewind(&mut kv, &point)?;
    let mut step = |skip: &[String]| -> Result<f64> {
        b.gpu().skip_launches(skip)?;
        let mut ms = Vec::with_capacity(reps);
        for _ in 0..reps {
            b.kv_rewind(&mut kv, &point)?;
            gate(&b, 30_000_000)?;
            let (r, span) = b
                .gpu()
                .span(|| forward(&b, &m.weights, &mut kv, &[next], Logits::Last))?;
            r?;
            ms.push(f64::from(span.ms()?));
        }
        b.gpu().skip_launches(&[])?;
        b.kv_rewind(&mut kv, &point)?;
        Ok(median(&mut ms))
    };
    let info = b.device_info().clone();
    println!(
        "card: {} (compute {}.{}), date {}, model {} ({} layers), ctx {ctx}, gated step median of {reps}\n",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        today(),
        model.display(),
        m.config.n_layer,
    );
    let base0 = step(&[])?;
    println!("| left out | launches | step ms | saved ms | µs per launch |");
    println!("|---|---:|---:|---:|---:|");
    println!("| nothing | | {base0:.3} | | |");
    for (name, launches, _) in &kernels {
        let wanted = only.as_ref().is_none_or(|o| o.iter().any(|k| k == name));
        if !wanted || NEVER_SKIPPED.contains(name) {
            continue;
        }
        let ms = step(&[name.to_string()])?;
        let saved = base0 - ms;
        println!(
            "| {name} | {launches} | {ms:.3} | {saved:.3} | {:.1} |",
            saved * 1e3 / *launches as f64
        );
    }
    let base1 = step(&[])?;
    println!("| nothing (again) | | {base1:.3} | | |");
    Ok(())
}
