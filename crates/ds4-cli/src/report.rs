//! The report of `ds4 gguf inspect`: built once from a parsed file, then
//! rendered as text or as JSON, so both always carry the same content.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ds4_gguf::{GgmlType, GgufFile, Value};
use ds4_model::{layout, weights, Config, Weights};
use serde::Serialize;

/// Array metadata is abridged to its first few items.
const ARRAY_PREVIEW: usize = 4;
/// Production mismatches shown in the one-line text verdict.
const MISMATCHES_SHOWN: usize = 3;

#[derive(Serialize)]
pub struct Report {
    pub path: String,
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub file_size: u64,
    pub metadata: Vec<MetaEntry>,
    pub tensors: Vec<TensorRow>,
    /// By type, in GGUF type-id order.
    pub totals: Vec<TypeTotal>,
    pub total: TypeTotal,
    /// Runs of consecutive layers with the same routed-expert types.
    pub routed_experts: Vec<ExpertRun>,
    /// Tensors the ds4 layout does not know; `null` when the metadata does
    /// not even give a config to derive the layout from.
    pub unexpected_tensors: Option<Vec<String>>,
    /// The shape read from `deepseek4.*` metadata, when it is valid.
    pub config: Option<ConfigSummary>,
    pub binding: Binding,
}

#[derive(Serialize)]
pub struct MetaEntry {
    pub key: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// Scalars only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// Arrays only: the length and the first few items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<Vec<serde_json::Value>>,
}

#[derive(Serialize)]
pub struct TensorRow {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
    /// Relative to the data section.
    pub offset: u64,
}

#[derive(Serialize)]
pub struct TypeTotal {
    #[serde(rename = "type")]
    pub ty: String,
    pub count: usize,
    pub bytes: u64,
    pub gib: f64,
}

#[derive(Serialize, Clone, PartialEq)]
pub struct ExpertRun {
    pub first_layer: usize,
    pub last_layer: usize,
    pub gate: String,
    pub up: String,
    pub down: String,
}

#[derive(Serialize)]
pub struct ConfigSummary {
    pub n_layer: usize,
    pub d_model: usize,
    pub vocab_size: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub compress_ratios: Vec<usize>,
}

#[derive(Serialize)]
pub struct Binding {
    /// `production`, `non-production` or `does-not-bind`.
    pub status: &'static str,
    pub binds: bool,
    pub production: bool,
    /// How the file differs from the published shape (`key: expected X, found Y`).
    pub mismatches: Vec<String>,
    /// Why it does not bind (one line).
    pub error: Option<String>,
    /// The verdict as one line of text.
    pub verdict: String,
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// `12345678` → `12,345,678`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `864 B`, `10.21 MiB`, `80.76 GiB`.
pub fn human(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", gib(b)),
        b if b >= MIB => format!("{:.2} MiB", b as f64 / MIB as f64),
        b if b >= 1 << 10 => format!("{:.2} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// A JSON number for an f32 with its shortest decimal form (1e-6, not
/// 9.999999974752427e-7); NaN and infinities become null.
fn json_f32(x: f32) -> serde_json::Value {
    serde_json::Value::from(x.to_string().parse::<f64>().unwrap_or(f64::NAN))
}

fn json_value(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::U8(x) => J::from(*x),
        Value::I8(x) => J::from(*x),
        Value::U16(x) => J::from(*x),
        Value::I16(x) => J::from(*x),
        Value::U32(x) => J::from(*x),
        Value::I32(x) => J::from(*x),
        Value::U64(x) => J::from(*x),
        Value::I64(x) => J::from(*x),
        Value::F32(x) => json_f32(*x),
        Value::F64(x) => J::from(*x),
        Value::Bool(x) => J::from(*x),
        Value::String(s) => J::from(s.as_str()),
        Value::Array(_, items) => J::Array(items.iter().map(json_value).collect()),
    }
}

fn meta_entry(key: &str, v: &Value) -> MetaEntry {
    let (value, len, first) = match v {
        Value::Array(_, items) => (
            None,
            Some(items.len()),
            Some(items.iter().take(ARRAY_PREVIEW).map(json_value).collect()),
        ),
        v => (Some(json_value(v)), None, None),
    };
    MetaEntry {
        key: key.to_string(),
        ty: v.type_name(),
        value,
        len,
        first,
    }
}

/// Consecutive layers with the same (gate, up, down) routed types.
fn expert_runs(file: &GgufFile) -> Vec<ExpertRun> {
    let mut per_layer: BTreeMap<usize, [Option<GgmlType>; 3]> = BTreeMap::new();
    for t in file.tensors() {
        let Some(layer) = layout::layer_of(&t.name) else {
            continue;
        };
        let role = match t.name.split_once('.').and_then(|(_, r)| r.split_once('.')) {
            Some((_, "ffn_gate_exps.weight")) => 0,
            Some((_, "ffn_up_exps.weight")) => 1,
            Some((_, "ffn_down_exps.weight")) => 2,
            _ => continue,
        };
        per_layer.entry(layer).or_default()[role] = Some(t.ggml_type);
    }
    let name = |t: Option<GgmlType>| t.map_or("missing".to_string(), |t| t.to_string());
    let mut runs: Vec<ExpertRun> = Vec::new();
    for (layer, types) in per_layer {
        let [gate, up, down] = types.map(name);
        if let Some(last) = runs.last_mut() {
            if last.last_layer + 1 == layer
                && (&last.gate, &last.up, &last.down) == (&gate, &up, &down)
            {
                last.last_layer = layer;
                continue;
            }
        }
        runs.push(ExpertRun {
            first_layer: layer,
            last_layer: layer,
            gate,
            up,
            down,
        });
    }
    runs
}

impl ExpertRun {
    /// `layers 0-42: IQ2_XXS/Q2_K` (gate and up shared) or `gate/up/down`.
    pub fn describe(&self) -> String {
        let layers = if self.first_layer == self.last_layer {
            format!("layer {}", self.first_layer)
        } else {
            format!("layers {}-{}", self.first_layer, self.last_layer)
        };
        let types = if self.gate == self.up {
            format!("{}/{}", self.gate, self.down)
        } else {
            format!("{}/{}/{}", self.gate, self.up, self.down)
        };
        format!("{layers}: {types}")
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

fn binding(file: &GgufFile, cfg: &Result<Config, ds4_model::ModelError>) -> Binding {
    let outcome = cfg.as_ref().map_err(ToString::to_string).and_then(|cfg| {
        Weights::bind(file, cfg)
            .map(|_| cfg.production_mismatches())
            .map_err(|e| e.to_string())
    });
    match outcome {
        Err(error) => Binding {
            status: "does-not-bind",
            binds: false,
            production: false,
            mismatches: Vec::new(),
            verdict: format!("does not bind: {error}"),
            error: Some(error),
        },
        Ok(mismatches) if mismatches.is_empty() => Binding {
            status: "production",
            binds: true,
            production: true,
            mismatches,
            error: None,
            verdict: "binds as DeepSeek V4 Flash (production shape)".into(),
        },
        Ok(mismatches) => {
            let mut shown: Vec<String> = mismatches
                .iter()
                .take(MISMATCHES_SHOWN)
                .map(|m| shorten(m, 60))
                .collect();
            if mismatches.len() > MISMATCHES_SHOWN {
                shown.push(format!("and {} more", mismatches.len() - MISMATCHES_SHOWN));
            }
            Binding {
                status: "non-production",
                binds: true,
                production: false,
                verdict: format!("binds (non-production shape: {})", shown.join("; ")),
                mismatches,
                error: None,
            }
        }
    }
}

impl Report {
    pub fn new(path: &str, file: &GgufFile) -> Self {
        let tensors: Vec<TensorRow> = file
            .tensors()
            .iter()
            .map(|t| TensorRow {
                name: t.name.clone(),
                ty: t.ggml_type.to_string(),
                shape: t.dims.clone(),
                bytes: t.size,
                offset: t.offset,
            })
            .collect();
        let totals = GgmlType::all()
            .filter_map(|ty| {
                let of_type = file.tensors().iter().filter(|t| t.ggml_type == ty);
                let (count, bytes) = of_type.fold((0, 0), |(c, b), t| (c + 1, b + t.size));
                (count > 0).then(|| TypeTotal {
                    ty: ty.to_string(),
                    count,
                    bytes,
                    gib: gib(bytes),
                })
            })
            .collect();
        let all_bytes = tensors.iter().map(|t| t.bytes).sum();
        let cfg = Config::from_gguf(file);
        let unexpected = cfg
            .as_ref()
            .ok()
            .map(|c| weights::unexpected_tensors(file, &layout::main_layout(c)));
        Self {
            path: path.to_string(),
            version: file.version,
            alignment: file.alignment,
            data_offset: file.data_offset,
            file_size: file.file_size(),
            metadata: file
                .metadata()
                .iter()
                .map(|(k, v)| meta_entry(k, v))
                .collect(),
            total: TypeTotal {
                ty: "all".into(),
                count: tensors.len(),
                bytes: all_bytes,
                gib: gib(all_bytes),
            },
            tensors,
            totals,
            routed_experts: expert_runs(file),
            unexpected_tensors: unexpected,
            binding: binding(file, &cfg),
            config: cfg.ok().map(|c| ConfigSummary {
                n_layer: c.n_layer,
                d_model: c.d_model,
                vocab_size: c.vocab_size,
                n_expert: c.n_expert,
                n_expert_used: c.n_expert_used,
                compress_ratios: c.compress_ratios,
            }),
        }
    }

    pub fn json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a report always serializes");
        s.push('\n');
        s
    }

    /// `routed experts: layers 0-42: IQ2_XXS/Q2_K`.
    pub fn experts_line(&self) -> String {
        if self.routed_experts.is_empty() {
            return "routed experts: none".into();
        }
        let runs: Vec<String> = self
            .routed_experts
            .iter()
            .map(ExpertRun::describe)
            .collect();
        format!("routed experts (gate/up/down): {}", runs.join(", "))
    }

    fn header_line(&self) -> String {
        format!(
            "GGUF v{}, {} bytes ({}), alignment {}, data section at byte {}",
            self.version,
            group(self.file_size),
            human(self.file_size),
            self.alignment,
            group(self.data_offset)
        )
    }

    /// A few lines for `ds4 --demo` and `ds4 -m FILE`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "  {}", self.header_line());
        let _ = writeln!(
            s,
            "  {} metadata keys, {} tensors, {} of tensor data",
            self.metadata.len(),
            self.tensors.len(),
            human(self.total.bytes)
        );
        if let Some(c) = &self.config {
            let ratios: Vec<String> = c.compress_ratios.iter().map(usize::to_string).collect();
            let _ = writeln!(
                s,
                "  shape: {} layers (compress ratios {}), d_model {}, vocab {}, {} experts ({} used)",
                c.n_layer,
                ratios.join(","),
                c.d_model,
                c.vocab_size,
                c.n_expert,
                c.n_expert_used
            );
        }
        let _ = writeln!(s, "  {}", self.experts_line());
        let _ = writeln!(s, "  verdict: {}", self.binding.verdict);
        s
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}: {}", self.path, self.header_line());

        let _ = writeln!(s, "\nmetadata ({} keys):", self.metadata.len());
        let key_w = self.metadata.iter().map(|m| m.key.len()).max().unwrap_or(0);
        let ty_w = self.metadata.iter().map(|m| m.ty.len()).max().unwrap_or(0);
        for m in &self.metadata {
            let shown = match (&m.value, &m.first) {
                (Some(v), _) => v.to_string(),
                (None, Some(first)) => {
                    let len = m.len.unwrap_or(0);
                    let items: Vec<String> = first.iter().map(|v| v.to_string()).collect();
                    let more = if len > first.len() { ", ..." } else { "" };
                    format!("{len} items: [{}{more}]", items.join(", "))
                }
                (None, None) => String::new(),
            };
            let _ = writeln!(s, "  {:key_w$}  {:ty_w$}  {}", m.key, m.ty, shown);
        }

        let _ = writeln!(s, "\ntensors ({}):", self.tensors.len());
        let name_w = self.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4);
        let num_w = self.tensors.len().to_string().len();
        let _ = writeln!(
            s,
            "  {:>num_w$}  {:name_w$}  {:8}  {:20}  {:>15}",
            "#", "name", "type", "shape", "bytes"
        );
        for (i, t) in self.tensors.iter().enumerate() {
            let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
            let _ = writeln!(
                s,
                "  {i:>num_w$}  {:name_w$}  {:8}  {:20}  {:>15}",
                t.name,
                t.ty,
                format!("[{}]", shape.join(", ")),
                group(t.bytes)
            );
        }

        let _ = writeln!(s, "\ntotals by type:");
        for t in self.totals.iter().chain(std::iter::once(&self.total)) {
            let _ = writeln!(
                s,
                "  {:8}  {:>5} tensors  {:>18} bytes  {:>9.3} GiB",
                t.ty,
                t.count,
                group(t.bytes),
                t.gib
            );
        }

        let _ = writeln!(s, "\n{}", self.experts_line());
        let unexpected = match &self.unexpected_tensors {
            None => "unknown (no valid deepseek4 config)".to_string(),
            Some(u) if u.is_empty() => "none".to_string(),
            Some(u) => {
                const SHOWN: usize = 8;
                let more = if u.len() > SHOWN { ", ..." } else { "" };
                format!("{} ({}{more})", u.len(), u[..u.len().min(SHOWN)].join(", "))
            }
        };
        let _ = writeln!(s, "unexpected tensors: {unexpected}");
        let _ = writeln!(s, "verdict: {}", self.binding.verdict);
        s
    }
}
