//! The DeepSeek V4 forward pass, written once over [`Backend`].
//!
//! Read top to bottom, this is MODEL.md §3: every layer is an attention
//! half and an FFN half, each wrapped in hyper-connection pre/post mixing
//! over the `n_hc` residual streams. A sublayer's HC-post is performed at
//! the start of the next sublayer, with its HC-pre, so that a backend can
//! fuse the two (one step of the same arithmetic either way).

use crate::backend::{Backend, BackendError, CompressorKind, Result};
use crate::config::AttentionKind;
use crate::weights::{HcWeights, LayerWeights, Weights};
use crate::Tensor;

/// Which logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only for the last token of the batch (`[vocab]`).
    Last,
    /// For every token of the batch (`[T × vocab]`).
    All,
    /// None (prefill of a prefix whose logits nobody reads).
    None,
}

/// A sublayer's output `f` and mix, waiting for the HC-post that folds it
/// into the HC state. The next sublayer performs it as its first step
/// ([`Backend::hc_post_pre_norm`]), so backends can fuse the two.
struct Pending<B: Backend> {
    f: B::Act,
    mix: B::Mix,
}

/// Evaluates `tokens` at the next positions of `kv` and returns the requested logits.
pub fn forward<B: Backend>(
    b: &B,
    weights: &Weights,
    kv: &mut B::Kv,
    tokens: &[u32],
    logits: Logits,
) -> Result<Vec<f32>> {
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let pos0 = b.kv_len(kv);
    let mut x = b.embed(&weights.token_embd, tokens, pos0)?;
    let mut pending = None;
    for (il, layer) in weights.layers.iter().enumerate() {
        pending = Some(attention_sublayer(b, il, layer, &mut x, kv, pos0, pending)?);
        pending = Some(ffn_sublayer(b, il, layer, &mut x, tokens, pending)?);
    }
    if let Some(p) = pending {
        b.hc_post(&mut x, &p.f, &p.mix)?;
    }
    b.kv_advance(kv, tokens.len())?;
    match logits {
        Logits::None => Ok(Vec::new()),
        Logits::Last => b.output_head(weights, &x, tokens.len() - 1..tokens.len()),
        Logits::All => b.output_head(weights, &x, 0..tokens.len()),
    }
}

/// [`forward`] over a long prompt in batches of at most `chunk` tokens,
/// returning the logits of every token when `all_logits`, else of the last.
pub fn forward_chunked<B: Backend>(
    b: &B,
    weights: &Weights,
    kv: &mut B::Kv,
    tokens: &[u32],
    chunk: usize,
    all_logits: bool,
) -> Result<Vec<f32>> {
    if chunk == 0 {
        return Err(BackendError::Other(
            "prefill chunk size must be at least 1".into(),
        ));
    }
    let mut out = Vec::new();
    let n_chunks = tokens.len().div_ceil(chunk);
    for (i, piece) in tokens.chunks(chunk).enumerate() {
        let want = match (all_logits, i + 1 == n_chunks) {
            (true, _) => Logits::All,
            (false, true) => Logits::Last,
            (false, false) => Logits::None,
        };
        out.extend(forward(b, weights, kv, piece, want)?);
    }
    Ok(out)
}

/// HC-pre and input norm of a sublayer, after the previous sublayer's
/// pending HC-post.
fn enter<B: Backend>(
    b: &B,
    hc: &HcWeights,
    norm: &Tensor,
    x: &mut B::Act,
    pending: Option<Pending<B>>,
) -> Result<(B::Act, B::Mix)> {
    match pending {
        Some(p) => b.hc_post_pre_norm(x, &p.f, &p.mix, hc, norm),
        None => b.hc_pre_norm(hc, x, norm),
    }
}

/// The attention half of layer `il` for a batch at positions `pos0..`,
/// HC-post included.
pub fn attention_half<B: Backend>(
    b: &B,
    il: usize,
    layer: &LayerWeights,
    x: &mut B::Act,
    kv: &mut B::Kv,
    pos0: usize,
) -> Result<()> {
    let p = attention_sublayer(b, il, layer, x, kv, pos0, None)?;
    b.hc_post(x, &p.f, &p.mix)
}

/// The FFN (mixture of experts) half of layer `il`, HC-post included.
pub fn ffn_half<B: Backend>(
    b: &B,
    il: usize,
    layer: &LayerWeights,
    x: &mut B::Act,
    tokens: &[u32],
) -> Result<()> {
    let p = ffn_sublayer(b, il, layer, x, tokens, None)?;
    b.hc_post(x, &p.f, &p.mix)
}

/// The attention half up to its output, after `pending`'s HC-post.
fn attention_sublayer<B: Backend>(
    b: &B,
    il: usize,
    layer: &LayerWeights,
    x: &mut B::Act,
    kv: &mut B::Kv,
    pos0: usize,
    pending: Option<Pending<B>>,
) -> Result<Pending<B>> {
    let w = &layer.attn;
    let (n, mix) = enter(b, &layer.hc_attn, &w.norm, x, pending)?;
    let inputs = b.attention_inputs(il, w, &n, pos0)?;
    // The current token attends to itself, so its raw row goes in first.
    b.append_raw(kv, il, &inputs.kv, pos0)?;
    if let Some(c) = &w.compressor {
        b.compress(kv, il, CompressorKind::Attention, c, &n, pos0)?;
    }
    let selection = match (&w.indexer, b.config().attention_kind(il)) {
        (Some(ix), AttentionKind::Sparse) => {
            b.compress(kv, il, CompressorKind::Indexer, &ix.compressor, &n, pos0)?;
            Some(b.index(kv, il, ix, &n, &inputs.q_latent, pos0)?)
        }
        _ => None,
    };
    let o = b.attend(kv, il, &inputs.q, &w.sinks, selection.as_ref(), pos0)?;
    let f = b.attention_output(il, w, &o, pos0)?;
    Ok(Pending { f, mix })
}

/// The FFN half up to its output, after `pending`'s HC-post.
fn ffn_sublayer<B: Backend>(
    b: &B,
    il: usize,
    layer: &LayerWeights,
    x: &mut B::Act,
    tokens: &[u32],
    pending: Option<Pending<B>>,
) -> Result<Pending<B>> {
    let w = &layer.ffn;
    let (n, mix) = enter(b, &layer.hc_ffn, &w.norm, x, pending)?;
    let routes = b.route(il, w, &n, tokens)?;
    let f = b.experts(il, w, &n, &routes)?;
    Ok(Pending { f, mix })
}
