//! The attention sublayer's stages (MODEL.md 3.2-3.7).

use ds4_model::backend::{AttentionInputs, BackendError, CompressorKind, Result as BResult};
use ds4_model::weights::{AttentionWeights, CompressorWeights, IndexerWeights};
use ds4_model::Tensor;

use crate::error::{CudaError, Result};
use crate::gpu::{offset, Arg, NULL};
use crate::kv::CudaKv;
use crate::ops::{Items, RopeRows, BLOCK, WARPS};
use crate::{CudaAct, CudaBackend, CudaSelection};

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
        let (t, hd, heads) = (n.rows, cfg.head_dim, cfg.n_head);
        let q_latent = self.matmul(&w.q_a, n)?;
        self.rms_rows(&q_latent, &q_latent, Some(&w.q_a_norm))?;
        let q = self.matmul(&w.q_b, &q_latent)?;
        // Per-head unweighted norm: the heads are rows of head_dim.
        self.rms_raw(self.ptr(&q), self.ptr(&q), NULL, t * heads, hd)?;
        self.rope(
            layer,
            RopeRows::new(self.ptr(&q), t * heads, hd, heads),
            pos0,
            false,
        )?;
        let kv = self.matmul(&w.kv, n)?;
        self.rms_rows(&kv, &kv, Some(&w.kv_norm))?;
        self.rope(layer, RopeRows::new(self.ptr(&kv), t, hd, 1), pos0, false)?;
        if self.official() {
            self.gpu.launch(
                "fp8_rows",
                (t as u32, 1, 1),
                BLOCK,
                0,
                &[
                    Arg::Ptr(self.ptr(&kv)),
                    Arg::I32(hd as i32),
                    Arg::I32((hd - cfg.n_rot) as i32),
                ],
            )?;
        }
        Ok(AttentionInputs { q, q_latent, kv })
    }

    pub(crate) fn append_raw_impl(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        rows: &CudaAct,
        pos0: usize,
    ) -> BResult<()> {
        let needed = pos0 + rows.rows;
        if needed > kv.ctx {
            return Err(BackendError::ContextFull {
                needed,
                ctx: kv.ctx,
            });
        }
        if rows.rows > kv.max_batch {
            return Err(BackendError::Other(format!(
                "a batch of {} tokens exceeds the session's batch limit of {}",
                rows.rows, kv.max_batch
            )));
        }
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
        let a = self.matmul(&w.kv, n)?;
        let score = self.matmul(&w.gate, n)?;
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
                Arg::Ptr(self.addr(&w.ape)?),
                Arg::Ptr(self.addr(&w.norm)?),
                Arg::Ptr(self.gpu.ptr(&self.ropes[layer])),
                Arg::I32((self.cfg.n_rot / 2) as i32),
                Arg::I32(pos0 as i32),
                Arg::I32(n.rows as i32),
                Arg::I32(r as i32),
                Arg::I32(c.dim as i32),
                Arg::I32(c.width as i32),
                Arg::I32(c.overlapping() as i32),
                Arg::I32(match kind {
                    CompressorKind::Attention => 0,
                    CompressorKind::Indexer => 1,
                }),
                Arg::I32(official as i32),
                Arg::F32(self.cfg.rms_eps),
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
        let q = self.matmul(&w.q_b, q_latent)?;
        self.rope(
            layer,
            RopeRows::new(self.ptr(&q), t * heads, id, heads),
            pos0,
            false,
        )?;
        if self.official() {
            self.gpu.launch(
                "hadamard128_rows",
                (((t * heads) as u32).div_ceil(WARPS), 1, 1),
                BLOCK,
                0,
                &[
                    Arg::Ptr(self.ptr(&q)),
                    Arg::I32((t * heads) as i32),
                    Arg::I32(1),
                ],
            )?;
        }
        let weights = self.matmul(&w.proj, n)?;
        let scores = self.gpu.alloc::<f32>(t * visible_last)?;
        // As the CPU computes it: an f32 square root, then an f32 division.
        let scale = 1.0 / ((heads * id) as f32).sqrt();
        self.gpu.launch(
            "index_scores",
            ((visible_last as u32).div_ceil(WARPS), t as u32, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(self.gpu.ptr(&scores)),
                Arg::I64(visible_last as i64),
                Arg::Ptr(self.ptr(&q)),
                Arg::Ptr(self.ptr(&weights)),
                Arg::Ptr(self.gpu.ptr(&rows.rows)),
                Arg::I32(heads as i32),
                Arg::I32(id as i32),
                Arg::F32(scale),
                Arg::I32(pos0 as i32),
                Arg::I32(rows.ratio as i32),
            ],
        )?;
        // Zeroed: rows of tokens that need no selection are never written.
        let sel = self.gpu.zeros::<i32>(t * k)?;
        self.gpu.launch(
            "topk_select",
            (t as u32, 1, 1),
            512,
            0,
            &[
                Arg::Ptr(self.gpu.ptr(&sel)),
                Arg::Ptr(self.gpu.ptr(&scores)),
                Arg::I64(visible_last as i64),
                Arg::I32(k as i32),
                Arg::I32(pos0 as i32),
                Arg::I32(rows.ratio as i32),
            ],
        )?;
        selection.sel = Some(sel);
        Ok(selection)
    }

    pub(crate) fn attend_impl(
        &self,
        kv: &CudaKv,
        layer: usize,
        q: &CudaAct,
        sinks: &Tensor,
        selection: Option<&CudaSelection>,
        pos0: usize,
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
        self.gpu.launch(
            "attend",
            (heads as u32, t as u32, 1),
            BLOCK,
            padded_smem(max_keys),
            &[
                Arg::Ptr(self.ptr(&out)),
                Arg::Ptr(self.ptr(q)),
                Arg::Ptr(self.gpu.ptr(&l.raw)),
                Arg::I32(l.raw_capacity as i32),
                Arg::Ptr(comp),
                Arg::I32(ratio as i32),
                sel.map_or(NULL, |s| Arg::Ptr(self.gpu.ptr(s))),
                Arg::I32(cfg.indexer_top_k as i32),
                Arg::Ptr(self.addr(sinks)?),
                Arg::I32(heads as i32),
                Arg::I32(hd as i32),
                Arg::I32(cfg.sliding_window as i32),
                Arg::I32(pos0 as i32),
                Arg::F32(1.0 / (hd as f32).sqrt()),
            ],
        )?;
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
        let rotated = CudaAct {
            rows: o.rows,
            width: o.width,
            buf: self.gpu.copy(&o.buf)?,
        };
        self.rope(
            layer,
            RopeRows::new(self.ptr(&rotated), t * heads, hd, heads),
            pos0,
            true,
        )?;
        let group_in = cfg.heads_per_group() * hd;
        let rank = cfg.o_lora_rank;
        let low = self.new_act(t, cfg.n_out_group * rank)?;
        let out_a = self.mat(&w.output_a)?;
        for g in 0..cfg.n_out_group {
            self.matvec(
                out_a.rows(g * rank, rank),
                Items {
                    n: t,
                    mat_ids: 0,
                    x: offset::<f32>(self.ptr(&rotated), g * group_in),
                    x_stride: o.width,
                    x_div: 1,
                    y: offset::<f32>(self.ptr(&low), g * rank),
                    y_stride: low.width,
                },
            )?;
        }
        self.matmul(&w.output_b, &low)
    }
}
