//! A production-width model for the self-test: every width of DeepSeek V4
//! Flash (d 4096, 64 heads × 512, q/o LoRA 1024, 8 output groups, indexer
//! 64 × 128 with top-512, window 128, HC 4, d_ff 2048) in the published
//! layout and q2 types, but 3 layers (ratios 0, 4, 128), 16 experts and a
//! 4096-token vocabulary, so it is ~0.9 GB and is generated in seconds on
//! the GPU box. The tiny fixtures cannot reach the kernels' production
//! paths (512-wide heads, 512 selected rows, 1024-wide compressor state);
//! this model does. Weights are random but scaled so activations stay sane.

use std::path::{Path, PathBuf};

use ds4_gguf::{GgmlType, GgufWriter, TensorSpec, Value, ValueType};
use ds4_model::layout::{self, ExpertRole, TypeRule};
use ds4_model::{Config, Model};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape: Flash widths, fewer layers, experts and tokens.
pub fn config() -> Config {
    let mut cfg = Config::flash();
    cfg.n_layer = 3;
    cfg.compress_ratios = vec![0, 4, 128];
    cfg.swiglu_clamp = vec![10.0; 3];
    cfg.vocab_size = 4096;
    cfg.n_expert = 16;
    cfg.n_hash_layer = 1;
    cfg
}

fn metadata(cfg: &Config) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let f = Value::F32;
    let k = |s: &str| format!("deepseek4.{s}");
    vec![
        (
            "general.architecture".into(),
            Value::String("deepseek4".into()),
        ),
        (
            "general.name".into(),
            Value::String("ds4-cuda selftest wide".into()),
        ),
        (k("block_count"), u(cfg.n_layer)),
        (k("embedding_length"), u(cfg.d_model)),
        (k("vocab_size"), u(cfg.vocab_size)),
        (k("attention.head_count"), u(cfg.n_head)),
        (k("attention.head_count_kv"), u(1)),
        (k("attention.key_length"), u(cfg.head_dim)),
        (k("attention.value_length"), u(cfg.head_dim)),
        (k("rope.dimension_count"), u(cfg.n_rot)),
        (k("attention.q_lora_rank"), u(cfg.q_lora_rank)),
        (k("attention.output_lora_rank"), u(cfg.o_lora_rank)),
        (k("attention.output_group_count"), u(cfg.n_out_group)),
        (k("expert_count"), u(cfg.n_expert)),
        (k("expert_used_count"), u(cfg.n_expert_used)),
        (k("expert_shared_count"), u(cfg.n_expert_shared)),
        (k("expert_feed_forward_length"), u(cfg.d_ff_expert)),
        (k("hash_layer_count"), u(cfg.n_hash_layer)),
        (k("attention.sliding_window"), u(cfg.sliding_window)),
        (k("attention.indexer.head_count"), u(cfg.indexer_heads)),
        (k("attention.indexer.key_length"), u(cfg.indexer_head_dim)),
        (k("attention.indexer.top_k"), u(cfg.indexer_top_k)),
        (k("hyper_connection.count"), u(cfg.n_hc)),
        (
            k("hyper_connection.sinkhorn_iterations"),
            u(cfg.sinkhorn_iters),
        ),
        (k("hyper_connection.epsilon"), f(cfg.hc_eps)),
        (k("attention.layer_norm_rms_epsilon"), f(cfg.rms_eps)),
        (
            k("attention.compress_ratios"),
            Value::Array(
                ValueType::U32,
                cfg.compress_ratios.iter().map(|&r| u(r)).collect(),
            ),
        ),
        (
            k("swiglu_clamp_exp"),
            Value::Array(
                ValueType::F32,
                cfg.swiglu_clamp.iter().map(|&c| f(c)).collect(),
            ),
        ),
        (k("rope.freq_base"), f(cfg.rope_base)),
        (
            k("attention.compress_rope_freq_base"),
            f(cfg.compress_rope_base),
        ),
        (k("rope.scaling.factor"), f(cfg.yarn_factor)),
        (
            k("rope.scaling.original_context_length"),
            Value::U64(cfg.yarn_orig_ctx),
        ),
        (k("rope.scaling.yarn_beta_fast"), f(cfg.yarn_beta_fast)),
        (k("rope.scaling.yarn_beta_slow"), f(cfg.yarn_beta_slow)),
        (k("expert_weights_scale"), f(cfg.expert_weights_scale)),
        (k("expert_weights_norm"), Value::Bool(true)),
    ]
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Random tensor bytes of type `t` whose values have magnitude about `a`.
fn fill(rng: &mut ChaCha8Rng, t: GgmlType, n_elems: usize, a: f32, out: &mut Vec<u8>) {
    match t {
        GgmlType::F32 => {
            for _ in 0..n_elems {
                out.extend(rng.random_range(-a..=a).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for _ in 0..n_elems {
                out.extend(f16_bytes(rng.random_range(-a..=a)));
            }
        }
        GgmlType::Q8_0 => {
            for _ in 0..n_elems / 32 {
                out.extend(f16_bytes(a / 127.0));
                for _ in 0..32 {
                    out.push(rng.random_range(-127i8..=127) as u8);
                }
            }
        }
        GgmlType::Q2_K => {
            // x = d·(sc·q − m) with m ≈ 1.5·sc: zero-mean levels.
            for _ in 0..n_elems / 256 {
                for _ in 0..16 {
                    let sc: u8 = rng.random_range(1..=10);
                    let m = ((sc as f32 * 1.5).round() as u8).min(15);
                    out.push(sc | (m << 4));
                }
                let mut qs = [0u8; 64];
                rng.fill_bytes(&mut qs);
                out.extend(qs);
                out.extend(f16_bytes(a / 15.0));
                out.extend(f16_bytes(a / 15.0));
            }
        }
        GgmlType::IQ2_XXS => {
            // Any qs bits are a valid block; |x| ≈ d·8·0.25·25 on average.
            for _ in 0..n_elems / 256 {
                out.extend(f16_bytes(a / 50.0));
                let mut qs = [0u8; 64];
                rng.fill_bytes(&mut qs);
                out.extend(qs);
            }
        }
        other => unreachable!("the wide model has no {other} tensors"),
    }
}

/// Writes the wide model to `path`.
pub fn write(path: &Path, seed: u64) -> anyhow::Result<()> {
    let cfg = config();
    let slots = layout::main_layout(&cfg);
    let specs: Vec<TensorSpec> = slots
        .iter()
        .map(|s| {
            let t = match s.rule {
                TypeRule::Exact(t) => t,
                TypeRule::Routed(ExpertRole::Down) => GgmlType::Q2_K,
                TypeRule::Routed(_) => GgmlType::IQ2_XXS,
                TypeRule::F16OrF32 => GgmlType::F16,
            };
            TensorSpec::new(s.name.clone(), &s.dims, t)
        })
        .collect();
    let w = GgufWriter::create(path, &metadata(&cfg), specs.clone())?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        bytes.clear();
        let n: usize = s.dims.iter().product::<u64>() as usize;
        let fan_in = s.dims[0] as f32;
        let name = s.name.as_str();
        if s.ggml_type == GgmlType::I32 {
            // tid2eid: n_used distinct experts per token.
            let k = s.dims[0] as usize;
            for _ in 0..s.dims[1] {
                let mut ids: Vec<i32> = (0..cfg.n_expert as i32).collect();
                for j in 0..k {
                    let pick = rng.random_range(j..ids.len());
                    ids.swap(j, pick);
                    bytes.extend(ids[j].to_le_bytes());
                }
            }
        } else if s.ggml_type == GgmlType::F32 {
            for _ in 0..n {
                let v: f32 = if name.contains("norm") {
                    1.0 + rng.random_range(-0.1..0.1)
                } else if name.contains("scale") {
                    rng.random_range(0.5..1.5)
                } else if name.contains("sinks") || name.contains("base") {
                    rng.random_range(-0.5..0.5)
                } else {
                    rng.random_range(-0.05..0.05)
                };
                bytes.extend(v.to_le_bytes());
            }
        } else {
            let a = if name == "token_embd.weight" {
                1.0
            } else if name.contains("ape") {
                0.5
            } else {
                (3.0 / fan_in).sqrt()
            };
            fill(&mut rng, s.ggml_type, n, a, &mut bytes);
        }
        w.write_tensor(i, &bytes)?;
    }
    w.finish()?;
    Ok(())
}

/// Generates the wide model in a temporary file and opens it. The file is
/// unlinked at once (the open mapping keeps it alive).
pub fn model() -> anyhow::Result<Model> {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("ds4-cuda-wide-{}.gguf", std::process::id()));
    let result = write(&path, 0x5eed).and_then(|()| Ok(Model::open(&path)?));
    let _ = std::fs::remove_file(&path);
    result
}
