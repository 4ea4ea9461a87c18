//! Typed, validated handles to every weight of a ds4 GGUF.
//!
//! Binding checks each tensor's name, shape and type against
//! [`crate::layout`]; afterwards the forward pass works with these handles
//! and never looks names up again.

use std::collections::HashMap;

use ds4_gguf::{GgmlType, GgufFile, TensorInfo};

use crate::config::{AttentionKind, Config};
use crate::error::{ModelError, Result};
use crate::layout::{self, ExpertRole, Slot, TypeRule};

/// A weight tensor inside the model file: where its bytes are and how to read them.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub ggml_type: GgmlType,
    /// `ne0` first.
    pub dims: Vec<u64>,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub size: usize,
}

impl Tensor {
    fn from_info(file: &GgufFile, info: &TensorInfo) -> Self {
        Self {
            name: info.name.clone(),
            ggml_type: info.ggml_type,
            dims: info.dims.clone(),
            offset: (file.data_offset + info.offset) as usize,
            size: info.size as usize,
        }
    }

    /// Elements per row (`ne0`).
    pub fn row_len(&self) -> usize {
        self.dims[0] as usize
    }

    /// Rows per matrix (`ne1`, 1 for vectors).
    pub fn n_rows(&self) -> usize {
        self.dims.get(1).copied().unwrap_or(1) as usize
    }

    pub fn row_bytes(&self) -> usize {
        self.ggml_type.row_bytes(self.dims[0]).expect("validated") as usize
    }

    /// Bytes of one matrix of a 3-D (stacked experts) tensor.
    pub fn matrix_bytes(&self) -> usize {
        self.row_bytes() * self.n_rows()
    }

    /// The bytes of this tensor inside the file they were bound from.
    pub fn bytes<'a>(&self, file: &'a GgufFile) -> &'a [u8] {
        &file.bytes()[self.offset..self.offset + self.size]
    }
}

/// Hyper-connection mixing weights of one sublayer (or the output head).
#[derive(Clone, Debug)]
pub struct HcWeights {
    pub func: Tensor,
    pub scale: Tensor,
    pub base: Tensor,
}

/// A KV compressor (attention or indexer instance).
#[derive(Clone, Debug)]
pub struct CompressorWeights {
    pub ape: Tensor,
    pub kv: Tensor,
    pub gate: Tensor,
    pub norm: Tensor,
}

#[derive(Clone, Debug)]
pub struct IndexerWeights {
    pub q_b: Tensor,
    pub proj: Tensor,
    pub compressor: CompressorWeights,
}

#[derive(Clone, Debug)]
pub struct AttentionWeights {
    pub norm: Tensor,
    pub q_a: Tensor,
    pub q_a_norm: Tensor,
    pub q_b: Tensor,
    pub kv: Tensor,
    pub kv_norm: Tensor,
    pub sinks: Tensor,
    pub output_a: Tensor,
    pub output_b: Tensor,
    pub compressor: Option<CompressorWeights>,
    pub indexer: Option<IndexerWeights>,
}

/// How a layer picks its experts.
#[derive(Clone, Debug)]
pub enum Routing {
    /// Experts looked up by token id (`tid2eid`, I32 `[n_used, vocab]`).
    Hash { tid2eid: Tensor },
    /// Top-k of the router scores, with an optional selection-only bias.
    Learned { bias: Option<Tensor> },
}

#[derive(Clone, Debug)]
pub struct FfnWeights {
    pub norm: Tensor,
    pub router: Tensor,
    pub routing: Routing,
    pub gate_exps: Tensor,
    pub up_exps: Tensor,
    pub down_exps: Tensor,
    pub gate_shared: Tensor,
    pub up_shared: Tensor,
    pub down_shared: Tensor,
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub hc_attn: HcWeights,
    pub attn: AttentionWeights,
    pub hc_ffn: HcWeights,
    pub ffn: FfnWeights,
}

#[derive(Clone, Debug)]
pub struct Weights {
    pub token_embd: Tensor,
    pub output_hc: HcWeights,
    pub output_norm: Tensor,
    pub output: Tensor,
    pub layers: Vec<LayerWeights>,
}

/// The MTP block (separate file).
#[derive(Clone, Debug)]
pub struct MtpWeights {
    pub e_proj: Tensor,
    pub h_proj: Tensor,
    pub enorm: Tensor,
    pub hnorm: Tensor,
    pub norm: Tensor,
    pub hc_head: HcWeights,
    pub layer: LayerWeights,
}

/// Looks tensors up by name and checks them against their slot.
struct Binder<'a> {
    file: &'a GgufFile,
    slots: HashMap<&'a str, &'a Slot>,
}

impl Binder<'_> {
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        let slot = self
            .slots
            .get(name)
            .unwrap_or_else(|| panic!("binder asked for '{name}', which the layout does not list"));
        let Some(info) = self.file.tensor(name) else {
            return if slot.required {
                Err(ModelError::MissingTensor(name.to_string()))
            } else {
                Ok(None)
            };
        };
        if info.dims != slot.dims {
            return Err(ModelError::tensor(
                name,
                format!("shape {:?}", slot.dims),
                format!("shape {:?}", info.dims),
            ));
        }
        if !slot.rule.allows(info.ggml_type) {
            return Err(ModelError::tensor(
                name,
                format!("type {}", slot.rule.describe()),
                format!("type {}", info.ggml_type),
            ));
        }
        Ok(Some(Tensor::from_info(self.file, info)))
    }

    fn req(&self, name: &str) -> Result<Tensor> {
        Ok(self.get(name)?.expect("required tensors are never None"))
    }

    fn hc(&self, prefix: &str, which: &str) -> Result<HcWeights> {
        Ok(HcWeights {
            func: self.req(&format!("{prefix}{which}_fn.weight"))?,
            scale: self.req(&format!("{prefix}{which}_scale.weight"))?,
            base: self.req(&format!("{prefix}{which}_base.weight"))?,
        })
    }

    fn compressor(&self, prefix: &str) -> Result<CompressorWeights> {
        Ok(CompressorWeights {
            ape: self.req(&format!("{prefix}_ape.weight"))?,
            kv: self.req(&format!("{prefix}_kv.weight"))?,
            gate: self.req(&format!("{prefix}_gate.weight"))?,
            norm: self.req(&format!("{prefix}_norm.weight"))?,
        })
    }

    fn attention(&self, p: &str, kind: AttentionKind) -> Result<AttentionWeights> {
        let t = |s: &str| self.req(&format!("{p}{s}"));
        let compressor = match kind {
            AttentionKind::Window => None,
            _ => Some(self.compressor(&format!("{p}attn_compressor"))?),
        };
        let indexer = match kind {
            AttentionKind::Sparse => Some(IndexerWeights {
                q_b: t("indexer.attn_q_b.weight")?,
                proj: t("indexer.proj.weight")?,
                compressor: self.compressor(&format!("{p}indexer_compressor"))?,
            }),
            _ => None,
        };
        Ok(AttentionWeights {
            norm: t("attn_norm.weight")?,
            q_a: t("attn_q_a.weight")?,
            q_a_norm: t("attn_q_a_norm.weight")?,
            q_b: t("attn_q_b.weight")?,
            kv: t("attn_kv.weight")?,
            kv_norm: t("attn_kv_a_norm.weight")?,
            sinks: t("attn_sinks.weight")?,
            output_a: t("attn_output_a.weight")?,
            output_b: t("attn_output_b.weight")?,
            compressor,
            indexer,
        })
    }

    fn ffn(&self, p: &str, routing: Routing) -> Result<FfnWeights> {
        let t = |s: &str| self.req(&format!("{p}{s}"));
        let gate_exps = t("ffn_gate_exps.weight")?;
        let up_exps = t("ffn_up_exps.weight")?;
        if gate_exps.ggml_type != up_exps.ggml_type {
            return Err(ModelError::tensor(
                &up_exps.name,
                format!("the same type as ffn_gate_exps ({})", gate_exps.ggml_type),
                format!("type {}", up_exps.ggml_type),
            ));
        }
        Ok(FfnWeights {
            norm: t("ffn_norm.weight")?,
            router: t("ffn_gate_inp.weight")?,
            routing,
            gate_exps,
            up_exps,
            down_exps: t("ffn_down_exps.weight")?,
            gate_shared: t("ffn_gate_shexp.weight")?,
            up_shared: t("ffn_up_shexp.weight")?,
            down_shared: t("ffn_down_shexp.weight")?,
        })
    }
}

impl Weights {
    /// Binds every tensor of the main model file, checking names, shapes and types.
    pub fn bind(file: &GgufFile, cfg: &Config) -> Result<Self> {
        let slots = layout::main_layout(cfg);
        let b = Binder {
            file,
            slots: slots.iter().map(|s| (s.name.as_str(), s)).collect(),
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let p = format!("blk.{il}.");
            let routing = if il < cfg.n_hash_layer {
                Routing::Hash {
                    tid2eid: b.req(&format!("{p}ffn_gate_tid2eid.weight"))?,
                }
            } else {
                Routing::Learned {
                    bias: b.get(&format!("{p}exp_probs_b.bias"))?,
                }
            };
            layers.push(LayerWeights {
                hc_attn: b.hc(&p, "hc_attn")?,
                attn: b.attention(&p, cfg.attention_kind(il))?,
                hc_ffn: b.hc(&p, "hc_ffn")?,
                ffn: b.ffn(&p, routing)?,
            });
        }
        Ok(Self {
            token_embd: b.req("token_embd.weight")?,
            output_hc: b.hc("", "output_hc")?,
            output_norm: b.req("output_norm.weight")?,
            output: b.req("output.weight")?,
            layers,
        })
    }

    /// Routed-expert types per layer: `(gate/up, down)`.
    pub fn expert_types(&self) -> Vec<(GgmlType, GgmlType)> {
        self.layers
            .iter()
            .map(|l| (l.ffn.gate_exps.ggml_type, l.ffn.down_exps.ggml_type))
            .collect()
    }
}

impl MtpWeights {
    /// Binds the `mtp.0.*` tensors of an MTP file against the main model's config.
    pub fn bind(file: &GgufFile, cfg: &Config) -> Result<Self> {
        let slots = layout::mtp_layout(cfg);
        let b = Binder {
            file,
            slots: slots.iter().map(|s| (s.name.as_str(), s)).collect(),
        };
        let p = "mtp.0.";
        let t = |s: &str| b.req(&format!("{p}{s}"));
        Ok(Self {
            e_proj: t("e_proj.weight")?,
            h_proj: t("h_proj.weight")?,
            enorm: t("enorm.weight")?,
            hnorm: t("hnorm.weight")?,
            norm: t("norm.weight")?,
            hc_head: b.hc(p, "hc_head")?,
            layer: LayerWeights {
                hc_attn: b.hc(p, "hc_attn")?,
                attn: b.attention(p, AttentionKind::Window)?,
                hc_ffn: b.hc(p, "hc_ffn")?,
                ffn: b.ffn(
                    p,
                    Routing::Learned {
                        bias: Some(t("exp_probs_b.bias")?),
                    },
                )?,
            },
        })
    }
}

/// Names of tensors in the file that the layout does not know (reported by
/// `ds4 gguf inspect`; binding ignores them).
pub fn unexpected_tensors(file: &GgufFile, slots: &[Slot]) -> Vec<String> {
    let known: std::collections::HashSet<&str> = slots.iter().map(|s| s.name.as_str()).collect();
    file.tensors()
        .iter()
        .filter(|t| !known.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect()
}

/// Which routed roles a tensor name plays, for reporting.
pub fn expert_role(slot: &Slot) -> Option<ExpertRole> {
    match slot.rule {
        TypeRule::Routed(r) => Some(r),
        _ => None,
    }
}

impl Weights {
    /// Weight bytes one decode step reads: every tensor once, except that
    /// only one embedding row and one `tid2eid` row are touched, and of each
    /// layer's routed experts only the `n_expert_used` chosen ones.
    pub fn decode_bytes_per_token(&self, cfg: &Config) -> u64 {
        let all = |t: &Tensor| t.size as u64;
        let one_row = |t: &Tensor| t.row_bytes() as u64;
        let experts = |t: &Tensor| (t.matrix_bytes() * cfg.n_expert_used) as u64;
        let hc = |h: &HcWeights| all(&h.func) + all(&h.scale) + all(&h.base);
        let compressor =
            |c: &CompressorWeights| all(&c.ape) + all(&c.kv) + all(&c.gate) + all(&c.norm);
        let mut total = one_row(&self.token_embd)
            + hc(&self.output_hc)
            + all(&self.output_norm)
            + all(&self.output);
        for l in &self.layers {
            let a = &l.attn;
            total += hc(&l.hc_attn) + hc(&l.hc_ffn);
            total += [
                &a.norm,
                &a.q_a,
                &a.q_a_norm,
                &a.q_b,
                &a.kv,
                &a.kv_norm,
                &a.sinks,
                &a.output_a,
                &a.output_b,
            ]
            .into_iter()
            .map(all)
            .sum::<u64>();
            total += a.compressor.as_ref().map_or(0, compressor);
            total += a.indexer.as_ref().map_or(0, |ix| {
                all(&ix.q_b) + all(&ix.proj) + compressor(&ix.compressor)
            });
            let f = &l.ffn;
            total += all(&f.norm) + all(&f.router);
            total += match &f.routing {
                Routing::Hash { tid2eid } => one_row(tid2eid),
                Routing::Learned { bias } => bias.as_ref().map_or(0, all),
            };
            total += experts(&f.gate_exps) + experts(&f.up_exps) + experts(&f.down_exps);
            total += all(&f.gate_shared) + all(&f.up_shared) + all(&f.down_shared);
        }
        total
    }
}
