//! `ds4 tokenize`, `ds4 render` and `ds4 debug logits` against the oracles,
//! through the binary's stable interfaces.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ds4_gguf::GgufWriter;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A GGUF holding only the real tokenizer's metadata (what tokenize/render read).
fn tokenizer_only_gguf(dir: &Path) -> PathBuf {
    let path = dir.join("tokenizer.gguf");
    let meta = ds4_model::synth::tokenizer_metadata(129_280).unwrap();
    GgufWriter::create(&path, &meta, vec![])
        .unwrap()
        .finish()
        .unwrap();
    path
}

fn run_jsonl(args: &[&str], input: &str) -> Vec<serde_json::Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn fixture_lines(name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root().join("crates/ds4-text/tests/data").join(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn render_jsonl_reproduces_every_render_case() {
    let dir = tempfile::tempdir().unwrap();
    let model = tokenizer_only_gguf(dir.path());
    // Feed the fixture lines verbatim: key order matters to the renderer
    // (tool schemas are dumped in their given order).
    let raw =
        std::fs::read_to_string(root().join("crates/ds4-text/tests/data/dev_cases.jsonl")).unwrap();
    let lines: Vec<&str> = raw
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"] == "render")
        .collect();
    let cases: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let got = run_jsonl(
        &["render", "-m", model.to_str().unwrap(), "--jsonl"],
        &input,
    );
    assert_eq!(got.len(), cases.len());
    for (case, out) in cases.iter().zip(&got) {
        let name = &case["name"];
        if case["rendered"].is_null() {
            assert_eq!(out["error"]["type"], case["error"]["type"], "{name}");
        } else {
            assert_eq!(out["rendered"], case["rendered"], "{name}");
            assert_eq!(out["ids"], case["token_ids"], "{name}");
        }
    }
}

#[test]
fn tokenize_jsonl_reproduces_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let model = tokenizer_only_gguf(dir.path());
    let corpus = fixture_lines("dev_corpus.jsonl");
    let input: String = corpus
        .iter()
        .map(|c| format!("{}\n", serde_json::json!({"text": c["text"]})))
        .collect();
    let got = run_jsonl(
        &["tokenize", "-m", model.to_str().unwrap(), "--jsonl"],
        &input,
    );
    assert_eq!(got.len(), corpus.len());
    for (c, out) in corpus.iter().zip(&got) {
        assert_eq!(out["ids"], c["ids"], "{}", c["text"]);
    }
    // And back: decoding reproduces the bytes of the decode cases.
    let decode = fixture_lines("dev_decode.jsonl");
    let input: String = decode
        .iter()
        .map(|c| format!("{}\n", serde_json::json!({"ids": c["ids"]})))
        .collect();
    let got = run_jsonl(
        &[
            "tokenize",
            "-m",
            model.to_str().unwrap(),
            "--jsonl",
            "--decode",
        ],
        &input,
    );
    for (c, out) in decode.iter().zip(&got) {
        assert_eq!(out["bytes_hex"], c["bytes_hex"]);
        assert_eq!(out["text"], c["text"]);
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn npy_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn debug_logits_matches_transformers_on_tiny_a() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.f32");
    let tiny = root().join("tests/data/tiny_a");
    let status = Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(["debug", "logits", "-m"])
        .arg(tiny.join("tiny_ds4.gguf"))
        .arg("--tokens")
        .arg(tiny.join("tokens.i32"))
        .args(["--numerics", "exact", "--prefill-chunk", "64", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let got = read_f32(&out);
    let want = npy_f32(&tiny.join("hf_none_logits.npy"));
    assert_eq!(got.len(), 160 * 1024);
    let num: f64 = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    let rel = (num / den).sqrt();
    assert!(rel < 1e-4, "relative L2 {rel}");
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0
    };
    let agree = got
        .chunks(1024)
        .zip(want.chunks(1024))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    assert_eq!(agree, 160);

    // Bad input: a token file that is not whole int32s is one clear error.
    let bad = dir.path().join("bad.i32");
    std::fs::write(&bad, [1u8, 2, 3]).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(["debug", "logits", "-m"])
        .arg(tiny.join("tiny_ds4.gguf"))
        .arg("--tokens")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("x.f32"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not a whole number of int32 ids") && !err.contains("panicked"),
        "{err}"
    );
}
