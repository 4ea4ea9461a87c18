//! The `ds4` binary end to end: inspect (text, JSON, broken files), synth,
//! and the top-level behaviour without a model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ds4_gguf::{GgufWriter, TensorSpec, Value};

fn ds4(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(args)
        .output()
        .expect("run ds4")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tiny_a() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny_a/tiny_ds4.gguf")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ds4-cli-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A failure is exactly one line on stderr, `error: ...`, and never a panic.
fn assert_one_line_error(o: &Output) -> String {
    assert!(!o.status.success());
    let err = stderr(o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    err
}

#[test]
fn inspect_tiny_a_text() {
    let o = ds4(&["gguf", "inspect", tiny_a().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(": GGUF v3, 10,701,760 bytes"), "{out}");
    assert!(out.contains("metadata (41 keys):"));
    assert!(out.contains("tensors (178):"));
    assert!(out.contains("blk.5.ffn_down_exps.weight"));
    assert!(out.contains("  all         178 tensors"), "{out}");
    assert!(out.contains("routed experts (gate/up/down): layers 0-5: IQ2_XXS/Q2_K"));
    assert!(out.contains("unexpected tensors: none"));
    let verdict = out.lines().last().unwrap();
    assert!(
        verdict.starts_with("verdict: binds (non-production shape: n_layer: expected 43, found 6;"),
        "{verdict}"
    );
}

#[test]
fn inspect_tiny_a_json() {
    let o = ds4(&["gguf", "inspect", "--json", tiny_a().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["version"], 3);
    assert_eq!(j["file_size"], 10_701_760);
    assert_eq!(j["tensors"].as_array().unwrap().len(), 178);
    assert_eq!(j["total"]["count"], 178);
    let counted: u64 = j["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 178);
    assert_eq!(j["tensors"][5]["name"], "output.weight");
    assert_eq!(j["tensors"][5]["type"], "Q8_0");
    assert_eq!(j["tensors"][5]["shape"], serde_json::json!([256, 1024]));
    assert_eq!(j["tensors"][5]["bytes"], 278_528);
    let b = &j["binding"];
    assert_eq!(b["binds"], true);
    assert_eq!(b["production"], false);
    assert_eq!(b["status"], "non-production");
    assert!(b["mismatches"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("n_layer: expected 43, found 6")));
    let meta = j["metadata"].as_array().unwrap();
    let tokens = meta
        .iter()
        .find(|m| m["key"] == "tokenizer.ggml.tokens")
        .unwrap();
    assert_eq!(tokens["type"], "array[string]");
    assert_eq!(tokens["len"], 1024);
    assert_eq!(tokens["first"][0], "<｜begin▁of▁sentence｜>");
    let eps = meta
        .iter()
        .find(|m| m["key"] == "deepseek4.hyper_connection.epsilon")
        .unwrap();
    assert_eq!(eps["value"], 1e-6);
    assert_eq!(j["routed_experts"][0]["gate"], "IQ2_XXS");
    assert_eq!(j["routed_experts"][0]["last_layer"], 5);
    assert_eq!(j["unexpected_tensors"], serde_json::json!([]));
    assert_eq!(
        j["config"]["compress_ratios"],
        serde_json::json!([0, 0, 4, 16, 4, 16])
    );
}

#[test]
fn inspect_of_broken_files_is_one_clear_line() {
    let dir = TempDir::new("broken");
    let bytes = std::fs::read(tiny_a()).unwrap();
    for (name, len) in [
        ("header.gguf", 20_000),
        ("data.gguf", bytes.len() - 1000),
        ("empty.gguf", 0),
    ] {
        let path = dir.path(name);
        std::fs::write(&path, &bytes[..len]).unwrap();
        for json in [false, true] {
            let mut args = vec!["gguf", "inspect", path.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let err = assert_one_line_error(&ds4(&args));
            assert!(
                err.contains(&format!("cannot read {} as GGUF", path.display())),
                "{err}"
            );
        }
    }
    let err = assert_one_line_error(&ds4(&["gguf", "inspect", "/nonexistent/x.gguf"]));
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

/// A valid GGUF that is not a DeepSeek V4 model: reported, exit status 0.
#[test]
fn inspect_of_a_non_model_reports_why_it_does_not_bind() {
    let dir = TempDir::new("nonmodel");
    let path = dir.path("other.gguf");
    let meta = [(
        "general.architecture".to_string(),
        Value::String("llama".into()),
    )];
    let w = GgufWriter::create(
        &path,
        &meta,
        vec![TensorSpec::new("x", &[4], ds4_gguf::GgmlType::F32)],
    )
    .unwrap();
    w.write_tensor(0, &[0u8; 16]).unwrap();
    w.finish().unwrap();
    let o = ds4(&["gguf", "inspect", path.to_str().unwrap()]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("unexpected tensors: unknown"), "{out}");
    assert!(
        out.ends_with("verdict: does not bind: metadata key 'deepseek4.block_count' is missing\n"),
        "{out}"
    );
    let o = ds4(&["gguf", "inspect", "--json", path.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["binding"]["status"], "does-not-bind");
    assert_eq!(
        j["binding"]["error"],
        "metadata key 'deepseek4.block_count' is missing"
    );
    assert!(j["unexpected_tensors"].is_null());
}

fn synth(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "gguf",
        "synth",
        "--preset",
        "tiny",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ds4(&args)
}

#[test]
fn synth_writes_refuses_to_overwrite_and_reports_bad_options() {
    let dir = TempDir::new("synth");
    let path = dir.path("tiny.gguf");
    let o = synth(&path, &["--layers", "3", "--seed", "9"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("wrote {}: ", path.display())),
        "{out}"
    );
    assert!(
        out.contains(" GB/s (preset tiny, 3 layers, seed 9, "),
        "{out}"
    );

    let o = ds4(&["gguf", "inspect", path.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("verdict: binds (non-production shape: n_layer: expected 43, found 3;")
    );

    let err = assert_one_line_error(&synth(&path, &[]));
    assert!(
        err.contains("already exists (pass --force to overwrite it)"),
        "{err}"
    );
    let o = synth(&path, &["--force", "--layers", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let bad = dir.path("bad.gguf");
    let err = assert_one_line_error(&synth(&bad, &["--layers", "9"]));
    assert!(
        err.contains("layers = 9: preset tiny has layers 1..=6"),
        "{err}"
    );
    assert!(!bad.exists());
    assert!(!dir.path("bad.gguf.partial").exists());

    let err = assert_one_line_error(&synth(&dir.path("no/such/dir/x.gguf"), &[]));
    assert!(err.contains("No such file or directory"), "{err}");

    let o = ds4(&["gguf", "synth", "--preset", "huge", "-o", "x.gguf"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown preset 'huge'"));
}

#[test]
fn without_a_model_ds4_says_what_is_missing() {
    let o = ds4(&["-m", "/nonexistent/ds4flash.gguf"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.starts_with("ds4: no model at /nonexistent/ds4flash.gguf"),
        "{err}"
    );
    assert!(err.contains("ds4 gguf synth --preset flash-q2"), "{err}");
    assert!(err.contains("ds4 --demo"), "{err}");
}

#[test]
fn with_a_model_ds4_reports_what_it_is() {
    let o = ds4(&["-m", tiny_a().to_str().unwrap(), "--inspect"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("verdict: binds (non-production shape"),
        "{out}"
    );
    assert!(out.contains("Chat with it: ds4 -m FILE"), "{out}");
}

#[test]
fn demo_runs_without_a_model() {
    let o = ds4(&["--demo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("shape: 6 layers (compress ratios 0,0,4,16,4,16), d_model 256, vocab 129280"),
        "{out}"
    );
    assert!(out.contains("<｜User｜> = 128803"), "{out}");
    assert!(
        out.contains("Generating 16 tokens") && stderr(&o).contains("generated 16, token limit"),
        "{out}"
    );
    assert!(
        out.contains("verdict: binds (non-production shape"),
        "{out}"
    );
}
