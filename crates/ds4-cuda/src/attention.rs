//! The attention sublayer's stages (MODEL.md 3.2-3.7).

use ds4_model::backend::{check_batch_fits, AttentionInputs, CompressorKind, Result as BResult};
use ds4_model::weights::{AttentionWeights, CompressorWeights, IndexerWeights};
use ds4_model::Tensor;

use crate::error::{CudaError, Result};
use crate::gpu::{Arg, DevBuf, NULL};
use crate::kv::CudaKv;
use crate::ops::{Items, BLOCK, WARPS};
use crate::{CudaAct, CudaBackend, CudaSelection};

/// Blocks a decode step's tiled indexer launch must fill before it
/// replaces the one-row-per-warp kernel (about two per SM).
const INDEX_TILED_MIN_BLOCKS: usize = 256;

/// The indexer-score kernels. All three compute every score with the same
/// operations in the same order (bit-identical); they differ in how the
/// work is tiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexScoresKernel {
    /// `index_scores`: one row per warp, 8 rows per block.
    RowPerWarp,
    /// `index_scores_t4`: 64 heads x 64 rows per block, one token.
    Tiled64,
    /// `index_scores_t8`: 64 heads x 128 rows per block, 4 tokens.
    Tiled128,
}

impl IndexScoresKernel {
    pub const ALL: [Self; 3] = [Self::RowPerWarp, Self::Tiled64, Self::Tiled128];

    /// Batches and decode steps over many rows run a register-tiled kernel;
    /// a decode step over fewer rows keeps one row per warp so that it
    /// still spreads over the SMs.
    fn for_batch(tokens: usize, visible_last: usize) -> Self {
        if tokens >= 4 {
            Self::Tiled128
        } else if visible_last / 64 >= INDEX_TILED_MIN_BLOCKS {
            Self::Tiled64
        } else {
            Self::RowPerWarp
        }
    }
}

/// Device addresses and sizes of one indexer-score launch: `scores` is
/// `tokens x visible_last`; `q` holds `heads x 128` per token, `weights`
/// `heads` per token; `keys` the compressed indexer rows.
pub(crate) struct IndexScoresArgs {
    pub scores: u64,
    pub q: u64,
    pub weights: u64,
    pub keys: u64,
    pub heads: usize,
    pub scale: f32,
    pub pos0: usize,
    pub ratio: usize,
    pub tokens: usize,
    pub visible_last: usize,
}

impl CudaBackend {
    /// `n` f32 values at `src` (n a multiple of 4) as f16 (round to nearest
    /// even), in a pool buffer of `n / 2` f32 slots.
    fn f16_copy(&self, src: u64, n: usize) -> Result<DevBuf<f32>> {
        let dst = self.gpu.buf::<f32>(n.div_ceil(2).max(1))?;
        if n > 0 {
            self.gpu.launch(
                "to_f16",
                ((n / 4).div_ceil(BLOCK as usize) as u32, 1, 1),
                BLOCK,
                0,
                &[
                    Arg::Ptr(self.gpu.ptr(&dst)),
                    Arg::Ptr(src),
                    Arg::I64(n as i64),
                ],
            )?;
        }
        Ok(dst)
    }

    /// Scores every visible indexer row of every token (entries past a
    /// token's visible count are left unwritten).
    pub(crate) fn index_scores(
        &self,
        kernel: IndexScoresKernel,
        a: &IndexScoresArgs,
    ) -> Result<()> {
        let visible = a.visible_last as u32;
        let (name, rows_per_block, tokens_per_block) = match kernel {
            IndexScoresKernel::RowPerWarp => ("index_scores", 8, 1),
            IndexScoresKernel::Tiled64 => ("index_scores_t4", 64, 1),
            IndexScoresKernel::Tiled128 => ("index_scores_t8", 128, 4),
        };
        let grid = (
            visible.div_ceil(rows_per_block),
            (a.tokens as u32).div_ceil(tokens_per_block),
            1,
        );
        let common = [
            Arg::Ptr(a.scores),
            Arg::I64(a.visible_last as i64),
            Arg::Ptr(a.q),
            Arg::Ptr(a.weights),
            Arg::Ptr(a.keys),
            Arg::I32(a.heads as i32),
        ];
        if kernel == IndexScoresKernel::RowPerWarp {
            // Queries (rows of 129) and weights, padded to 16 bytes; keys.
            let smem = ((a.heads * 130).next_multiple_of(4) + 8 * 128) * 4;
            let rest = [
                Arg::I32(128),
                Arg::F32(a.scale),
                Arg::I32(a.pos0 as i32),
                Arg::I32(a.ratio as i32),
                Arg::I32(rows_per_block as i32),
            ];
            let args: Vec<Arg> = common.into_iter().chain(rest).collect();
            return self.gpu.launch(name, grid, BLOCK, smem as u32, &args);
        }
        // Key tile (128 x rows), queries / head products, weights.
        let rb = rows_per_block as usize;
        let smem = (128 * rb + (128 * 64).max(64 * (rb + 1)) + 64) * 4;
        let rest = [
            Arg::F32(a.scale),
            Arg::I32(a.pos0 as i32),
            Arg::I32(a.ratio as i32),
            Arg::I32(a.tokens as i32),
            Arg::I32(tokens_per_block as i32),
        ];
        let args: Vec<Arg> = common.into_iter().chain(rest).collect();
        self.gpu.launch(name, grid, 256, smem as u32, &args)
    }

    /// One indexer-score launch on host data (self-test: the kernels must
    /// agree bit for bit). Returns `tokens x visible_last` scores with the
    /// entries a kernel leaves unwritten set to NaN.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn index_scores_on_host_data(
        &self,
        kernel: IndexScoresKernel,
        heads: usize,
        pos0: usize,
        ratio: usize,
        q: &[f32],
        weights: &[f32],
        keys: &[f32],
    ) -> Result<Vec<f32>> {
        let tokens = weights.len() / heads;
        let visible_last = (pos0 + tokens) / ratio;
        if q.len() != tokens * heads * 128 || keys.len() < visible_last * 128 {
            return Err(CudaError::Invalid(
                "index_scores_on_host_data: sizes".into(),
            ));
        }
        let scores = self.gpu.upload(&vec![f32::NAN; tokens * visible_last])?;
        let (qd, wd, kd) = (
            self.gpu.upload(q)?,
            self.gpu.upload(weights)?,
            self.gpu.upload(keys)?,
        );
        self.index_scores(
            kernel,
            &IndexScoresArgs {
                scores: self.gpu.ptr(&scores),
                q: self.gpu.ptr(&qd),
                weights: self.gpu.ptr(&wd),
                keys: self.gpu.ptr(&kd),
                heads,
                scale: 1.0 / ((heads * 128) as f32).sqrt(),
                pos0,
                ratio,
                tokens,
                visible_last,
            },
        )?;
        self.gpu.download(&scores, tokens * visible_last)
    }
}

/// Dynamic shared memory for `n` floats, plus one 16-byte slot: ptxas may
/// hoist a 128-bit shared load of a loop's tail above its bounds check
/// (seen in `attend` under compute-sanitizer), so the last chunk must exist.
fn padded_smem(n: usize) -> u32 {
    ((n + 4) * 4).next_multiple_of(16) as u32
}

impl CudaBackend {
    pub(crate) fn attention_inputs_impl(
        &self,
        layer: usize,
        w: &AttentionWeights,
        n: &CudaAct,
        pos0: usize,
    ) -> Result<AttentionInputs<CudaAct>> {
        let cfg = &self.cfg;
        let (t, hd, heads, d) = (n.rows, cfg.head_dim, cfg.n_head, cfg.d_model);
        let rank = cfg.q_lora_rank;
        let q_latent = self.new_act(t, rank)?;
        let kv = self.new_act(t, hd)?;
        let pn = self.ptr(n);
        let (qa, kvm) = (self.mat(&w.q_a)?, self.mat(&w.kv)?);
        let jobs = [
            (qa, Items::plain(t, pn, d, self.ptr(&q_latent), rank)),
            (kvm, Items::plain(t, pn, d, self.ptr(&kv), hd)),
        ];
        if qa.ggml_type == kvm.ggml_type {
            self.products(&jobs)?;
        } else {
            self.products(&jobs[..1])?;
            self.products(&jobs[1..])?;
        }
        let n_pairs = cfg.n_rot / 2;
        let freqs = self.gpu.ptr(&self.ropes[layer]);
        self.gpu.launch(
            "qkv_post",
            (t as u32, 2, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.ptr(&q_latent)),
                Arg::Ptr(self.addr(&w.q_a_norm)?),
                Arg::I32(rank as i32),
                Arg::Ptr(self.ptr(&kv)),
                Arg::Ptr(self.addr(&w.kv_norm)?),
                Arg::I32(hd as i32),
                Arg::Ptr(freqs),
                Arg::I32(n_pairs as i32),
                Arg::I32(pos0 as i32),
                Arg::I32(self.official() as i32),
                Arg::F32(cfg.rms_eps),
            ],
        )?;
        let q = self.matmul(&w.q_b, &q_latent)?;
        // Per-head unweighted norm and RoPE: the heads are rows of head_dim.
        self.gpu.launch(
            "head_norm_rope",
            ((t * heads) as u32, 1, 1),
            128,
            0,
            &[
                Arg::Ptr(self.ptr(&q)),
                Arg::I32(hd as i32),
                Arg::I32(heads as i32),
                Arg::Ptr(freqs),
                Arg::I32(n_pairs as i32),
                Arg::I32(pos0 as i32),
                Arg::F32(cfg.rms_eps),
            ],
        )?;
        Ok(AttentionInputs { q, q_latent, kv })
    }

    pub(crate) fn append_raw_impl(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        rows: &CudaAct,
        pos0: usize,
    ) -> BResult<()> {
        check_batch_fits(pos0, rows.rows, kv.ctx, kv.max_batch)?;
        let l = &kv.layers[layer];
        let hd = self.cfg.head_dim;
        self.gpu.launch(
            "append_raw",
            ((hd as u32).div_ceil(BLOCK), rows.rows as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.gpu.ptr(&l.raw)),
                Arg::Ptr(self.ptr(rows)),
                Arg::I32(hd as i32),
                Arg::I32(l.raw_capacity as i32),
                Arg::I32(pos0 as i32),
                Arg::I32(self.official() as i32),
            ],
        )?;
        Ok(())
    }

    pub(crate) fn compress_impl(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        kind: CompressorKind,
        w: &CompressorWeights,
        n: &CudaAct,
        pos0: usize,
    ) -> Result<()> {
        let (mk, mg) = (self.mat(&w.kv)?, self.mat(&w.gate)?);
        let width = mk.n_rows;
        let a = self.new_act(n.rows, width)?;
        let score = self.new_act(n.rows, width)?;
        let pn = self.ptr(n);
        self.products(&[
            (mk, Items::plain(n.rows, pn, n.width, self.ptr(&a), width)),
            (
                mg,
                Items::plain(n.rows, pn, n.width, self.ptr(&score), width),
            ),
        ])?;
        let official = self.official();
        let l = &mut kv.layers[layer];
        let c = match kind {
            CompressorKind::Attention => l.attn.as_mut(),
            CompressorKind::Indexer => l.index.as_mut(),
        }
        .ok_or_else(|| CudaError::Invalid(format!("layer {layer} has no {kind:?} compressor")))?;
        let r = c.ratio;
        let emitted = (pos0..pos0 + n.rows).filter(|p| (p + 1) % r == 0).count();
        if c.n_rows + emitted > c.capacity {
            return Err(CudaError::Invalid(format!(
                "layer {layer}: {kind:?} compressor holds {} rows, {} more do not fit",
                c.capacity, emitted
            )));
        }
        if a.width != c.width {
            return Err(CudaError::Invalid(format!(
                "layer {layer}: compressor projection of {} values, state rows of {}",
                a.width, c.width
            )));
        }
        if kind == CompressorKind::Indexer && c.dim != 128 {
            return Err(CudaError::Unsupported(
                "indexer rows must be 128 wide".into(),
            ));
        }
        let ape = self.addr(&w.ape)?;
        let norm = self.addr(&w.norm)?;
        let freqs = self.gpu.ptr(&self.ropes[layer]);
        let n_pairs = (self.cfg.n_rot / 2) as i32;
        let kind_id = match kind {
            CompressorKind::Attention => 0,
            CompressorKind::Indexer => 1,
        };
        if n.rows == 1 {
            // One token: the sequential kernel does it all in one block.
            self.gpu.launch(
                "compress_step",
                (1, 1, 1),
                BLOCK,
                padded_smem(c.dim),
                &[
                    Arg::Ptr(self.gpu.ptr(&c.state_kv)),
                    Arg::Ptr(self.gpu.ptr(&c.state_score)),
                    Arg::Ptr(self.gpu.ptr(&c.rows)),
                    Arg::I32(c.n_rows as i32),
                    Arg::Ptr(self.ptr(&a)),
                    Arg::Ptr(self.ptr(&score)),
                    Arg::Ptr(ape),
                    Arg::Ptr(norm),
                    Arg::Ptr(freqs),
                    Arg::I32(n_pairs),
                    Arg::I32(pos0 as i32),
                    Arg::I32(n.rows as i32),
                    Arg::I32(r as i32),
                    Arg::I32(c.dim as i32),
                    Arg::I32(c.width as i32),
                    Arg::I32(c.overlapping() as i32),
                    Arg::I32(kind_id),
                    Arg::I32(official as i32),
                    Arg::F32(self.cfg.rms_eps),
                ],
            )?;
            c.n_rows += emitted;
            return Ok(());
        }
        // A batch: every completed window in parallel, then the state.
        let first_p = (pos0 + 1).div_ceil(r) * r - 1;
        if emitted > 0 {
            self.gpu.launch(
                "compress_emit",
                (emitted as u32, 1, 1),
                BLOCK,
                padded_smem(c.dim),
                &[
                    Arg::Ptr(self.gpu.ptr(&c.state_kv)),
                    Arg::Ptr(self.gpu.ptr(&c.state_score)),
                    Arg::Ptr(self.gpu.ptr(&c.rows)),
                    Arg::I32(c.n_rows as i32),
                    Arg::Ptr(self.ptr(&a)),
                    Arg::Ptr(self.ptr(&score)),
                    Arg::Ptr(ape),
                    Arg::Ptr(norm),
                    Arg::Ptr(freqs),
                    Arg::I32(n_pairs),
                    Arg::I32(pos0 as i32),
                    Arg::I32(first_p as i32),
                    Arg::I32(r as i32),
                    Arg::I32(c.dim as i32),
                    Arg::I32(c.width as i32),
                    Arg::I32(c.overlapping() as i32),
                    Arg::I32(kind_id),
                    Arg::I32(official as i32),
                    Arg::F32(self.cfg.rms_eps),
                ],
            )?;
        }
        let last_emit = if emitted > 0 {
            (first_p + (emitted - 1) * r) as i32
        } else {
            -1
        };
        self.gpu.launch(
            "compress_state",
            (((r * c.width) as u32).div_ceil(BLOCK), 1, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.gpu.ptr(&c.state_kv)),
                Arg::Ptr(self.gpu.ptr(&c.state_score)),
                Arg::Ptr(self.ptr(&a)),
                Arg::Ptr(self.ptr(&score)),
                Arg::Ptr(ape),
                Arg::I32(pos0 as i32),
                Arg::I32(n.rows as i32),
                Arg::I32(r as i32),
                Arg::I32(c.width as i32),
                Arg::I32(c.overlapping() as i32),
                Arg::I32(last_emit),
            ],
        )?;
        c.n_rows += emitted;
        Ok(())
    }

    pub(crate) fn index_impl(
        &self,
        kv: &CudaKv,
        layer: usize,
        w: &IndexerWeights,
        n: &CudaAct,
        q_latent: &CudaAct,
        pos0: usize,
    ) -> Result<CudaSelection> {
        let cfg = &self.cfg;
        let (heads, id, k) = (cfg.indexer_heads, cfg.indexer_head_dim, cfg.indexer_top_k);
        let rows = kv.layers[layer]
            .index
            .as_ref()
            .ok_or_else(|| CudaError::Invalid(format!("layer {layer} has no indexer")))?;
        let t = n.rows;
        let visible_last = (pos0 + t) / rows.ratio;
        let mut selection = CudaSelection {
            rows: t,
            pos0,
            sel: None,
        };
        // Visible counts grow with the position: if the last token needs no
        // selection, none does (and the indexer math is skipped, as in ds4).
        if visible_last <= k {
            return Ok(selection);
        }
        if rows.n_rows < visible_last {
            return Err(CudaError::Invalid(format!(
                "layer {layer}: indexer has {} rows, token {} needs {visible_last}",
                rows.n_rows,
                pos0 + t - 1
            )));
        }
        let (mq, mp) = (self.mat(&w.q_b)?, self.mat(&w.proj)?);
        let q = self.new_act(t, mq.n_rows)?;
        let weights = self.new_act(t, mp.n_rows)?;
        let jobs = [
            (
                mq,
                Items::plain(
                    t,
                    self.ptr(q_latent),
                    q_latent.width,
                    self.ptr(&q),
                    mq.n_rows,
                ),
            ),
            (
                mp,
                Items::plain(t, self.ptr(n), n.width, self.ptr(&weights), mp.n_rows),
            ),
        ];
        if mq.ggml_type == mp.ggml_type {
            self.products(&jobs)?;
        } else {
            self.products(&jobs[..1])?;
            self.products(&jobs[1..])?;
        }
        self.gpu.launch(
            "index_q_prep",
            (((t * heads) as u32).div_ceil(WARPS), 1, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.ptr(&q)),
                Arg::I32((t * heads) as i32),
                Arg::I32(heads as i32),
                Arg::Ptr(self.gpu.ptr(&self.ropes[layer])),
                Arg::I32((cfg.n_rot / 2) as i32),
                Arg::I32(pos0 as i32),
                Arg::I32(self.official() as i32),
            ],
        )?;
        let scores = self.gpu.buf::<f32>(t * visible_last)?;
        // As the CPU computes it: an f32 square root, then an f32 division.
        let scale = 1.0 / ((heads * id) as f32).sqrt();
        if heads > 64 || id != 128 {
            return Err(CudaError::Unsupported(format!(
                "indexer of {heads} heads x {id} (at most 64 x 128)"
            )));
        }
        self.index_scores(
            IndexScoresKernel::for_batch(t, visible_last),
            &IndexScoresArgs {
                scores: self.gpu.ptr(&scores),
                q: self.ptr(&q),
                weights: self.ptr(&weights),
                keys: self.gpu.ptr(&rows.rows),
                heads,
                scale,
                pos0,
                ratio: rows.ratio,
                tokens: t,
                visible_last,
            },
        )?;
        // Rows of tokens that need no selection are never written: zero them
        // (only batches starting at or below the threshold have such tokens).
        let sel = if (pos0 + 1) / rows.ratio <= k {
            DevBuf::owned(self.gpu.zeros::<i32>(t * k)?)
        } else {
            self.gpu.buf::<i32>(t * k)?
        };
        // The keys stay in shared memory when they fit (up to ~50K rows).
        let cached = visible_last * 4 <= 200 * 1024;
        self.gpu.launch(
            "topk_select",
            (t as u32, 1, 1),
            1024,
            if cached { (visible_last * 4) as u32 } else { 0 },
            &[
                Arg::Ptr(self.gpu.ptr(&sel)),
                Arg::Ptr(self.gpu.ptr(&scores)),
                Arg::I64(visible_last as i64),
                Arg::I32(k as i32),
                Arg::I32(pos0 as i32),
                Arg::I32(rows.ratio as i32),
                Arg::I32(cached as i32),
            ],
        )?;
        selection.sel = Some(sel);
        Ok(selection)
    }

    /// Backend::attend with the batch kernel chosen by the caller
    /// (`tensor_cores`: `attend_mma`, else `attend_part`; the backend passes
    /// `CudaOptions::tensor_core_attention`), so the self-test can check both.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend_with(
        &self,
        kv: &CudaKv,
        layer: usize,
        q: &CudaAct,
        sinks: &Tensor,
        selection: Option<&CudaSelection>,
        pos0: usize,
        tensor_cores: bool,
    ) -> Result<CudaAct> {
        let cfg = &self.cfg;
        let (hd, heads, t) = (cfg.head_dim, cfg.n_head, q.rows);
        let l = &kv.layers[layer];
        let sel = selection.and_then(|s| s.sel.as_ref());
        let (comp, ratio) = match &l.attn {
            Some(c) => (self.gpu.ptr(&c.rows), c.ratio),
            None => (0, 0),
        };
        // The most keys any token of the batch has (the last one's count is
        // not always the largest: a selection caps the compressed part).
        let max_keys = (0..t)
            .map(|i| {
                let p = pos0 + i;
                let raw = p + 1 - (p + 1).saturating_sub(cfg.sliding_window);
                let visible = (p + 1).checked_div(ratio).unwrap_or(0);
                let comp_n = if sel.is_some() && visible > cfg.indexer_top_k {
                    cfg.indexer_top_k
                } else {
                    visible
                };
                raw + comp_n
            })
            .max()
            .unwrap_or(0);
        if let Some(c) = &l.attn {
            let needed = (pos0 + t) / c.ratio;
            if c.n_rows < needed {
                return Err(CudaError::Invalid(format!(
                    "layer {layer}: {} compressed rows, the batch sees {needed}",
                    c.n_rows
                )));
            }
        }
        let out = self.new_act(t, heads * hd)?;
        let sel_ptr = sel.map_or(NULL, |s| Arg::Ptr(self.gpu.ptr(s)));
        let sinks_ptr = Arg::Ptr(self.addr(sinks)?);
        let scale = 1.0 / (hd as f32).sqrt();
        // The arguments every attention kernel takes after its outputs and
        // queries: where the keys are and how a token's key list is formed.
        let keys = |raw: u64, comp: u64| {
            [
                Arg::Ptr(raw),
                Arg::I32(l.raw_capacity as i32),
                Arg::Ptr(comp),
                Arg::I32(ratio as i32),
                sel_ptr,
                Arg::I32(cfg.indexer_top_k as i32),
                sinks_ptr,
                Arg::I32(heads as i32),
                Arg::I32(hd as i32),
                Arg::I32(cfg.sliding_window as i32),
                Arg::I32(pos0 as i32),
                Arg::F32(scale),
            ]
        };
        // A batch on the tensor cores: 32 heads of a token per block, every
        // key's scores held in shared memory (rows of 16-key multiples, ≡ 8
        // mod 32 floats so that the weight fragments' loads take two
        // wavefronts).
        let s_stride = (max_keys.next_multiple_of(16) + 24).next_multiple_of(32) - 24;
        let kpart = (64 * 136).max(16 * (hd + 8));
        let mma_smem = 2 * 32 * (hd + 8) * 2 + 2 * kpart * 2 + (32 * s_stride + 64) * 4;
        if t >= 4
            && tensor_cores
            && hd % 128 == 0
            && hd <= 512
            && mma_smem <= self.gpu.max_shared_bytes()
        {
            // Official numerics round every cached row to f16, so f16 copies
            // of the ring and of the rows the batch sees are exact: half the
            // bytes and no conversion in the kernel. Else two key parts.
            let copies = if self.official() {
                let n_comp = (pos0 + t).checked_div(ratio).unwrap_or(0);
                Some((
                    self.f16_copy(self.gpu.ptr(&l.raw), l.raw_capacity * hd)?,
                    self.f16_copy(comp, n_comp * hd)?,
                ))
            } else {
                None
            };
            let (name, raw_ptr, comp_ptr) = match &copies {
                Some((r, c)) => ("attend_mma_f16", self.gpu.ptr(r), self.gpu.ptr(c)),
                None => ("attend_mma", self.gpu.ptr(&l.raw), comp),
            };
            let mut args = vec![Arg::Ptr(self.ptr(&out)), Arg::Ptr(self.ptr(q))];
            args.extend(keys(raw_ptr, comp_ptr));
            args.push(Arg::I32(s_stride as i32));
            self.gpu.launch(
                name,
                (heads.div_ceil(32) as u32, t as u32, 1),
                256,
                mma_smem as u32,
                &args,
            )?;
            return Ok(out);
        }
        // Warps (heads) per block, and keys per chunk: a decode step splits
        // the keys so that ~2 blocks per SM share the work; a batch runs one
        // chunk per (head group, token).
        let hpb = 8usize.min(heads);
        let (chunk, n_chunks) = if t < 4 {
            let groups = heads.div_ceil(hpb);
            let want = (264 / (groups * t)).max(1);
            let chunk = max_keys.div_ceil(want).next_multiple_of(8).max(16);
            (chunk, max_keys.div_ceil(chunk).max(1))
        } else {
            (max_keys.max(1), 1)
        };
        // Keys per shared-memory tile: a decode chunk in one load.
        let tile = chunk.min(32);
        let smem = (tile * hd + hpb * chunk) * 4 + 16;
        let fits = hd % 128 == 0 && hd <= 512 && smem <= 200 * 1024;
        if !fits {
            self.gpu.launch(
                "attend",
                (heads as u32, t as u32, 1),
                BLOCK,
                padded_smem(max_keys),
                &[Arg::Ptr(self.ptr(&out)), Arg::Ptr(self.ptr(q))]
                    .into_iter()
                    .chain(keys(self.gpu.ptr(&l.raw), comp))
                    .collect::<Vec<_>>(),
            )?;
            return Ok(out);
        }
        let parts = if n_chunks > 1 {
            Some((
                self.gpu.buf::<f32>(t * heads * n_chunks * hd)?,
                self.gpu.buf::<f32>(t * heads * n_chunks * 2)?,
            ))
        } else {
            None
        };
        let (po, pml) = parts
            .as_ref()
            .map_or((0, 0), |(o, m)| (self.gpu.ptr(o), self.gpu.ptr(m)));
        self.gpu.launch(
            "attend_part",
            (heads.div_ceil(hpb) as u32, n_chunks as u32, t as u32),
            (hpb * 32) as u32,
            smem as u32,
            &[
                Arg::Ptr(self.ptr(&out)),
                Arg::Ptr(po),
                Arg::Ptr(pml),
                Arg::Ptr(self.ptr(q)),
            ]
            .into_iter()
            .chain(keys(self.gpu.ptr(&l.raw), comp))
            .chain([Arg::I32(chunk as i32), Arg::I32(tile as i32)])
            .collect::<Vec<_>>(),
        )?;
        if n_chunks > 1 {
            self.gpu.launch(
                "attend_combine",
                (heads as u32, t as u32, 1),
                (hd / 4).min(256) as u32,
                0,
                &[
                    Arg::Ptr(self.ptr(&out)),
                    Arg::Ptr(po),
                    Arg::Ptr(pml),
                    sinks_ptr,
                    Arg::I32(heads as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(n_chunks as i32),
                ],
            )?;
        }
        Ok(out)
    }

    pub(crate) fn attention_output_impl(
        &self,
        layer: usize,
        w: &AttentionWeights,
        o: &CudaAct,
        pos0: usize,
    ) -> Result<CudaAct> {
        let cfg = &self.cfg;
        let (hd, heads, t) = (cfg.head_dim, cfg.n_head, o.rows);
        let rotated = self.new_act(o.rows, o.width)?;
        self.gpu.launch(
            "rope_copy",
            ((t * heads) as u32, 1, 1),
            128,
            0,
            &[
                Arg::Ptr(self.ptr(&rotated)),
                Arg::Ptr(self.ptr(o)),
                Arg::I32(hd as i32),
                Arg::I32(heads as i32),
                Arg::Ptr(self.gpu.ptr(&self.ropes[layer])),
                Arg::I32((cfg.n_rot / 2) as i32),
                Arg::I32(pos0 as i32),
            ],
        )?;
        let group_in = cfg.heads_per_group() * hd;
        let rank = cfg.o_lora_rank;
        let low = self.new_act(t, cfg.n_out_group * rank)?;
        let out_a = self.mat(&w.output_a)?;
        // All groups in one product: rows g·rank.. read x at g·group_in.
        self.matvec(
            out_a.rows(0, cfg.n_out_group * rank),
            Items {
                x_grp: Some((rank, group_in)),
                ..Items::plain(t, self.ptr(&rotated), o.width, self.ptr(&low), low.width)
            },
        )?;
        self.matmul(&w.output_b, &low)
    }
}
