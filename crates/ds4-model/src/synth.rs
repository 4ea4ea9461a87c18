//! Synthetic DeepSeek V4 Flash models in exactly the published GGUF layout.
//!
//! [`plan`] turns a [`SynthSpec`] into the file's metadata (every
//! `deepseek4.*` key ds4 reads, with the GGUF value types it requires, plus
//! tokenizer metadata from the real DeepSeek V4 tokenizer) and its tensor
//! list (names, shapes, types and order of [`crate::layout::main_layout`]).
//! [`write`] streams that plan to disk: the header first, then the tensor
//! data in chunks of whole rows, generated and written by worker threads
//! with positional writes. Chunk `c` of tensor `t` is generated from a PRNG
//! keyed by `(seed, t, c)`, so the bytes do not depend on the thread count.
//!
//! Presets:
//!
//! | preset | shape | routed experts |
//! |---|---|---|
//! | `flash-q2` | production (43 layers, 4096 wide) | IQ2_XXS gate/up, Q2_K down |
//! | `flash-q4` | production | Q4_K gate/up/down |
//! | `tiny` | [`tiny_config`]: 6 layers, d_model 256, full 129,280 vocab (~120 MB) | IQ2_XXS / Q2_K |
//!
//! `layers: Some(n)` keeps every width and the first `n` layers of the
//! preset's schedule (`block_count = n`, `compress_ratios` and
//! `swiglu_clamp_exp` truncated to `n` entries, `hash_layer_count` capped
//! at `n`).
//!
//! Weight values are random but numerically sane (see `fill.rs`): every
//! projection's dequantized elements have mean 0 and σ = 1/sqrt(fan_in).

mod fill;
mod tokenizer;

pub use fill::{fill_for, Fill, Rng};
pub use tokenizer::{
    shipped_tokenizer, tokenizer_metadata, ShippedTokenizer, TOKENIZER_CONFIG_JSON, TOKENIZER_JSON,
};

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ds4_gguf::{GgufError, GgufWriter, TensorSpec, Value, ValueType};
use thiserror::Error;

use crate::config::Config;
use crate::error::ModelError;
use crate::layout::{self, ExpertTypes};

/// Target size of one generated chunk (whole rows; at least one row).
pub const CHUNK_BYTES: u64 = 4 << 20;

/// Why a synthetic model could not be planned or written.
#[derive(Debug, Error)]
pub enum SynthError {
    #[error("layers = {layers}: preset {preset} has layers 1..={max}")]
    Layers {
        preset: Preset,
        layers: usize,
        max: usize,
    },
    #[error("unknown preset '{0}' (expected flash-q2, flash-q4 or tiny)")]
    UnknownPreset(String),
    #[error("shipped tokenizer: {0}")]
    Tokenizer(String),
    #[error("synthetic config is invalid: {0}")]
    Config(#[from] ModelError),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

pub type Result<T> = std::result::Result<T, SynthError>;

/// A synthetic model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Production shape, routed experts as in the published q2 file.
    FlashQ2,
    /// Production shape, routed experts as in the published q4 file.
    FlashQ4,
    /// A small legal shape with the real vocabulary, for tests and demos.
    Tiny,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::FlashQ2, Preset::FlashQ4, Preset::Tiny];

    pub fn name(self) -> &'static str {
        match self {
            Preset::FlashQ2 => "flash-q2",
            Preset::FlashQ4 => "flash-q4",
            Preset::Tiny => "tiny",
        }
    }

    /// Routed-expert types (every layer).
    pub fn experts(self) -> ExpertTypes {
        match self {
            Preset::FlashQ4 => ExpertTypes::Q4,
            Preset::FlashQ2 | Preset::Tiny => ExpertTypes::Q2,
        }
    }

    /// The full-depth shape of this preset.
    pub fn base_config(self) -> Config {
        match self {
            Preset::FlashQ2 | Preset::FlashQ4 => Config::flash(),
            Preset::Tiny => tiny_config(),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| SynthError::UnknownPreset(s.to_string()))
    }
}

/// The `tiny` shape: the `tiny_a` oracle's shape (MODEL.md-legal, every
/// layer kind present) with the full 129,280-token vocabulary so that the
/// real tokenizer fits.
///
/// 6 layers, compress ratios [0, 0, 4, 16, 4, 16] (16 stands in for 128),
/// 3 hash-routed layers; d_model 256; 4 heads × 256 (64 rotary); q LoRA 128;
/// 2 output groups × LoRA 64; 8 experts, 2 used, width 256; window 8;
/// indexer 16 heads × 128, top-4; 4 HC streams. The file is 119.6 MB:
/// 114.3 MB of tensors, almost all `token_embd` (F16, 66 MB) and `output`
/// (Q8_0, 35 MB) at 129,280 × 256, plus 5.3 MB of tokenizer metadata.
pub fn tiny_config() -> Config {
    let compress_ratios = vec![0, 0, 4, 16, 4, 16];
    Config {
        n_layer: compress_ratios.len(),
        d_model: 256,
        n_head: 4,
        head_dim: 256,
        n_rot: 64,
        q_lora_rank: 128,
        o_lora_rank: 64,
        n_out_group: 2,
        n_expert: 8,
        n_expert_used: 2,
        d_ff_expert: 256,
        n_hash_layer: 3,
        sliding_window: 8,
        indexer_heads: 16,
        indexer_head_dim: 128,
        indexer_top_k: 4,
        swiglu_clamp: vec![10.0; compress_ratios.len()],
        compress_ratios,
        ..Config::flash()
    }
}

/// What to synthesize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSpec {
    pub preset: Preset,
    /// Keep only the first N layers (production widths); `None` = all.
    pub layers: Option<usize>,
    pub seed: u64,
    /// Worker threads for [`write`]; 0 = one per available core.
    pub threads: usize,
}

impl SynthSpec {
    pub fn new(preset: Preset) -> Self {
        Self {
            preset,
            layers: None,
            seed: 0,
            threads: 0,
        }
    }

    pub fn layers(mut self, layers: usize) -> Self {
        self.layers = Some(layers);
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// The model shape: the preset's, truncated to `layers`.
    pub fn config(&self) -> Result<Config> {
        let mut cfg = self.preset.base_config();
        if let Some(n) = self.layers {
            if n == 0 || n > cfg.n_layer {
                return Err(SynthError::Layers {
                    preset: self.preset,
                    layers: n,
                    max: cfg.n_layer,
                });
            }
            cfg.n_layer = n;
            cfg.compress_ratios.truncate(n);
            cfg.swiglu_clamp.truncate(n);
            cfg.n_hash_layer = cfg.n_hash_layer.min(n);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn effective_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// A synthetic file before any byte is written.
#[derive(Clone, Debug)]
pub struct Plan {
    pub spec: SynthSpec,
    pub config: Config,
    /// In file order: `general.*`, `deepseek4.*`, `tokenizer.*`.
    pub metadata: Vec<(String, Value)>,
    /// In published order.
    pub tensors: Vec<TensorSpec>,
    /// How each tensor is filled (same index as `tensors`).
    pub fills: Vec<Fill>,
    /// Bytes per tensor (same index as `tensors`).
    pub sizes: Vec<u64>,
}

/// Plans the file for `spec`: metadata, tensor list and fills.
pub fn plan(spec: &SynthSpec) -> Result<Plan> {
    let config = spec.config()?;
    let experts = spec.preset.experts();
    let tensors: Vec<TensorSpec> = layout::main_layout(&config)
        .iter()
        .map(|s| TensorSpec::new(&s.name, &s.dims, layout::concrete_type(s, experts)))
        .collect();
    let sizes = tensors
        .iter()
        .map(TensorSpec::size)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fills: Vec<Fill> = tensors.iter().map(|t| fill_for(t, &config)).collect();
    for (t, f) in tensors.iter().zip(&fills) {
        // Every fill below must match its type: an internal invariant of the
        // layout and `fill_for`, checked once here rather than per chunk.
        assert!(f.supports(t.ggml_type), "{}: {f:?}", t.name);
    }
    let mut metadata = model_metadata(&config, spec);
    metadata.extend(tokenizer_metadata(config.vocab_size).map_err(SynthError::Tokenizer)?);
    Ok(Plan {
        spec: spec.clone(),
        config,
        metadata,
        tensors,
        fills,
        sizes,
    })
}

/// The `general.*` and `deepseek4.*` keys, typed as ds4 requires (MODEL.md
/// §1.1): u32 counts, f32 floats, u64 YaRN original context, an i32 array of
/// compress ratios, an f32 array of SwiGLU clamps, a bool for weight norm.
fn model_metadata(cfg: &Config, spec: &SynthSpec) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let f = Value::F32;
    let layers = match spec.layers {
        Some(n) => format!(", {n} layers"),
        None => String::new(),
    };
    let m: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("deepseek4".into())),
        (
            "general.name",
            Value::String(format!(
                "DeepSeek-V4-Flash synthetic ({}{layers}, seed {})",
                spec.preset, spec.seed
            )),
        ),
        ("general.alignment", Value::U32(32)),
        (
            "deepseek4.context_length",
            Value::U32(cfg.context_length.unwrap_or(1 << 20) as u32),
        ),
        ("deepseek4.block_count", u(cfg.n_layer)),
        ("deepseek4.embedding_length", u(cfg.d_model)),
        ("deepseek4.vocab_size", u(cfg.vocab_size)),
        ("deepseek4.attention.head_count", u(cfg.n_head)),
        ("deepseek4.attention.head_count_kv", u(1)),
        ("deepseek4.attention.key_length", u(cfg.head_dim)),
        ("deepseek4.attention.value_length", u(cfg.head_dim)),
        ("deepseek4.rope.dimension_count", u(cfg.n_rot)),
        ("deepseek4.attention.q_lora_rank", u(cfg.q_lora_rank)),
        ("deepseek4.attention.output_lora_rank", u(cfg.o_lora_rank)),
        ("deepseek4.attention.output_group_count", u(cfg.n_out_group)),
        ("deepseek4.expert_count", u(cfg.n_expert)),
        ("deepseek4.expert_used_count", u(cfg.n_expert_used)),
        ("deepseek4.expert_shared_count", u(cfg.n_expert_shared)),
        ("deepseek4.expert_feed_forward_length", u(cfg.d_ff_expert)),
        ("deepseek4.expert_group_count", u(0)),
        ("deepseek4.expert_group_used_count", u(0)),
        ("deepseek4.hash_layer_count", u(cfg.n_hash_layer)),
        ("deepseek4.attention.sliding_window", u(cfg.sliding_window)),
        (
            "deepseek4.attention.indexer.head_count",
            u(cfg.indexer_heads),
        ),
        (
            "deepseek4.attention.indexer.key_length",
            u(cfg.indexer_head_dim),
        ),
        ("deepseek4.attention.indexer.top_k", u(cfg.indexer_top_k)),
        ("deepseek4.hyper_connection.count", u(cfg.n_hc)),
        (
            "deepseek4.hyper_connection.sinkhorn_iterations",
            u(cfg.sinkhorn_iters),
        ),
        ("deepseek4.hyper_connection.epsilon", f(cfg.hc_eps)),
        ("deepseek4.attention.layer_norm_rms_epsilon", f(cfg.rms_eps)),
        (
            "deepseek4.attention.compress_ratios",
            Value::Array(
                ValueType::I32,
                cfg.compress_ratios
                    .iter()
                    .map(|&r| Value::I32(r as i32))
                    .collect(),
            ),
        ),
        (
            "deepseek4.swiglu_clamp_exp",
            Value::Array(
                ValueType::F32,
                cfg.swiglu_clamp.iter().copied().map(Value::F32).collect(),
            ),
        ),
        ("deepseek4.rope.freq_base", f(cfg.rope_base)),
        (
            "deepseek4.attention.compress_rope_freq_base",
            f(cfg.compress_rope_base),
        ),
        ("deepseek4.rope.scaling.factor", f(cfg.yarn_factor)),
        (
            "deepseek4.rope.scaling.original_context_length",
            Value::U64(cfg.yarn_orig_ctx),
        ),
        (
            "deepseek4.rope.scaling.yarn_beta_fast",
            f(cfg.yarn_beta_fast),
        ),
        (
            "deepseek4.rope.scaling.yarn_beta_slow",
            f(cfg.yarn_beta_slow),
        ),
        (
            "deepseek4.expert_weights_scale",
            f(cfg.expert_weights_scale),
        ),
        (
            "deepseek4.expert_weights_norm",
            Value::Bool(cfg.expert_weights_norm),
        ),
    ];
    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Plan {
    /// Bytes of tensor data (without alignment padding).
    pub fn data_bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// Rows per chunk of tensor `t`: as many whole rows as fit in
    /// [`CHUNK_BYTES`], at least one.
    fn rows_per_chunk(&self, t: usize) -> u64 {
        let row = self.row_bytes(t);
        (CHUNK_BYTES / row).max(1)
    }

    fn row_bytes(&self, t: usize) -> u64 {
        let spec = &self.tensors[t];
        spec.ggml_type
            .row_bytes(spec.dims[0])
            .expect("validated by TensorSpec::size")
    }

    /// Number of chunks of tensor `t`.
    pub fn n_chunks(&self, t: usize) -> u64 {
        let rows = self.sizes[t] / self.row_bytes(t);
        rows.div_ceil(self.rows_per_chunk(t))
    }

    /// Byte range `(offset, len)` of chunk `c` inside tensor `t`.
    pub fn chunk_span(&self, t: usize, c: u64) -> (u64, u64) {
        let bytes = self.rows_per_chunk(t) * self.row_bytes(t);
        let start = c * bytes;
        (start, bytes.min(self.sizes[t] - start))
    }

    /// Generates chunk `c` of tensor `t` into `out` (exactly its length).
    pub fn generate_chunk(&self, t: usize, c: u64, out: &mut [u8]) {
        let (start, len) = self.chunk_span(t, c);
        assert_eq!(out.len() as u64, len, "chunk buffer size");
        let spec = &self.tensors[t];
        let first_elem = start / spec.ggml_type.block_bytes() * spec.ggml_type.block_elems();
        let mut rng = Rng::for_chunk(self.spec.seed, t as u64, c);
        self.fills[t].generate(spec.ggml_type, &mut rng, first_elem, out);
    }

    /// Index of the tensor with this name.
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }
}

/// What [`write`] did.
#[derive(Clone, Debug)]
pub struct SynthReport {
    pub path: PathBuf,
    /// Size of the finished file (header + data + padding).
    pub file_size: u64,
    pub data_bytes: u64,
    pub tensors: usize,
    pub threads: usize,
    /// Wall time of the whole write, planning and final sync included.
    pub seconds: f64,
}

impl SynthReport {
    /// File bytes per second, in GB/s (10⁹).
    pub fn gb_per_s(&self) -> f64 {
        self.file_size as f64 / 1e9 / self.seconds.max(1e-9)
    }
}

/// `path` + `.partial`: where the file grows until it is complete.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut p = OsString::from(path.as_os_str());
    p.push(".partial");
    PathBuf::from(p)
}

/// Writes the synthetic model of `spec` to `path`.
///
/// The file is written as `path.partial` and renamed when complete, so an
/// interrupted run never leaves a plausible-looking model behind; on error
/// the partial file is removed. An existing `path` is an error unless
/// `overwrite`. `progress(done, total)` is called from the worker threads
/// after each chunk with the bytes written so far and the file size.
pub fn write(
    spec: &SynthSpec,
    path: &Path,
    overwrite: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<SynthReport> {
    let start = Instant::now();
    if !overwrite && path.exists() {
        return Err(SynthError::Exists(path.display().to_string()));
    }
    let plan = plan(spec)?;
    let partial = partial_path(path);
    let result = write_plan(&plan, &partial, spec.effective_threads(), progress).and_then(
        |(file_size, threads)| {
            std::fs::rename(&partial, path).map_err(|source| SynthError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Ok(SynthReport {
                path: path.to_path_buf(),
                file_size,
                data_bytes: plan.data_bytes(),
                tensors: plan.tensors.len(),
                threads,
                seconds: start.elapsed().as_secs_f64(),
            })
        },
    );
    if result.is_err() {
        // Best effort: the original error is what the caller needs to see.
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Streams `plan` into `path`; returns (file size, threads used).
fn write_plan(
    plan: &Plan,
    path: &Path,
    threads: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(u64, usize)> {
    let writer = GgufWriter::create(path, &plan.metadata, plan.tensors.clone())?;
    let file_size = writer.layout().file_size;
    let header_bytes = writer.layout().data_offset;
    // Work items in file order, so the file grows front to back.
    let work: Vec<(usize, u64)> = (0..plan.tensors.len())
        .flat_map(|t| (0..plan.n_chunks(t)).map(move |c| (t, c)))
        .collect();
    let threads = threads.clamp(1, work.len().max(1));
    let next = AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicU64::new(header_bytes);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<SynthError>> = Mutex::new(None);
    progress(header_bytes, file_size);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(t, c)) = work.get(i) else { break };
                    let (offset, len) = plan.chunk_span(t, c);
                    buf.resize(len as usize, 0);
                    plan.generate_chunk(t, c, &mut buf);
                    if let Err(e) = writer.write_tensor_at(t, offset, &buf) {
                        failed.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e.into());
                        break;
                    }
                    let so_far = done.fetch_add(len, Ordering::Relaxed) + len;
                    progress(so_far, file_size);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    writer.finish()?;
    Ok((file_size, threads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_validate() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
            SynthSpec::new(p).config().unwrap();
            SynthSpec::new(p).layers(1).config().unwrap();
        }
        assert!("flash".parse::<Preset>().is_err());
        let e = SynthSpec::new(Preset::Tiny).layers(7).config().unwrap_err();
        assert_eq!(e.to_string(), "layers = 7: preset tiny has layers 1..=6");
        assert!(SynthSpec::new(Preset::FlashQ2).layers(0).config().is_err());
    }

    #[test]
    fn truncated_schedule_keeps_the_first_layers() {
        let cfg = SynthSpec::new(Preset::FlashQ2).layers(2).config().unwrap();
        assert_eq!(cfg.n_layer, 2);
        assert_eq!(cfg.compress_ratios, vec![0, 0]);
        assert_eq!(cfg.n_hash_layer, 2);
        assert_eq!(cfg.d_model, 4096);
        let cfg = SynthSpec::new(Preset::FlashQ4).layers(5).config().unwrap();
        assert_eq!(cfg.compress_ratios, vec![0, 0, 4, 128, 4]);
        assert_eq!(cfg.n_hash_layer, 3);
    }

    #[test]
    fn chunks_cover_every_tensor_exactly() {
        let plan = plan(&SynthSpec::new(Preset::Tiny)).unwrap();
        for t in 0..plan.tensors.len() {
            let mut covered = 0;
            for c in 0..plan.n_chunks(t) {
                let (off, len) = plan.chunk_span(t, c);
                assert_eq!(off, covered);
                assert!(len > 0 && len <= CHUNK_BYTES.max(plan.row_bytes(t)));
                covered += len;
            }
            assert_eq!(covered, plan.sizes[t], "{}", plan.tensors[t].name);
        }
    }
}
