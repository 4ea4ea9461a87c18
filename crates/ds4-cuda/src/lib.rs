//! The CUDA backend of ds4: every model stage of [`Backend`] on the GPU.
//!
//! Weights are uploaded once, in their GGUF block formats (the file's whole
//! data section in one allocation, so a tensor is its file offset on the
//! device); activations, KV state, routing and indexer selections stay on
//! the GPU, and only `output_head` copies logits back. Kernels are CUDA C
//! compiled by NVRTC at run time (see [`kernels`]); cudarc loads the CUDA
//! libraries dynamically, so this crate builds and links without CUDA, and
//! [`CudaBackend::new`] reports a clear error where there is none.
//!
//! The stages compute the same functions as the CPU reference (`ds4-cpu`);
//! `ds4-cuda-selftest` checks that on a GPU.

mod attention;
pub mod bench;
pub mod error;
mod ffn;
pub mod gpu;
mod hc;
pub mod kernels;
pub mod kv;
pub mod memory;
mod ops;
mod payload;
pub mod selftest;

use std::sync::{Arc, Mutex};

use cudarc::driver::CudaSlice;
use ds4_gguf::{GgmlType, GgufFile};
use ds4_model::backend::{AttentionInputs, Backend, CompressorKind, Export, Result as BResult};
use ds4_model::numerics::{Numerics, Rope};
use ds4_model::payload::KvState;
use ds4_model::weights::{
    AttentionWeights, CompressorWeights, FfnWeights, HcWeights, IndexerWeights, Routing,
};
use ds4_model::{Config, Model, Tensor, Weights};

pub use error::{CudaError, Result};
pub use gpu::{DevBuf, DeviceInfo};
pub use kv::CudaKv;
pub use memory::MemoryPlan;

/// Options of the CUDA backend.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    pub numerics: Numerics,
    /// CUDA device ordinal.
    pub device: usize,
    /// Which decode GEMVs stage the activation row in shared memory.
    pub gemv_staging: GemvStaging,
    /// Programmatic dependent launch (compute capability 9.0 and up): each
    /// kernel may be launched while the previous one finishes, hiding the
    /// launch latency between the ~1,300 small kernels of a decode step.
    /// Results are the same either way (every kernel waits for its
    /// predecessor before reading memory).
    pub dependent_launch: bool,
    /// Q8_0 decode GEMVs keep their slice of the activation row in
    /// registers (rows of 1024, 2048, 4096 or 8192 values): each row's
    /// sum is split over k differently from the plain kernel (agrees to
    /// rounding), still one fixed order.
    pub q8_0_x_registers: bool,
    /// Batch (prefill) attention on the tensor cores (`attend_mma`, 32
    /// heads of a token per block; exact products of f16 parts, f32 sums)
    /// rather than `attend_part` (8 heads per block, f32 on the CUDA
    /// cores); the two agree to rounding.
    pub tensor_core_attention: bool,
    /// Decode GEMVs of IQ2_XXS and Q2_K weights (the routed experts) take
    /// the activation row as three int8 planes per 32 values (21 bits below
    /// the group's largest value) and sum with dp4a (`matvec_i8.cu`),
    /// rather than decoding every weight to f32; the two agree to rounding.
    pub int8_expert_gemvs: bool,
}

/// Per weight format, whether the fast decode GEMV first copies the
/// activation row into shared memory (matvec.cu `gemv_impl`). Staged and
/// unstaged kernels give bit-identical results; the choice is speed only.
/// The default stages IQ2_XXS alone: on an H200 (docs/bench run r6) that
/// took the expert GEMV from 72 to 43 µs per launch, left Q8_0 unchanged
/// and made Q2_K slower (23 → 25 µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvStaging {
    pub q8_0: bool,
    pub q2_k: bool,
    pub iq2_xxs: bool,
}

impl Default for GemvStaging {
    fn default() -> Self {
        Self {
            q8_0: false,
            q2_k: false,
            iq2_xxs: true,
        }
    }
}

impl GemvStaging {
    /// From a comma list of `q8_0`, `q2_k`, `iq2_xxs`, `all` or `none`.
    pub fn parse(list: &str) -> std::result::Result<Self, String> {
        let mut s = Self {
            q8_0: false,
            q2_k: false,
            iq2_xxs: false,
        };
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "q8_0" => s.q8_0 = true,
                "q2_k" => s.q2_k = true,
                "iq2_xxs" => s.iq2_xxs = true,
                "all" => {
                    s = Self {
                        q8_0: true,
                        q2_k: true,
                        iq2_xxs: true,
                    }
                }
                "none" => {}
                other => {
                    return Err(format!(
                        "'{other}' is not one of q8_0, q2_k, iq2_xxs, all, none"
                    ))
                }
            }
        }
        Ok(s)
    }

    pub fn stages(&self, t: ds4_gguf::GgmlType) -> bool {
        match t {
            ds4_gguf::GgmlType::Q8_0 => self.q8_0,
            ds4_gguf::GgmlType::Q2_K => self.q2_k,
            ds4_gguf::GgmlType::IQ2_XXS => self.iq2_xxs,
            _ => false,
        }
    }
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            numerics: Numerics::Official,
            device: 0,
            gemv_staging: GemvStaging::default(),
            dependent_launch: true,
            q8_0_x_registers: true,
            tensor_core_attention: true,
            int8_expert_gemvs: true,
        }
    }
}

/// A batch of activation rows on the device: `rows × width` f32, row-major.
pub struct CudaAct {
    pub rows: usize,
    pub width: usize,
    pub buf: DevBuf<f32>,
}

/// What HC-pre hands to HC-post: per token `post` (n_hc) then the Sinkhorn
/// matrix (n_hc × n_hc), as in the CPU backend's `Mix`.
pub struct CudaMix {
    pub rows: usize,
    pub buf: DevBuf<f32>,
}

/// Chosen experts (i32) and their weights, `[T × n_expert_used]` each.
pub struct CudaRoutes {
    pub rows: usize,
    pub ids: DevBuf<i32>,
    pub weights: DevBuf<f32>,
}

/// Per token, the `indexer_top_k` compressed rows it attends to, ascending,
/// `[T × top_k]` i32. Tokens that see at most top_k rows attend to all of
/// them and have no entries; `sel` is `None` when no token of the batch has.
pub struct CudaSelection {
    pub rows: usize,
    pub pos0: usize,
    pub sel: Option<DevBuf<i32>>,
}

/// The model file's data section in VRAM.
struct DeviceWeights {
    /// Owns the allocation `ptr` points into.
    _buf: CudaSlice<u8>,
    ptr: u64,
    /// File offset of `buf[0]`.
    base: usize,
    len: usize,
}

impl DeviceWeights {
    /// The device address of a tensor's first byte.
    fn addr(&self, t: &Tensor) -> Result<u64> {
        if t.offset < self.base || t.offset + t.size > self.base + self.len {
            return Err(CudaError::Invalid(format!(
                "tensor {} lies outside the uploaded model data",
                t.name
            )));
        }
        Ok(self.ptr + (t.offset - self.base) as u64)
    }
}

pub struct CudaBackend {
    gpu: gpu::Gpu,
    cfg: Config,
    opts: CudaOptions,
    weights: DeviceWeights,
    /// Rotary inverse frequencies per layer (host-computed, as the CPU does).
    ropes: Vec<CudaSlice<f32>>,
    plan: MemoryPlan,
    /// The token ids of the last `embed`, on the device: hash routing of
    /// the same batch reuses them instead of copying them again.
    tokens: Mutex<Option<(Vec<u32>, DevBuf<i32>)>>,
    /// `hc_pre_one`'s count of finished blocks (zero between launches).
    hc_done: CudaSlice<u32>,
}

/// Weight types the matrix kernels decode.
const MATRIX_TYPES: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q4_K,
    GgmlType::IQ2_XXS,
];

impl CudaBackend {
    /// Opens the GPU, compiles or loads the kernels and uploads the model's
    /// weights. Fails with a clear error (never a panic) when there is no
    /// CUDA driver, no NVRTC, no device, or not enough memory.
    pub fn new(model: &Model, opts: CudaOptions) -> Result<Self> {
        let cfg = model.config.clone();
        check_supported(&cfg, &model.weights)?;
        gpu::check_libraries()?;
        let mut gpu = gpu::Gpu::open(opts.device)?;
        gpu.set_dependent_launch(opts.dependent_launch);
        let file: &Arc<GgufFile> = &model.file;
        let plan = MemoryPlan::new(
            &cfg,
            file.tensors().iter().map(|t| (t.ggml_type, t.size)),
            0,
            1,
        );
        let (free, total) = gpu.mem_info()?;
        plan.check(free as u64, total as u64, &gpu.info.name)?;
        validate_hash_tables(model)?;
        let weights = upload_data(&gpu, file)?;
        let ropes = (0..cfg.n_layer)
            .map(|il| gpu.upload(&Rope::for_layer(&cfg, il).inv_freq))
            .collect::<Result<Vec<_>>>()?;
        let hc_done = gpu.zeros(1)?;
        Ok(Self {
            gpu,
            cfg,
            opts,
            weights,
            ropes,
            plan,
            tokens: Mutex::new(None),
            hc_done,
        })
    }

    /// The device address of `tokens` as i32 ids (uploaded once per batch).
    pub(crate) fn token_ids(&self, tokens: &[u32]) -> Result<u64> {
        let mut cache = self
            .tokens
            .lock()
            .map_err(|_| CudaError::Invalid("token cache poisoned".into()))?;
        if let Some((t, buf)) = cache.as_ref() {
            if t.as_slice() == tokens {
                return Ok(self.gpu.ptr(buf));
            }
        }
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let buf = DevBuf::owned(self.gpu.upload(&ids)?);
        let p = self.gpu.ptr(&buf);
        *cache = Some((tokens.to_vec(), buf));
        Ok(p)
    }

    /// The device context (for tools that time or copy on the same stream).
    pub fn gpu(&self) -> &gpu::Gpu {
        &self.gpu
    }

    pub fn device_info(&self) -> &DeviceInfo {
        &self.gpu.info
    }

    pub fn numerics(&self) -> Numerics {
        self.opts.numerics
    }

    /// Changes the numerics mode (the weights stay uploaded).
    pub fn set_numerics(&mut self, numerics: Numerics) {
        self.opts.numerics = numerics;
    }

    /// The memory plan of the uploaded weights.
    pub fn weights_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    fn official(&self) -> bool {
        self.opts.numerics == Numerics::Official
    }

    /// Copies host rows to a device activation.
    pub fn upload_act(&self, rows: usize, width: usize, data: &[f32]) -> Result<CudaAct> {
        if data.len() != rows * width {
            return Err(CudaError::Invalid(format!(
                "activation of {} values is not {rows} × {width}",
                data.len()
            )));
        }
        Ok(CudaAct {
            rows,
            width,
            buf: DevBuf::owned(self.gpu.upload(data)?),
        })
    }

    /// Copies a device activation to the host.
    pub fn download_act(&self, a: &CudaAct) -> Result<Vec<f32>> {
        self.gpu.download(&a.buf, a.rows * a.width)
    }

    /// `(ids, weights)` of a routing, on the host.
    pub fn routes_to_host(&self, r: &CudaRoutes) -> Result<(Vec<u32>, Vec<f32>)> {
        let n = r.rows * self.cfg.n_expert_used;
        let ids = self.gpu.download(&r.ids, n)?;
        Ok((
            ids.into_iter().map(|i| i as u32).collect(),
            self.gpu.download(&r.weights, n)?,
        ))
    }

    /// Per token, the selected compressed rows (`None`: all visible rows),
    /// in the CPU backend's `Selection` form.
    pub fn selection_to_host(&self, s: &CudaSelection, layer: usize) -> Result<ds4_cpu::Selection> {
        let k = self.cfg.indexer_top_k;
        let ratio = self.cfg.compress_ratios[layer];
        let all = match &s.sel {
            Some(buf) => self.gpu.download(buf, s.rows * k)?,
            None => Vec::new(),
        };
        Ok((0..s.rows)
            .map(|t| {
                let visible = (s.pos0 + t + 1) / ratio;
                (s.sel.is_some() && visible > k)
                    .then(|| all[t * k..(t + 1) * k].iter().map(|&i| i as u32).collect())
            })
            .collect())
    }

    /// A host selection (the CPU backend's form) as a device selection.
    pub fn selection_from_host(
        &self,
        s: &ds4_cpu::Selection,
        layer: usize,
        pos0: usize,
    ) -> Result<CudaSelection> {
        let k = self.cfg.indexer_top_k;
        let ratio = self.cfg.compress_ratios[layer];
        let mut flat = vec![0i32; s.len() * k];
        let mut any = false;
        for (t, sel) in s.iter().enumerate() {
            let visible = (pos0 + t + 1) / ratio.max(1);
            match sel {
                Some(rows) if rows.len() == k && visible > k => {
                    any = true;
                    for (d, &r) in flat[t * k..(t + 1) * k].iter_mut().zip(rows) {
                        *d = r as i32;
                    }
                }
                None if visible <= k => {}
                _ => {
                    return Err(CudaError::Invalid(format!(
                        "token {t}: a selection must hold {k} rows exactly when more are visible"
                    )))
                }
            }
        }
        Ok(CudaSelection {
            rows: s.len(),
            pos0,
            sel: if any {
                Some(DevBuf::owned(self.gpu.upload(&flat)?))
            } else {
                None
            },
        })
    }

    /// The compressed rows a layer's compressor has emitted so far.
    pub fn compressed_rows(
        &self,
        kv: &CudaKv,
        layer: usize,
        kind: CompressorKind,
    ) -> Result<Vec<f32>> {
        let l = &kv.layers[layer];
        let c = match kind {
            CompressorKind::Attention => l.attn.as_ref(),
            CompressorKind::Indexer => l.index.as_ref(),
        }
        .ok_or_else(|| CudaError::Invalid(format!("layer {layer} has no {kind:?} compressor")))?;
        self.gpu.download(&c.rows, c.n_rows * c.dim)
    }

    /// Runs a numerics kernel on host rows and returns the result (for the
    /// self-test's bit-exactness checks of the simulations).
    pub fn simulate(&self, which: Simulation, width: usize, data: &[f32]) -> Result<Vec<f32>> {
        let rows = data.len() / width.max(1);
        let a = self.upload_act(rows, width, data)?;
        let p = self.gpu.ptr(&a.buf);
        match which {
            Simulation::Fp8 { n_nope } => self.gpu.launch(
                "fp8_rows",
                (rows as u32, 1, 1),
                256,
                0,
                &[
                    gpu::Arg::Ptr(p),
                    gpu::Arg::I32(width as i32),
                    gpu::Arg::I32(n_nope as i32),
                ],
            )?,
            Simulation::HadamardFp4 { fp4 } => {
                if width != 128 {
                    return Err(CudaError::Unsupported(
                        "Hadamard rows must be 128 wide".into(),
                    ));
                }
                self.gpu.launch(
                    "hadamard128_rows",
                    ((rows as u32).div_ceil(8), 1, 1),
                    256,
                    0,
                    &[
                        gpu::Arg::Ptr(p),
                        gpu::Arg::I32(rows as i32),
                        gpu::Arg::I32(fp4 as i32),
                    ],
                )?
            }
            Simulation::F16Round => self.gpu.launch(
                "f16_round_rows",
                ((data.len() as u32).div_ceil(256).max(1), 1, 1),
                256,
                0,
                &[gpu::Arg::Ptr(p), gpu::Arg::I64(data.len() as i64)],
            )?,
        }
        self.download_act(&a)
    }
}

/// The numerics kernels [`CudaBackend::simulate`] can run.
#[derive(Clone, Copy, Debug)]
pub enum Simulation {
    Fp8 { n_nope: usize },
    HadamardFp4 { fp4: bool },
    F16Round,
}

/// Shapes and types the kernels were written for.
fn check_supported(cfg: &Config, w: &Weights) -> Result<()> {
    let no = |what: String| Err(CudaError::Unsupported(what));
    if cfg.n_hc > 8 {
        return no(format!("{} hyper-connection streams (at most 8)", cfg.n_hc));
    }
    if cfg.n_expert_used > 16 {
        return no(format!(
            "{} experts per token (at most 16)",
            cfg.n_expert_used
        ));
    }
    if cfg.indexer_head_dim != 128 {
        return no(format!(
            "indexer head dim {} (the Hadamard kernel is 128 wide)",
            cfg.indexer_head_dim
        ));
    }
    if !cfg.n_rot.is_multiple_of(2) || cfg.n_rot > cfg.head_dim {
        return no(format!("{} rotary dims", cfg.n_rot));
    }
    if w.token_embd.ggml_type != GgmlType::F16 {
        return no(format!("token_embd of type {}", w.token_embd.ggml_type));
    }
    let mut matrices: Vec<&Tensor> = vec![&w.output, &w.output_hc.func];
    for l in &w.layers {
        let a = &l.attn;
        matrices.extend([&l.hc_attn.func, &l.hc_ffn.func, &a.q_a, &a.q_b, &a.kv]);
        matrices.extend([&a.output_a, &a.output_b, &l.ffn.router]);
        matrices.extend([&l.ffn.gate_exps, &l.ffn.up_exps, &l.ffn.down_exps]);
        matrices.extend([&l.ffn.gate_shared, &l.ffn.up_shared, &l.ffn.down_shared]);
        for c in a
            .compressor
            .iter()
            .chain(a.indexer.as_ref().map(|i| &i.compressor))
        {
            matrices.extend([&c.kv, &c.gate]);
            if c.ape.ggml_type != GgmlType::F16 {
                return no(format!("{} of type {}", c.ape.name, c.ape.ggml_type));
            }
        }
        if let Some(ix) = &a.indexer {
            matrices.extend([&ix.q_b, &ix.proj]);
        }
    }
    for t in matrices {
        if !MATRIX_TYPES.contains(&t.ggml_type) {
            return no(format!("{} of type {}", t.name, t.ggml_type));
        }
    }
    Ok(())
}

/// Hash routing reads expert ids on the GPU, where an out-of-range id could
/// not be reported; so every table entry is checked once, here.
fn validate_hash_tables(model: &Model) -> Result<()> {
    for (il, l) in model.weights.layers.iter().enumerate() {
        if let Routing::Hash { tid2eid } = &l.ffn.routing {
            let bytes = model.bytes(tid2eid);
            for (i, c) in bytes.chunks_exact(4).enumerate() {
                let id = i32::from_le_bytes(c.try_into().expect("4 bytes"));
                if id < 0 || id as usize >= model.config.n_expert {
                    return Err(CudaError::Invalid(format!(
                        "layer {il}: tid2eid maps token {} to expert {id}, outside 0..{}",
                        i / model.config.n_expert_used,
                        model.config.n_expert
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Copies the file's data section (every tensor) into one device buffer.
fn upload_data(gpu: &gpu::Gpu, file: &GgufFile) -> Result<DeviceWeights> {
    let base = file.data_offset as usize;
    let bytes = &file.bytes()[base..];
    let len = bytes.len();
    let mut buf = gpu.alloc::<u8>(len)?;
    // Chunks keep each pageable copy's staging bounded.
    const CHUNK: usize = 256 << 20;
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        let mut dst = buf.slice_mut(i * CHUNK..i * CHUNK + chunk.len());
        gpu.stream.memcpy_htod(chunk, &mut dst)?;
    }
    let ptr = gpu.ptr(&buf);
    ops::repack_file(gpu, file, ptr, base)?;
    gpu.synchronize()?;
    Ok(DeviceWeights {
        _buf: buf,
        ptr,
        base,
        len,
    })
}

impl Backend for CudaBackend {
    type Act = CudaAct;
    type Mix = CudaMix;
    type Kv = CudaKv;
    type Selection = CudaSelection;
    type Routes = CudaRoutes;

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn new_kv(&self, ctx: usize, max_batch: usize) -> BResult<CudaKv> {
        if ctx == 0 || max_batch == 0 {
            return Err(
                CudaError::Invalid("context and batch size must be at least 1".into()).into(),
            );
        }
        let need = memory::kv_bytes(&self.cfg, ctx, max_batch)
            + memory::scratch_bytes(&self.cfg, ctx, max_batch);
        let (free, total) = self.gpu.mem_info()?;
        if need > free as u64 {
            let plan = MemoryPlan {
                kv: memory::kv_bytes(&self.cfg, ctx, max_batch),
                scratch: memory::scratch_bytes(&self.cfg, ctx, max_batch),
                ctx,
                max_batch,
                ..self.plan.clone()
            };
            return Err(CudaError::OutOfMemory(format!(
                "a session of {ctx} tokens (batch {max_batch}) needs {:.2} GiB more than the {:.2} GiB free on {} ({:.2} GiB total)\n{}",
                (need - free as u64) as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64,
                self.gpu.info.name,
                total as f64 / (1u64 << 30) as f64,
                plan.report()
            ))
            .into());
        }
        Ok(CudaKv::new(&self.gpu, &self.cfg, ctx, max_batch)?)
    }

    fn kv_len(&self, kv: &CudaKv) -> usize {
        kv.n_tokens
    }

    fn kv_advance(&self, kv: &mut CudaKv, n: usize) -> BResult<()> {
        kv.n_tokens += n;
        Ok(())
    }

    fn kv_export(&self, kv: &CudaKv, what: Export) -> BResult<KvState> {
        Ok(self.kv_export_impl(kv, what)?)
    }

    fn kv_import(&self, kv: &mut CudaKv, state: &KvState) -> BResult<()> {
        self.kv_import_impl(kv, state)
    }

    fn kv_rewind(&self, kv: &mut CudaKv, point: &KvState) -> BResult<()> {
        self.kv_rewind_impl(kv, point)
    }

    fn kv_bytes(&self, kv: &CudaKv) -> usize {
        self.kv_bytes_impl(kv)
    }

    fn embed(&self, token_embd: &Tensor, tokens: &[u32], pos0: usize) -> BResult<CudaAct> {
        self.embed_impl(token_embd, tokens, pos0)
    }

    fn hc_pre(&self, w: &HcWeights, x: &CudaAct) -> BResult<(CudaAct, CudaMix)> {
        Ok(self.hc_pre_impl(w, x, None)?)
    }

    fn hc_pre_norm(
        &self,
        w: &HcWeights,
        x: &CudaAct,
        norm: &Tensor,
    ) -> BResult<(CudaAct, CudaMix)> {
        Ok(self.hc_pre_impl(w, x, Some(norm))?)
    }

    fn hc_post(&self, x: &mut CudaAct, f: &CudaAct, mix: &CudaMix) -> BResult<()> {
        Ok(self.hc_post_impl(x, f, mix)?)
    }

    fn hc_post_pre_norm(
        &self,
        x: &mut CudaAct,
        f: &CudaAct,
        mix: &CudaMix,
        next: &HcWeights,
        norm: &Tensor,
    ) -> BResult<(CudaAct, CudaMix)> {
        Ok(self.hc_post_pre_norm_impl(x, f, mix, next, norm)?)
    }

    fn rms_norm(&self, x: &CudaAct, weight: &Tensor) -> BResult<CudaAct> {
        let out = self.new_act(x.rows, x.width)?;
        self.rms_rows(&out, x, Some(weight))?;
        Ok(out)
    }

    fn attention_inputs(
        &self,
        layer: usize,
        w: &AttentionWeights,
        n: &CudaAct,
        pos0: usize,
    ) -> BResult<AttentionInputs<CudaAct>> {
        Ok(self.attention_inputs_impl(layer, w, n, pos0)?)
    }

    fn append_raw(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        rows: &CudaAct,
        pos0: usize,
    ) -> BResult<()> {
        self.append_raw_impl(kv, layer, rows, pos0)
    }

    fn compress(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        kind: CompressorKind,
        w: &CompressorWeights,
        n: &CudaAct,
        pos0: usize,
    ) -> BResult<()> {
        Ok(self.compress_impl(kv, layer, kind, w, n, pos0)?)
    }

    fn index(
        &self,
        kv: &CudaKv,
        layer: usize,
        w: &IndexerWeights,
        n: &CudaAct,
        q_latent: &CudaAct,
        pos0: usize,
    ) -> BResult<CudaSelection> {
        Ok(self.index_impl(kv, layer, w, n, q_latent, pos0)?)
    }

    fn attend(
        &self,
        kv: &CudaKv,
        layer: usize,
        q: &CudaAct,
        sinks: &Tensor,
        selection: Option<&CudaSelection>,
        pos0: usize,
    ) -> BResult<CudaAct> {
        let tensor_cores = self.opts.tensor_core_attention;
        Ok(self.attend_with(kv, layer, q, sinks, selection, pos0, tensor_cores)?)
    }

    fn attention_output(
        &self,
        layer: usize,
        w: &AttentionWeights,
        o: &CudaAct,
        pos0: usize,
    ) -> BResult<CudaAct> {
        Ok(self.attention_output_impl(layer, w, o, pos0)?)
    }

    fn route(
        &self,
        layer: usize,
        w: &FfnWeights,
        n: &CudaAct,
        tokens: &[u32],
    ) -> BResult<CudaRoutes> {
        Ok(self.route_impl(layer, w, n, tokens)?)
    }

    fn experts(
        &self,
        layer: usize,
        w: &FfnWeights,
        n: &CudaAct,
        routes: &CudaRoutes,
    ) -> BResult<CudaAct> {
        Ok(self.experts_impl(layer, w, n, routes)?)
    }

    fn output_head(
        &self,
        weights: &Weights,
        x: &CudaAct,
        rows: std::ops::Range<usize>,
    ) -> BResult<Vec<f32>> {
        Ok(self.output_head_impl(weights, x, rows)?)
    }
}
