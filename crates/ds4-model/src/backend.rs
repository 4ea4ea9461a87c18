//! The interface between the forward pass and the hardware that runs it.
//!
//! Methods are model stages (HC mix, attention projections, compressor step,
//! indexer, sink attention, output projection, routing, experts, output
//! head), so a GPU backend can fuse inside a stage while tests still compare
//! every stage with the CPU reference. Activations and KV state live in the
//! backend's memory; only logits come back to the host.

use crate::config::Config;
use crate::payload::KvState;
use crate::weights::{
    AttentionWeights, CompressorWeights, FfnWeights, HcWeights, IndexerWeights, Tensor, Weights,
};

pub type Result<T> = std::result::Result<T, BackendError>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("token id {id} at position {pos} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { id: u32, pos: usize, vocab: usize },
    #[error("context full: {needed} tokens do not fit in a context of {ctx}")]
    ContextFull { needed: usize, ctx: usize },
    #[error(transparent)]
    State(#[from] crate::payload::PayloadError),
    #[error("{0}")]
    Other(String),
}

/// What [`Backend::kv_export`] copies out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// Everything: an image of the session that [`Backend::kv_import`] can
    /// load into any state of the same model (snapshots, the disk cache).
    Full,
    /// A rewind point: everything except the compressed rows, whose counts
    /// alone are kept. Compressed rows are append-only, so while the session
    /// has not been rewound below this point they are still in the live
    /// state, and [`Backend::kv_rewind`] only needs to cut them back. Its
    /// size does not grow with the context (raw window + compressor state).
    RewindPoint,
}

/// The check every backend makes before a batch of `n` tokens at positions
/// `pos0..` enters a session of `ctx` tokens evaluated in batches of at most
/// `max_batch`.
pub fn check_batch_fits(pos0: usize, n: usize, ctx: usize, max_batch: usize) -> Result<()> {
    let needed = pos0 + n;
    if needed > ctx {
        return Err(BackendError::ContextFull { needed, ctx });
    }
    if n > max_batch {
        return Err(BackendError::Other(format!(
            "a batch of {n} tokens exceeds the session's batch limit of {max_batch}"
        )));
    }
    Ok(())
}

/// The two compressor instances of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressorKind {
    /// Rows of the layer's attention (head_dim wide).
    Attention,
    /// Rows of the lightning indexer (indexer_head_dim wide), ratio-4 layers only.
    Indexer,
}

/// The three projections of the attention input of a batch of tokens.
pub struct AttentionInputs<A> {
    /// Per-head queries: normed per head and rotated, `[T × n_head·head_dim]`.
    pub q: A,
    /// The normed q LoRA latent, `[T × q_lora_rank]` (the indexer reads it too).
    pub q_latent: A,
    /// The new KV rows (K = V): normed, rotated, simulated as the numerics
    /// mode says, `[T × head_dim]`.
    pub kv: A,
}

pub trait Backend {
    /// A batch of activation rows, `[tokens × width]` f32.
    type Act;
    /// What HC-pre hands to HC-post (post weights and the Sinkhorn matrix per token).
    type Mix;
    /// Per-session state: raw KV windows, compressed rows, compressor state.
    type Kv;
    /// Compressed rows each token of a batch may attend to (ratio-4 layers).
    type Selection;
    /// Chosen experts and their weights per token.
    type Routes;

    fn config(&self) -> &Config;

    /// State for a session of up to `ctx` tokens, evaluated in batches of at
    /// most `max_batch` tokens.
    fn new_kv(&self, ctx: usize, max_batch: usize) -> Result<Self::Kv>;
    /// Tokens the state holds.
    fn kv_len(&self, kv: &Self::Kv) -> usize;
    /// Records that `n` more tokens have been fully processed by every layer.
    fn kv_advance(&self, kv: &mut Self::Kv, n: usize) -> Result<()>;

    // Moving session state in and out (MODEL.md §5; the engine builds
    // snapshots, rewinds and the session payload on these four).

    /// A host copy of the state in canonical form ([`KvState::canonicalize`]),
    /// raw rows in logical order.
    fn kv_export(&self, kv: &Self::Kv, what: Export) -> Result<KvState>;
    /// Replaces the whole state of `kv` by a [`Export::Full`] export of this
    /// model (validated against the config; `kv`'s own ctx must hold it).
    fn kv_import(&self, kv: &mut Self::Kv, state: &KvState) -> Result<()>;
    /// Returns `kv` to a [`Export::RewindPoint`] taken from this same state
    /// at or before its current position and not invalidated since (the
    /// state was not rewound below the point and re-evaluated). Errors if
    /// the state holds fewer tokens or rows than the point.
    fn kv_rewind(&self, kv: &mut Self::Kv, point: &KvState) -> Result<()>;
    /// Bytes of memory the state occupies (for the engine's memory budget).
    fn kv_bytes(&self, kv: &Self::Kv) -> usize;

    /// The HC state of a batch of tokens: the embedding copied into every stream.
    fn embed(&self, token_embd: &Tensor, tokens: &[u32], pos0: usize) -> Result<Self::Act>;
    /// HC-pre: the sublayer input `[T × d_model]` and the mix for HC-post.
    fn hc_pre(&self, w: &HcWeights, x: &Self::Act) -> Result<(Self::Act, Self::Mix)>;
    /// HC-pre followed by the RMS norm (with `norm`'s weights) of its output:
    /// the normalised sublayer input and the mix. Backends may fuse the two.
    fn hc_pre_norm(
        &self,
        w: &HcWeights,
        x: &Self::Act,
        norm: &Tensor,
    ) -> Result<(Self::Act, Self::Mix)> {
        let (y, mix) = self.hc_pre(w, x)?;
        Ok((self.rms_norm(&y, norm)?, mix))
    }
    /// HC-post: folds the sublayer output `f` back into the HC state `x`.
    fn hc_post(&self, x: &mut Self::Act, f: &Self::Act, mix: &Self::Mix) -> Result<()>;
    /// HC-post of one sublayer's output, then HC-pre and input norm of the
    /// next sublayer: the step between two sublayers. Backends may fuse
    /// the two (the CUDA decode path forms the new HC state inside HC-pre's
    /// launch).
    fn hc_post_pre_norm(
        &self,
        x: &mut Self::Act,
        f: &Self::Act,
        mix: &Self::Mix,
        next: &HcWeights,
        norm: &Tensor,
    ) -> Result<(Self::Act, Self::Mix)> {
        self.hc_post(x, f, mix)?;
        self.hc_pre_norm(next, x, norm)
    }
    fn rms_norm(&self, x: &Self::Act, weight: &Tensor) -> Result<Self::Act>;

    /// q path (q_a, norm, q_b, per-head norm, RoPE) and kv path (kv, norm,
    /// RoPE, FP8 simulation) for tokens at positions `pos0..`.
    fn attention_inputs(
        &self,
        layer: usize,
        w: &AttentionWeights,
        n: &Self::Act,
        pos0: usize,
    ) -> Result<AttentionInputs<Self::Act>>;
    /// Appends the batch's raw KV rows to the layer's sliding window.
    fn append_raw(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        rows: &Self::Act,
        pos0: usize,
    ) -> Result<()>;
    /// Steps a compressor over the batch, appending every row it completes.
    fn compress(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        kind: CompressorKind,
        w: &CompressorWeights,
        n: &Self::Act,
        pos0: usize,
    ) -> Result<()>;
    /// The lightning indexer: per token, the compressed rows it may attend to.
    fn index(
        &self,
        kv: &Self::Kv,
        layer: usize,
        w: &IndexerWeights,
        n: &Self::Act,
        q_latent: &Self::Act,
        pos0: usize,
    ) -> Result<Self::Selection>;
    /// Softmax attention with sinks over each token's raw window and visible
    /// compressed rows; returns per-head outputs `[T × n_head·head_dim]`.
    fn attend(
        &self,
        kv: &Self::Kv,
        layer: usize,
        q: &Self::Act,
        sinks: &Tensor,
        selection: Option<&Self::Selection>,
        pos0: usize,
    ) -> Result<Self::Act>;
    /// Inverse RoPE of the value tails, grouped low-rank projection, output projection.
    fn attention_output(
        &self,
        layer: usize,
        w: &AttentionWeights,
        o: &Self::Act,
        pos0: usize,
    ) -> Result<Self::Act>;

    /// Router scores and expert choice (hash or learned top-k) per token.
    fn route(
        &self,
        layer: usize,
        w: &FfnWeights,
        n: &Self::Act,
        tokens: &[u32],
    ) -> Result<Self::Routes>;
    /// Routed experts (weighted) plus the shared expert.
    fn experts(
        &self,
        layer: usize,
        w: &FfnWeights,
        n: &Self::Act,
        routes: &Self::Routes,
    ) -> Result<Self::Act>;

    /// Logits `[T × vocab]` for the given rows of the final HC state.
    fn output_head(
        &self,
        weights: &Weights,
        x: &Self::Act,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>>;
}
