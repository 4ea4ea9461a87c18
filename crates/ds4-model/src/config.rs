//! Model hyperparameters read from `deepseek4.*` GGUF metadata.
//!
//! Every dimension comes from the file and is checked for internal
//! consistency, so tiny test shapes are as legal as the production one; the
//! production DeepSeek V4 Flash shape is one validated instance
//! ([`Config::flash`], [`Config::production_mismatches`]).

use ds4_gguf::{GgufFile, Value};

use crate::error::{ModelError, Result};

/// The attention kind of one layer, from its compression ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    /// Ratio 0: sliding-window attention over raw rows only.
    Window,
    /// Ratio 4: overlapping compressor, lightning indexer ("CSA").
    Sparse,
    /// Any other ratio: non-overlapping compressor, all rows visible ("HCA").
    Heavy,
}

/// DeepSeek V4 hyperparameters (MODEL.md §1).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub n_layer: usize,
    pub d_model: usize,
    pub vocab_size: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub q_lora_rank: usize,
    pub o_lora_rank: usize,
    pub n_out_group: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_expert_shared: usize,
    pub d_ff_expert: usize,
    pub n_hash_layer: usize,
    pub sliding_window: usize,
    pub indexer_heads: usize,
    pub indexer_head_dim: usize,
    pub indexer_top_k: usize,
    pub n_hc: usize,
    pub sinkhorn_iters: usize,
    pub hc_eps: f32,
    pub rms_eps: f32,
    /// One per layer (only the first `n_layer` entries of the metadata array).
    pub compress_ratios: Vec<usize>,
    pub swiglu_clamp: Vec<f32>,
    pub rope_base: f32,
    pub compress_rope_base: f32,
    pub yarn_factor: f32,
    pub yarn_orig_ctx: u64,
    pub yarn_beta_fast: f32,
    pub yarn_beta_slow: f32,
    pub expert_weights_scale: f32,
    pub expert_weights_norm: bool,
    /// Training context; informational.
    pub context_length: Option<u64>,
}

/// The ratio that marks the overlapping compressor + indexer layers.
pub const SPARSE_RATIO: usize = 4;

impl Config {
    /// The published DeepSeek V4 Flash shape.
    pub fn flash() -> Self {
        let n_layer = 43;
        Self {
            n_layer,
            d_model: 4096,
            vocab_size: 129_280,
            n_head: 64,
            head_dim: 512,
            n_rot: 64,
            q_lora_rank: 1024,
            o_lora_rank: 1024,
            n_out_group: 8,
            n_expert: 256,
            n_expert_used: 6,
            n_expert_shared: 1,
            d_ff_expert: 2048,
            n_hash_layer: 3,
            sliding_window: 128,
            indexer_heads: 64,
            indexer_head_dim: 128,
            indexer_top_k: 512,
            n_hc: 4,
            sinkhorn_iters: 20,
            hc_eps: 1e-6,
            rms_eps: 1e-6,
            compress_ratios: (0..n_layer)
                .map(|il| match il {
                    0 | 1 => 0,
                    il if il % 2 == 0 => 4,
                    _ => 128,
                })
                .collect(),
            swiglu_clamp: vec![10.0; n_layer],
            rope_base: 10_000.0,
            compress_rope_base: 160_000.0,
            yarn_factor: 16.0,
            yarn_orig_ctx: 65_536,
            yarn_beta_fast: 32.0,
            yarn_beta_slow: 1.0,
            expert_weights_scale: 1.5,
            expert_weights_norm: true,
            context_length: Some(1 << 20),
        }
    }

    /// Reads and validates the config from a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let m = Meta(file);
        let n_layer = m.u32("deepseek4.block_count")?;
        let cfg = Self {
            n_layer,
            d_model: m.u32("deepseek4.embedding_length")?,
            vocab_size: m.u32("deepseek4.vocab_size")?,
            n_head: m.u32("deepseek4.attention.head_count")?,
            head_dim: m.u32("deepseek4.attention.key_length")?,
            n_rot: m.u32("deepseek4.rope.dimension_count")?,
            q_lora_rank: m.u32("deepseek4.attention.q_lora_rank")?,
            o_lora_rank: m.u32("deepseek4.attention.output_lora_rank")?,
            n_out_group: m.u32("deepseek4.attention.output_group_count")?,
            n_expert: m.u32("deepseek4.expert_count")?,
            n_expert_used: m.u32("deepseek4.expert_used_count")?,
            n_expert_shared: m.u32("deepseek4.expert_shared_count")?,
            d_ff_expert: m.u32("deepseek4.expert_feed_forward_length")?,
            n_hash_layer: m.u32("deepseek4.hash_layer_count")?,
            sliding_window: m.u32("deepseek4.attention.sliding_window")?,
            indexer_heads: m.u32("deepseek4.attention.indexer.head_count")?,
            indexer_head_dim: m.u32("deepseek4.attention.indexer.key_length")?,
            indexer_top_k: m.u32("deepseek4.attention.indexer.top_k")?,
            n_hc: m.u32("deepseek4.hyper_connection.count")?,
            sinkhorn_iters: m.u32("deepseek4.hyper_connection.sinkhorn_iterations")?,
            hc_eps: m.float("deepseek4.hyper_connection.epsilon")?,
            rms_eps: m.float("deepseek4.attention.layer_norm_rms_epsilon")?,
            compress_ratios: m.uint_array("deepseek4.attention.compress_ratios", n_layer)?,
            swiglu_clamp: m.float_array("deepseek4.swiglu_clamp_exp", n_layer)?,
            rope_base: m.float("deepseek4.rope.freq_base")?,
            compress_rope_base: m.float("deepseek4.attention.compress_rope_freq_base")?,
            yarn_factor: m.float("deepseek4.rope.scaling.factor")?,
            yarn_orig_ctx: m.u64("deepseek4.rope.scaling.original_context_length")?,
            yarn_beta_fast: m.float("deepseek4.rope.scaling.yarn_beta_fast")?,
            yarn_beta_slow: m.float("deepseek4.rope.scaling.yarn_beta_slow")?,
            expert_weights_scale: m.float("deepseek4.expert_weights_scale")?,
            expert_weights_norm: m.bool("deepseek4.expert_weights_norm")?,
            context_length: m.optional_u64("deepseek4.context_length")?,
        };
        let kv_heads = m.u32("deepseek4.attention.head_count_kv")?;
        if kv_heads != 1 {
            return Err(ModelError::key(
                "deepseek4.attention.head_count_kv",
                "1",
                kv_heads,
            ));
        }
        let value_length = m.u32("deepseek4.attention.value_length")?;
        if value_length != cfg.head_dim {
            return Err(ModelError::key(
                "deepseek4.attention.value_length",
                format!("{} (= key_length)", cfg.head_dim),
                value_length,
            ));
        }
        for key in [
            "deepseek4.expert_group_count",
            "deepseek4.expert_group_used_count",
        ] {
            if let Some(v) = m.optional_u64(key)? {
                if v != 0 {
                    return Err(ModelError::key(
                        key,
                        "absent or 0 (no group-limited routing)",
                        v,
                    ));
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Internal consistency of a (possibly tiny) shape.
    pub fn validate(&self) -> Result<()> {
        let key = |k: &str| format!("deepseek4.{k}");
        let positive = [
            ("block_count", self.n_layer),
            ("embedding_length", self.d_model),
            ("vocab_size", self.vocab_size),
            ("attention.head_count", self.n_head),
            ("attention.key_length", self.head_dim),
            ("attention.q_lora_rank", self.q_lora_rank),
            ("attention.output_lora_rank", self.o_lora_rank),
            ("attention.output_group_count", self.n_out_group),
            ("expert_count", self.n_expert),
            ("expert_used_count", self.n_expert_used),
            ("expert_feed_forward_length", self.d_ff_expert),
            ("attention.sliding_window", self.sliding_window),
            ("attention.indexer.head_count", self.indexer_heads),
            ("attention.indexer.key_length", self.indexer_head_dim),
            ("attention.indexer.top_k", self.indexer_top_k),
            ("hyper_connection.count", self.n_hc),
            ("hyper_connection.sinkhorn_iterations", self.sinkhorn_iters),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(ModelError::key(&key(k), "> 0", v));
            }
        }
        if self.n_expert_shared != 1 {
            return Err(ModelError::key(
                &key("expert_shared_count"),
                "1",
                self.n_expert_shared,
            ));
        }
        if self.n_expert_used > self.n_expert {
            return Err(ModelError::key(
                &key("expert_used_count"),
                format!("<= expert_count ({})", self.n_expert),
                self.n_expert_used,
            ));
        }
        if self.n_hash_layer > self.n_layer {
            return Err(ModelError::key(
                &key("hash_layer_count"),
                format!("<= block_count ({})", self.n_layer),
                self.n_hash_layer,
            ));
        }
        if !self.n_rot.is_multiple_of(2)
            || self.n_rot > self.head_dim
            || self.n_rot > self.indexer_head_dim
        {
            return Err(ModelError::key(
                &key("rope.dimension_count"),
                format!(
                    "even and <= key_length ({}) and indexer key_length ({})",
                    self.head_dim, self.indexer_head_dim
                ),
                self.n_rot,
            ));
        }
        if !self.n_head.is_multiple_of(self.n_out_group) {
            return Err(ModelError::key(
                &key("attention.output_group_count"),
                format!("a divisor of head_count ({})", self.n_head),
                self.n_out_group,
            ));
        }
        // The FP8 KV simulation works on 64-wide blocks of the non-rotated dims
        // and the indexer's Hadamard transform on whole power-of-two rows.
        if !(self.head_dim - self.n_rot).is_multiple_of(64) {
            return Err(ModelError::key(
                &key("attention.key_length"),
                format!(
                    "key_length - rope dims to be a multiple of 64 (rope dims {})",
                    self.n_rot
                ),
                self.head_dim,
            ));
        }
        if !self.indexer_head_dim.is_power_of_two() || !self.indexer_head_dim.is_multiple_of(32) {
            return Err(ModelError::key(
                &key("attention.indexer.key_length"),
                "a power of two >= 32",
                self.indexer_head_dim,
            ));
        }
        if !self.d_model.is_multiple_of(256) || !self.d_ff_expert.is_multiple_of(256) {
            return Err(ModelError::key(
                &key("embedding_length / expert_feed_forward_length"),
                "multiples of 256 (k-quant blocks)",
                format!("{} / {}", self.d_model, self.d_ff_expert),
            ));
        }
        for (il, &r) in self.compress_ratios.iter().enumerate() {
            if r == 1 {
                return Err(ModelError::key(
                    &format!("{}[{il}]", key("attention.compress_ratios")),
                    "0 or >= 2",
                    r,
                ));
            }
        }
        for (il, &c) in self.swiglu_clamp.iter().enumerate() {
            if !(c.is_finite() && c > 0.0) {
                return Err(ModelError::key(
                    &format!("{}[{il}]", key("swiglu_clamp_exp")),
                    "a positive finite value",
                    c,
                ));
            }
        }
        if !self.expert_weights_norm {
            return Err(ModelError::key(&key("expert_weights_norm"), "true", false));
        }
        Ok(())
    }

    /// Every way this config differs from the published Flash shape, as
    /// `key: expected X, found Y` lines. Empty for the production model.
    pub fn production_mismatches(&self) -> Vec<String> {
        let flash = Self::flash();
        let mut out = Vec::new();
        let mut cmp = |name: &str, want: String, got: String| {
            if want != got {
                out.push(format!("{name}: expected {want}, found {got}"));
            }
        };
        macro_rules! field {
            ($($f:ident),*) => {$(cmp(stringify!($f), format!("{:?}", flash.$f), format!("{:?}", self.$f));)*};
        }
        field!(
            n_layer,
            d_model,
            vocab_size,
            n_head,
            head_dim,
            n_rot,
            q_lora_rank,
            o_lora_rank,
            n_out_group,
            n_expert,
            n_expert_used,
            n_expert_shared,
            d_ff_expert,
            n_hash_layer,
            sliding_window,
            indexer_heads,
            indexer_head_dim,
            indexer_top_k,
            n_hc,
            sinkhorn_iters,
            compress_ratios,
            swiglu_clamp,
            rope_base,
            compress_rope_base,
            yarn_factor,
            yarn_orig_ctx,
            yarn_beta_fast,
            yarn_beta_slow,
            expert_weights_scale,
            expert_weights_norm
        );
        for (name, want, got) in [
            ("hc_eps", flash.hc_eps, self.hc_eps),
            ("rms_eps", flash.rms_eps, self.rms_eps),
        ] {
            if (want - got).abs() > 1e-6 * want.abs().max(1.0) {
                out.push(format!("{name}: expected {want}, found {got}"));
            }
        }
        out
    }

    pub fn attention_kind(&self, layer: usize) -> AttentionKind {
        match self.compress_ratios[layer] {
            0 => AttentionKind::Window,
            SPARSE_RATIO => AttentionKind::Sparse,
            _ => AttentionKind::Heavy,
        }
    }

    /// Number of HC mixing values per sublayer: pre (n), post (n), comb (n²).
    pub fn hc_mix_dim(&self) -> usize {
        (2 + self.n_hc) * self.n_hc
    }

    /// Heads per output-projection group.
    pub fn heads_per_group(&self) -> usize {
        self.n_head / self.n_out_group
    }

    /// Width of a compressor's projection for `layer` (two series when overlapping).
    pub fn compressor_width(&self, layer: usize, row_dim: usize) -> usize {
        match self.attention_kind(layer) {
            AttentionKind::Sparse => 2 * row_dim,
            _ => row_dim,
        }
    }
}

/// Typed metadata access with ds4's leniency rules (MODEL.md §1.1).
struct Meta<'a>(&'a GgufFile);

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.0
            .get(key)
            .ok_or_else(|| ModelError::MissingKey(key.to_string()))
    }

    fn u32(&self, key: &str) -> Result<usize> {
        match self.get(key)? {
            Value::U32(v) => Ok(*v as usize),
            v => Err(ModelError::key(key, "a u32", v.type_name())),
        }
    }

    fn u64(&self, key: &str) -> Result<u64> {
        match self.get(key)? {
            Value::U32(v) => Ok(u64::from(*v)),
            Value::U64(v) => Ok(*v),
            v => Err(ModelError::key(key, "a u64 or u32", v.type_name())),
        }
    }

    fn optional_u64(&self, key: &str) -> Result<Option<u64>> {
        if self.0.get(key).is_none() {
            return Ok(None);
        }
        self.u64(key).map(Some)
    }

    fn float(&self, key: &str) -> Result<f32> {
        match self.get(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            Value::U32(v) => Ok(*v as f32),
            Value::I32(v) => Ok(*v as f32),
            v => Err(ModelError::key(key, "a float", v.type_name())),
        }
    }

    fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key)? {
            Value::Bool(v) => Ok(*v),
            v => Err(ModelError::key(key, "a bool", v.type_name())),
        }
    }

    fn array(&self, key: &str, min_len: usize) -> Result<&[Value]> {
        let v = self.get(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| ModelError::key(key, "an array", v.type_name()))?;
        if items.len() < min_len {
            return Err(ModelError::key(
                key,
                format!("at least {min_len} entries (one per layer)"),
                items.len(),
            ));
        }
        Ok(&items[..min_len])
    }

    fn uint_array(&self, key: &str, len: usize) -> Result<Vec<usize>> {
        self.array(key, len)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::U32(x) => Ok(*x as usize),
                Value::I32(x) if *x >= 0 => Ok(*x as usize),
                v => Err(ModelError::key(
                    &format!("{key}[{i}]"),
                    "a non-negative u32/i32",
                    v,
                )),
            })
            .collect()
    }

    fn float_array(&self, key: &str, len: usize) -> Result<Vec<f32>> {
        self.array(key, len)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                v => Err(ModelError::key(&format!("{key}[{i}]"), "an f32/f64", v)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_is_valid_and_matches_itself() {
        let f = Config::flash();
        f.validate().unwrap();
        assert!(f.production_mismatches().is_empty());
        assert_eq!(f.hc_mix_dim(), 24);
        assert_eq!(f.attention_kind(2), AttentionKind::Sparse);
        assert_eq!(f.attention_kind(3), AttentionKind::Heavy);
        assert_eq!(f.attention_kind(42), AttentionKind::Sparse);
        let sparse = (0..43)
            .filter(|&l| f.attention_kind(l) == AttentionKind::Sparse)
            .count();
        assert_eq!(sparse, 21);
    }

    #[test]
    fn inconsistent_shapes_are_rejected_with_the_key() {
        let mut c = Config::flash();
        c.n_out_group = 7;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("output_group_count") && e.contains("7"), "{e}");
        let mut c = Config::flash();
        c.n_expert_used = 300;
        assert!(c.validate().is_err());
    }
}
