//! Session state in and out of the CUDA backend ([`Backend::kv_export`] and
//! friends), as the CPU backend does it: the raw ring is unrolled into
//! logical order on the way out and re-laid by slot on the way in;
//! compressor states are copied as they are, then made canonical.
//! These are the only stages that move KV state to or from the host.
//!
//! [`Backend::kv_export`]: ds4_model::backend::Backend::kv_export

use cudarc::driver::CudaSlice;
use ds4_model::backend::{BackendError, Export, Result as BResult};
use ds4_model::payload::{raw_window, CompressorState, KvState, LayerState};

use crate::error::Result;
use crate::kv::{CudaKv, GpuCompressor};
use crate::CudaBackend;

impl CudaBackend {
    /// Positions whose raw rows a session at its current length still needs.
    fn live_raw(&self, kv: &CudaKv) -> std::ops::Range<usize> {
        let r = raw_window(&self.cfg, kv.ctx).min(kv.n_tokens);
        kv.n_tokens - r..kv.n_tokens
    }

    fn export_compressor(&self, c: &GpuCompressor, rows: bool) -> Result<CompressorState> {
        let n_state = c.state_kv.len();
        Ok(CompressorState {
            n_rows: c.n_rows,
            rows: if rows {
                self.gpu.download(&c.rows, c.n_rows * c.dim)?
            } else {
                Vec::new()
            },
            state_kv: self.gpu.download(&c.state_kv, n_state)?,
            state_score: self.gpu.download(&c.state_score, n_state)?,
        })
    }

    pub(crate) fn kv_export_impl(&self, kv: &CudaKv, what: Export) -> Result<KvState> {
        let rows = what == Export::Full;
        let positions = self.live_raw(kv);
        let hd = self.cfg.head_dim;
        let mut layers = Vec::with_capacity(kv.layers.len());
        for l in &kv.layers {
            let ring = self.gpu.download(&l.raw, l.raw_capacity * hd)?;
            let raw = positions
                .clone()
                .flat_map(|p| {
                    let s = p % l.raw_capacity;
                    ring[s * hd..(s + 1) * hd].iter().copied()
                })
                .collect();
            layers.push(LayerState {
                raw,
                attn: l
                    .attn
                    .as_ref()
                    .map(|c| self.export_compressor(c, rows))
                    .transpose()?,
                index: l
                    .index
                    .as_ref()
                    .map(|c| self.export_compressor(c, rows))
                    .transpose()?,
            });
        }
        let mut state = KvState {
            n_tokens: kv.n_tokens,
            raw_capacity: kv.layers.first().map_or(0, |l| l.raw_capacity),
            rows_included: rows,
            layers,
        };
        state.canonicalize(&self.cfg);
        Ok(state)
    }

    /// Writes the raw rows and compressor states of `state` into `kv`; the
    /// compressed rows are the caller's.
    fn write_window_and_states(&self, kv: &mut CudaKv, state: &KvState) -> Result<()> {
        kv.n_tokens = state.n_tokens;
        let positions = self.live_raw(kv);
        let hd = self.cfg.head_dim;
        for (l, s) in kv.layers.iter_mut().zip(&state.layers) {
            // A whole new ring, zero where the position range has no row, so
            // nothing of another history survives in an unused slot.
            let mut ring = vec![0f32; l.raw_capacity * hd];
            for (p, row) in positions.clone().zip(s.raw.chunks_exact(hd)) {
                let slot = p % l.raw_capacity;
                ring[slot * hd..(slot + 1) * hd].copy_from_slice(row);
            }
            upload_into(&self.gpu, &mut l.raw, &ring)?;
            for (c, cs) in [(&mut l.attn, &s.attn), (&mut l.index, &s.index)] {
                if let (Some(c), Some(cs)) = (c.as_mut(), cs.as_ref()) {
                    upload_into(&self.gpu, &mut c.state_kv, &cs.state_kv)?;
                    upload_into(&self.gpu, &mut c.state_score, &cs.state_score)?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn kv_import_impl(&self, kv: &mut CudaKv, state: &KvState) -> BResult<()> {
        if !state.rows_included {
            return Err(BackendError::Other(
                "kv_import needs a full export; a rewind point goes to kv_rewind".into(),
            ));
        }
        if state.n_tokens >= kv.ctx {
            return Err(BackendError::ContextFull {
                needed: state.n_tokens + 1,
                ctx: kv.ctx,
            });
        }
        state.validate(&self.cfg, kv.ctx)?;
        for (l, s) in kv.layers.iter().zip(&state.layers) {
            for (c, cs) in [(&l.attn, &s.attn), (&l.index, &s.index)] {
                if let (Some(c), Some(cs)) = (c, cs) {
                    if cs.n_rows > c.capacity {
                        return Err(BackendError::Other(format!(
                            "the state holds {} compressed rows, this session only {}",
                            cs.n_rows, c.capacity
                        )));
                    }
                }
            }
        }
        self.write_window_and_states(kv, state)?;
        for (l, s) in kv.layers.iter_mut().zip(&state.layers) {
            for (c, cs) in [(&mut l.attn, &s.attn), (&mut l.index, &s.index)] {
                if let (Some(c), Some(cs)) = (c.as_mut(), cs.as_ref()) {
                    upload_into(&self.gpu, &mut c.rows, &cs.rows)?;
                    c.n_rows = cs.n_rows;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn kv_rewind_impl(&self, kv: &mut CudaKv, point: &KvState) -> BResult<()> {
        if point.rows_included {
            return Err(BackendError::Other(
                "kv_rewind needs a rewind point; a full export goes to kv_import".into(),
            ));
        }
        point.validate(&self.cfg, kv.ctx)?;
        if point.n_tokens > kv.n_tokens {
            return Err(BackendError::Other(format!(
                "cannot rewind a state of {} tokens forward to {}",
                kv.n_tokens, point.n_tokens
            )));
        }
        for (l, s) in kv.layers.iter().zip(&point.layers) {
            for (c, cs) in [(&l.attn, &s.attn), (&l.index, &s.index)] {
                if let (Some(c), Some(cs)) = (c, cs) {
                    if c.n_rows < cs.n_rows {
                        return Err(BackendError::Other(
                            "rewind point is newer than the state's compressed rows".into(),
                        ));
                    }
                }
            }
        }
        self.write_window_and_states(kv, point)?;
        for (l, s) in kv.layers.iter_mut().zip(&point.layers) {
            for (c, cs) in [(&mut l.attn, &s.attn), (&mut l.index, &s.index)] {
                if let (Some(c), Some(cs)) = (c.as_mut(), cs.as_ref()) {
                    // Rows are append-only: the first n_rows are the point's,
                    // later ones are overwritten before anything reads them.
                    c.n_rows = cs.n_rows;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn kv_bytes_impl(&self, kv: &CudaKv) -> usize {
        let comp = |c: &Option<GpuCompressor>| {
            c.as_ref()
                .map_or(0, |c| c.rows.len() + c.state_kv.len() + c.state_score.len())
        };
        4 * kv
            .layers
            .iter()
            .map(|l| l.raw.len() + comp(&l.attn) + comp(&l.index))
            .sum::<usize>()
    }
}

/// Copies host values to the start of an existing device buffer.
fn upload_into(gpu: &crate::gpu::Gpu, dst: &mut CudaSlice<f32>, src: &[f32]) -> Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    if src.len() > dst.len() {
        return Err(crate::CudaError::Invalid(format!(
            "{} values do not fit a device buffer of {}",
            src.len(),
            dst.len()
        )));
    }
    let mut view = dst.slice_mut(0..src.len());
    gpu.stream.memcpy_htod(src, &mut view)?;
    Ok(())
}
