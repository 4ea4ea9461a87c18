//! Shared by the CLI's integration tests: running the binary, temporary
//! directories, and the tiny synthetic model (the real tokenizer, random
//! weights; ~120 MB, written once per build of the tests).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ds4_model::synth::{self, Preset, SynthSpec};

pub fn ds4_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ds4"))
}

pub fn ds4(args: &[&str]) -> Output {
    ds4_cmd().args(args).output().expect("run ds4")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure is exactly one line on stderr, `error: ...`, and never a panic.
pub fn assert_one_line_error(o: &Output) -> String {
    assert!(!o.status.success());
    let err = stderr(o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    err
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "ds4-cli-test-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn newer_than_this_test(path: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let exe = std::env::current_exe().ok();
    match (modified(path), exe.as_deref().and_then(modified)) {
        (Some(model), Some(exe)) => model >= exe,
        _ => false,
    }
}

/// The tiny synthetic model, in the build's test directory. Written again
/// when the tests were rebuilt (the synthesizer may have changed); several
/// test processes may race to write it, each through its own temporary
/// name and an atomic rename.
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ds4-cli-tiny");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.gguf");
        if !newer_than_this_test(&path) {
            let tmp = dir.join(format!("tiny-{}.gguf", std::process::id()));
            let spec = SynthSpec::new(Preset::Tiny).threads(2);
            synth::write(&spec, &tmp, true, &|_, _| {}).expect("synthesize the tiny model");
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    })
}

pub fn tiny() -> &'static str {
    tiny_model().to_str().unwrap()
}
