//! Writing the tiny preset: it binds, carries the shipped tokenizer, and is
//! deterministic in the seed whatever the thread count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ds4_gguf::{GgufFile, Value};
use ds4_model::synth::{self, partial_path, Preset, SynthError, SynthSpec};
use ds4_model::Model;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ds4-synth-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(spec: &SynthSpec, path: &Path) -> synth::SynthReport {
    synth::write(spec, path, false, &|_, _| {}).unwrap()
}

fn strings(file: &GgufFile, key: &str) -> Vec<String> {
    file.get(key)
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tiny_file_binds_and_carries_the_real_tokenizer() {
    let dir = TempDir::new("bind");
    let path = dir.0.join("tiny.gguf");
    let report = write(&SynthSpec::new(Preset::Tiny).threads(2), &path);
    assert_eq!(report.file_size, std::fs::metadata(&path).unwrap().len());
    assert!(!partial_path(&path).exists());
    println!(
        "tiny: {} bytes, {} tensors, {:.2} s",
        report.file_size, report.tensors, report.seconds
    );

    let model = Model::open(&path).unwrap();
    assert_eq!(model.config, synth::tiny_config());
    assert_eq!(model.file.tensors().len(), 178);
    assert!(!model.config.production_mismatches().is_empty());

    // The tokenizer arrays, against an independent reading of tokenizer.json.
    let json: serde_json::Value = serde_json::from_str(synth::TOKENIZER_JSON).unwrap();
    let mut expected: HashMap<u64, (String, i32)> = HashMap::new();
    for (text, id) in json["model"]["vocab"].as_object().unwrap() {
        expected.insert(id.as_u64().unwrap(), (text.clone(), 1));
    }
    for t in json["added_tokens"].as_array().unwrap() {
        let kind = if t["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
        expected.insert(
            t["id"].as_u64().unwrap(),
            (t["content"].as_str().unwrap().to_string(), kind),
        );
    }
    let file = &model.file;
    let tokens = strings(file, "tokenizer.ggml.tokens");
    let types: Vec<i64> = file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(tokens.len(), 129_280);
    assert_eq!(types.len(), 129_280);
    for (id, (text, kind)) in &expected {
        assert_eq!(&tokens[*id as usize], text, "token {id}");
        assert_eq!(types[*id as usize], i64::from(*kind), "type of {id}");
    }
    let merges = strings(file, "tokenizer.ggml.merges");
    let want: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            pair => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
        })
        .collect();
    assert_eq!(merges, want);

    // Spot checks.
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap();
    assert_eq!(id("<｜begin▁of▁sentence｜>"), 0);
    assert_eq!(id("<｜end▁of▁sentence｜>"), 1);
    assert_eq!(id("<｜User｜>"), 128_803);
    assert_eq!(id("<think>"), 128_821);
    assert_eq!(types[0], 3);
    assert_eq!(types[128_803], 4);
    assert_eq!(merges[0], "Ġ t");
    assert_eq!(
        file.get("tokenizer.ggml.bos_token_id"),
        Some(&Value::U32(0))
    );
    assert_eq!(
        file.get("tokenizer.ggml.eos_token_id"),
        Some(&Value::U32(1))
    );
    assert_eq!(
        file.get("tokenizer.ggml.pre").and_then(Value::as_str),
        Some("joyai-llm")
    );

    // An existing file is not overwritten unless asked.
    let again = synth::write(&SynthSpec::new(Preset::Tiny), &path, false, &|_, _| {});
    assert!(matches!(again, Err(SynthError::Exists(_))));
}

#[test]
fn same_seed_same_bytes_whatever_the_thread_count() {
    let dir = TempDir::new("determinism");
    let spec = SynthSpec::new(Preset::Tiny).seed(5);
    let one = dir.0.join("one.gguf");
    let three = dir.0.join("three.gguf");
    let other = dir.0.join("other.gguf");
    write(&spec.clone().threads(1), &one);
    write(&spec.clone().threads(3), &three);
    write(&spec.clone().seed(6).threads(2), &other);
    let a = std::fs::read(&one).unwrap();
    let b = std::fs::read(&three).unwrap();
    assert!(a == b, "1 and 3 threads wrote different bytes");

    let a = GgufFile::from_bytes(a).unwrap();
    let c = GgufFile::open(&other).unwrap();
    let mut differing = 0;
    for t in a.tensors() {
        let u = c.tensor(&t.name).unwrap();
        if a.tensor_data(t) != c.tensor_data(u) {
            differing += 1;
        }
    }
    // Every tensor is random (even a 1-element scale), so all differ.
    assert_eq!(differing, a.tensors().len());
}
