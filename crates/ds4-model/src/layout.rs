//! The tensor inventory of a ds4 GGUF (MODEL.md §2): names, shapes, types
//! and order, derived from a [`Config`]. Binding checks a file against it;
//! the synthetic-model writer produces it.

use ds4_gguf::GgmlType;

use crate::config::{AttentionKind, Config};

/// What types a tensor may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeRule {
    Exact(GgmlType),
    /// A routed-expert tensor: IQ2_XXS, Q2_K or Q4_K (per layer; gate and up
    /// must agree, checked at binding).
    Routed(ExpertRole),
    /// F16 or F32 (MTP HC and router weights).
    F16OrF32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertRole {
    Gate,
    Up,
    Down,
}

pub const ROUTED_TYPES: [GgmlType; 3] = [GgmlType::IQ2_XXS, GgmlType::Q2_K, GgmlType::Q4_K];

impl TypeRule {
    pub fn allows(self, t: GgmlType) -> bool {
        match self {
            TypeRule::Exact(want) => t == want,
            TypeRule::Routed(_) => ROUTED_TYPES.contains(&t),
            TypeRule::F16OrF32 => matches!(t, GgmlType::F16 | GgmlType::F32),
        }
    }

    pub fn describe(self) -> String {
        match self {
            TypeRule::Exact(t) => t.to_string(),
            TypeRule::Routed(_) => "IQ2_XXS, Q2_K or Q4_K".into(),
            TypeRule::F16OrF32 => "F16 or F32".into(),
        }
    }
}

/// One expected tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub dims: Vec<u64>,
    pub rule: TypeRule,
    pub required: bool,
}

/// Routed-expert types of one layer, as a writer chooses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertTypes {
    pub gate_up: GgmlType,
    pub down: GgmlType,
}

impl ExpertTypes {
    /// The published q2 file: IQ2_XXS gate/up, Q2_K down.
    pub const Q2: Self = Self {
        gate_up: GgmlType::IQ2_XXS,
        down: GgmlType::Q2_K,
    };
    /// The published q4 file: Q4_K everywhere.
    pub const Q4: Self = Self {
        gate_up: GgmlType::Q4_K,
        down: GgmlType::Q4_K,
    };
}

struct Builder {
    slots: Vec<Slot>,
}

impl Builder {
    fn add(&mut self, name: String, dims: &[usize], rule: TypeRule, required: bool) {
        self.slots.push(Slot {
            name,
            dims: dims.iter().map(|&d| d as u64).collect(),
            rule,
            required,
        });
    }
    fn req(&mut self, name: String, dims: &[usize], t: GgmlType) {
        self.add(name, dims, TypeRule::Exact(t), true);
    }
}

use GgmlType::{F16, F32, I32, Q8_0};

/// The main model file's tensors, in published order. `exp_probs_b` on the
/// learned-routing layers is listed as optional (ds4 tolerates its absence).
pub fn main_layout(cfg: &Config) -> Vec<Slot> {
    let d = cfg.d_model;
    let hc_flat = cfg.n_hc * d;
    let mix = cfg.hc_mix_dim();
    let mut b = Builder { slots: Vec::new() };
    b.req("token_embd.weight".into(), &[d, cfg.vocab_size], F16);
    b.req("output_hc_base.weight".into(), &[cfg.n_hc], F32);
    b.req("output_hc_fn.weight".into(), &[hc_flat, cfg.n_hc], F16);
    b.req("output_hc_scale.weight".into(), &[1], F32);
    b.req("output_norm.weight".into(), &[d], F32);
    b.req("output.weight".into(), &[d, cfg.vocab_size], Q8_0);
    for il in 0..cfg.n_layer {
        let p = |s: &str| format!("blk.{il}.{s}");
        b.req(p("hc_attn_fn.weight"), &[hc_flat, mix], F16);
        b.req(p("hc_attn_scale.weight"), &[3], F32);
        b.req(p("hc_attn_base.weight"), &[mix], F32);
        attention_slots(&mut b, cfg, &p, Some(il));
        b.req(p("hc_ffn_fn.weight"), &[hc_flat, mix], F16);
        b.req(p("hc_ffn_scale.weight"), &[3], F32);
        b.req(p("hc_ffn_base.weight"), &[mix], F32);
        ffn_slots(&mut b, cfg, &p, TypeRule::Exact(F16));
        if il < cfg.n_hash_layer {
            b.req(
                p("ffn_gate_tid2eid.weight"),
                &[cfg.n_expert_used, cfg.vocab_size],
                I32,
            );
        } else {
            b.add(
                p("exp_probs_b.bias"),
                &[cfg.n_expert],
                TypeRule::Exact(F32),
                false,
            );
        }
    }
    b.slots
}

fn attention_slots(
    b: &mut Builder,
    cfg: &Config,
    p: &dyn Fn(&str) -> String,
    layer: Option<usize>,
) {
    let d = cfg.d_model;
    let hd = cfg.head_dim;
    b.req(p("attn_norm.weight"), &[d], F32);
    b.req(p("attn_q_a.weight"), &[d, cfg.q_lora_rank], Q8_0);
    b.req(p("attn_q_a_norm.weight"), &[cfg.q_lora_rank], F32);
    b.req(
        p("attn_q_b.weight"),
        &[cfg.q_lora_rank, cfg.n_head * hd],
        Q8_0,
    );
    b.req(p("attn_kv.weight"), &[d, hd], Q8_0);
    b.req(p("attn_kv_a_norm.weight"), &[hd], F32);
    b.req(p("attn_sinks.weight"), &[cfg.n_head], F32);
    b.req(
        p("attn_output_a.weight"),
        &[
            cfg.heads_per_group() * hd,
            cfg.n_out_group * cfg.o_lora_rank,
        ],
        Q8_0,
    );
    b.req(
        p("attn_output_b.weight"),
        &[cfg.n_out_group * cfg.o_lora_rank, d],
        Q8_0,
    );
    let Some(il) = layer else { return };
    let kind = cfg.attention_kind(il);
    if kind == AttentionKind::Window {
        return;
    }
    let ratio = cfg.compress_ratios[il];
    let w = cfg.compressor_width(il, hd);
    b.req(p("attn_compressor_ape.weight"), &[w, ratio], F16);
    b.req(p("attn_compressor_kv.weight"), &[d, w], F16);
    b.req(p("attn_compressor_gate.weight"), &[d, w], F16);
    b.req(p("attn_compressor_norm.weight"), &[hd], F32);
    if kind == AttentionKind::Sparse {
        let id = cfg.indexer_head_dim;
        let iw = cfg.compressor_width(il, id);
        b.req(
            p("indexer.attn_q_b.weight"),
            &[cfg.q_lora_rank, cfg.indexer_heads * id],
            F16,
        );
        b.req(p("indexer.proj.weight"), &[d, cfg.indexer_heads], F16);
        b.req(p("indexer_compressor_ape.weight"), &[iw, ratio], F16);
        b.req(p("indexer_compressor_kv.weight"), &[d, iw], F16);
        b.req(p("indexer_compressor_gate.weight"), &[d, iw], F16);
        b.req(p("indexer_compressor_norm.weight"), &[id], F32);
    }
}

fn ffn_slots(b: &mut Builder, cfg: &Config, p: &dyn Fn(&str) -> String, router_rule: TypeRule) {
    let d = cfg.d_model;
    let f = cfg.d_ff_expert;
    let e = cfg.n_expert;
    b.req(p("ffn_norm.weight"), &[d], F32);
    b.add(p("ffn_gate_inp.weight"), &[d, e], router_rule, true);
    b.add(
        p("ffn_gate_exps.weight"),
        &[d, f, e],
        TypeRule::Routed(ExpertRole::Gate),
        true,
    );
    b.add(
        p("ffn_up_exps.weight"),
        &[d, f, e],
        TypeRule::Routed(ExpertRole::Up),
        true,
    );
    b.add(
        p("ffn_down_exps.weight"),
        &[f, d, e],
        TypeRule::Routed(ExpertRole::Down),
        true,
    );
    let fs = f * cfg.n_expert_shared;
    b.req(p("ffn_gate_shexp.weight"), &[d, fs], Q8_0);
    b.req(p("ffn_up_shexp.weight"), &[d, fs], Q8_0);
    b.req(p("ffn_down_shexp.weight"), &[fs, d], Q8_0);
}

/// The MTP file's tensors (MODEL.md §2.3), in a sensible order.
pub fn mtp_layout(cfg: &Config) -> Vec<Slot> {
    let d = cfg.d_model;
    let hc_flat = cfg.n_hc * d;
    let mix = cfg.hc_mix_dim();
    let mut b = Builder { slots: Vec::new() };
    let p = |s: &str| format!("mtp.0.{s}");
    b.req(p("e_proj.weight"), &[d, d], Q8_0);
    b.req(p("h_proj.weight"), &[d, d], Q8_0);
    b.req(p("enorm.weight"), &[d], F32);
    b.req(p("hnorm.weight"), &[d], F32);
    b.req(p("norm.weight"), &[d], F32);
    b.add(
        p("hc_head_fn.weight"),
        &[hc_flat, cfg.n_hc],
        TypeRule::F16OrF32,
        true,
    );
    b.req(p("hc_head_scale.weight"), &[1], F32);
    b.req(p("hc_head_base.weight"), &[cfg.n_hc], F32);
    b.add(
        p("hc_attn_fn.weight"),
        &[hc_flat, mix],
        TypeRule::F16OrF32,
        true,
    );
    b.req(p("hc_attn_scale.weight"), &[3], F32);
    b.req(p("hc_attn_base.weight"), &[mix], F32);
    attention_slots(&mut b, cfg, &p, None);
    b.add(
        p("hc_ffn_fn.weight"),
        &[hc_flat, mix],
        TypeRule::F16OrF32,
        true,
    );
    b.req(p("hc_ffn_scale.weight"), &[3], F32);
    b.req(p("hc_ffn_base.weight"), &[mix], F32);
    ffn_slots(&mut b, cfg, &p, TypeRule::F16OrF32);
    b.req(p("exp_probs_b.bias"), &[cfg.n_expert], F32);
    b.slots
}

/// A concrete type for a slot, for writers: the routed types given per layer,
/// F16 for the F16-or-F32 slots.
pub fn concrete_type(slot: &Slot, experts: ExpertTypes) -> GgmlType {
    match slot.rule {
        TypeRule::Exact(t) => t,
        TypeRule::Routed(ExpertRole::Down) => experts.down,
        TypeRule::Routed(_) => experts.gate_up,
        TypeRule::F16OrF32 => F16,
    }
}

/// Layer index of a `blk.N.` tensor name.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_has_1328_tensors_and_published_sizes() {
        let cfg = Config::flash();
        let slots = main_layout(&cfg);
        assert_eq!(slots.len(), 1328);
        let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
        let total = |experts: ExpertTypes| -> u64 {
            slots
                .iter()
                .map(|s| {
                    let t = concrete_type(s, experts);
                    let n: u64 = s.dims.iter().product();
                    n / t.block_elems() * t.block_bytes()
                })
                .sum()
        };
        // MODEL.md §2.2: q2 ≈ 80.76 GiB, q4 ≈ 153.32 GiB of tensor data.
        assert!(
            (gib(total(ExpertTypes::Q2)) - 80.76).abs() < 0.01,
            "{}",
            gib(total(ExpertTypes::Q2))
        );
        assert!(
            (gib(total(ExpertTypes::Q4)) - 153.32).abs() < 0.01,
            "{}",
            gib(total(ExpertTypes::Q4))
        );
    }

    #[test]
    fn routed_expert_bytes_per_layer_match_the_spec() {
        let cfg = Config::flash();
        let slots = main_layout(&cfg);
        let bytes = |name: &str, t: GgmlType| {
            let s = slots.iter().find(|s| s.name == name).unwrap();
            s.dims.iter().product::<u64>() / t.block_elems() * t.block_bytes()
        };
        assert_eq!(
            bytes("blk.5.ffn_gate_exps.weight", GgmlType::IQ2_XXS),
            553_648_128
        );
        assert_eq!(
            bytes("blk.5.ffn_down_exps.weight", GgmlType::Q2_K),
            704_643_072
        );
        assert_eq!(
            bytes("blk.5.ffn_up_exps.weight", GgmlType::Q4_K),
            1_207_959_552
        );
    }
}
