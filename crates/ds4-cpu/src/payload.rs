//! Session state in and out of the CPU backend ([`Backend::kv_export`] and
//! friends): the ring of raw rows is unrolled into logical order, the
//! compressors are copied as they are and made canonical.
//!
//! [`Backend::kv_export`]: ds4_model::backend::Backend::kv_export

use ds4_model::backend::{BackendError, Export, Result};
use ds4_model::payload::{raw_window, CompressorState, KvState, LayerState};
use ds4_model::Config;

use crate::kv::{Compressor, CpuKv};

/// Positions whose raw rows a session at `n` tokens still needs.
fn live_raw(cfg: &Config, kv: &CpuKv) -> std::ops::Range<usize> {
    let r = raw_window(cfg, kv.ctx).min(kv.n_tokens);
    kv.n_tokens - r..kv.n_tokens
}

fn export_compressor(c: &Compressor, rows: bool) -> CompressorState {
    CompressorState {
        n_rows: c.n_rows,
        rows: if rows { c.rows.clone() } else { Vec::new() },
        state_kv: c.state_kv.clone(),
        state_score: c.state_score.clone(),
    }
}

pub fn export(cfg: &Config, kv: &CpuKv, what: Export) -> KvState {
    let rows = what == Export::Full;
    let positions = live_raw(cfg, kv);
    let layers = kv
        .layers
        .iter()
        .map(|l| LayerState {
            raw: positions
                .clone()
                .flat_map(|p| l.raw.row(p).iter().copied())
                .collect(),
            attn: l.attn.as_ref().map(|c| export_compressor(c, rows)),
            index: l.index.as_ref().map(|c| export_compressor(c, rows)),
        })
        .collect();
    let mut state = KvState {
        n_tokens: kv.n_tokens,
        raw_capacity: kv.layers.first().map_or(0, |l| l.raw.capacity),
        rows_included: rows,
        layers,
    };
    state.canonicalize(cfg);
    state
}

/// Writes the raw rows and compressor states of `state` into `kv`; the
/// compressed rows are handled by the caller.
fn write_window_and_states(cfg: &Config, kv: &mut CpuKv, state: &KvState) {
    kv.n_tokens = state.n_tokens;
    let positions = live_raw(cfg, kv);
    for (l, s) in kv.layers.iter_mut().zip(&state.layers) {
        // Clear the ring first so that no row of another history survives
        // in a slot the new position range does not cover.
        l.raw.rows.fill(0.0);
        for (p, row) in positions.clone().zip(s.raw.chunks_exact(cfg.head_dim)) {
            l.raw.row_mut(p).copy_from_slice(row);
        }
        for (c, cs) in [(&mut l.attn, &s.attn), (&mut l.index, &s.index)] {
            if let (Some(c), Some(cs)) = (c.as_mut(), cs.as_ref()) {
                c.state_kv.copy_from_slice(&cs.state_kv);
                c.state_score.copy_from_slice(&cs.state_score);
            }
        }
    }
}

pub fn import(cfg: &Config, kv: &mut CpuKv, state: &KvState) -> Result<()> {
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
    state.validate(cfg, kv.ctx)?;
    write_window_and_states(cfg, kv, state);
    for (l, s) in kv.layers.iter_mut().zip(&state.layers) {
        for (c, cs) in [(&mut l.attn, &s.attn), (&mut l.index, &s.index)] {
            if let (Some(c), Some(cs)) = (c.as_mut(), cs.as_ref()) {
                c.rows.clear();
                c.rows.extend_from_slice(&cs.rows);
                c.n_rows = cs.n_rows;
            }
        }
    }
    Ok(())
}

pub fn rewind(cfg: &Config, kv: &mut CpuKv, point: &KvState) -> Result<()> {
    if point.rows_included {
        return Err(BackendError::Other(
            "kv_rewind needs a rewind point; a full export goes to kv_import".into(),
        ));
    }
    point.validate(cfg, kv.ctx)?;
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
    write_window_and_states(cfg, kv, point);
    for (l, s) in kv.layers.iter_mut().zip(&point.layers) {
        for (c, cs) in [(&mut l.attn, &s.attn), (&mut l.index, &s.index)] {
            if let (Some(c), Some(cs)) = (c.as_mut(), cs.as_ref()) {
                // Rows are append-only: the first n_rows are the point's.
                c.rows.truncate(cs.n_rows * c.dim);
                c.n_rows = cs.n_rows;
            }
        }
    }
    Ok(())
}

pub fn bytes(kv: &CpuKv) -> usize {
    let comp = |c: &Option<Compressor>| {
        c.as_ref().map_or(0, |c| {
            c.rows.capacity() + c.state_kv.capacity() + c.state_score.capacity()
        })
    };
    4 * kv
        .layers
        .iter()
        .map(|l| l.raw.rows.capacity() + comp(&l.attn) + comp(&l.index))
        .sum::<usize>()
}
