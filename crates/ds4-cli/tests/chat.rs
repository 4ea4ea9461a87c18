//! `ds4 -p`, `--dump-tokens` and `--dump-logprobs` on the tiny synthetic
//! model (random weights: the tests check structure, not words).

mod common;

use common::{assert_one_line_error, ds4, stderr, stdout, tiny, TempDir};

/// The stats line: `ds4: prefill: X t/s, generation: Y t/s (prompt P tokens:
/// R reused, E evaluated; generated G…)`, as numbers (P, R, E, G).
fn stats(err: &str) -> (usize, usize, usize, usize) {
    let line = err
        .lines()
        .rfind(|l| l.starts_with("ds4: prefill: "))
        .unwrap_or_else(|| panic!("no stats line in {err}"));
    let counts = &line[line.find('(').unwrap()..];
    let nums: Vec<usize> = counts
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter(|w| !w.is_empty() && !w.contains('.'))
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 4, "{line}");
    (nums[0], nums[1], nums[2], nums[3])
}

#[test]
fn one_shot_streams_and_reports() {
    let o = ds4(&["-m", tiny(), "-t", "2", "-p", "hello", "-n", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("ds4: context buffers ") && err.contains("backend=cpu"),
        "{err}"
    );
    let (prompt, reused, evaluated, generated) = stats(&err);
    assert_eq!((reused, evaluated), (0, prompt), "{err}");
    // Random weights almost never sample end-of-sentence in 16 tokens.
    assert!(generated <= 16 && generated > 0, "{err}");
    assert!(!stdout(&o).trim().is_empty());
    // Not a terminal: no colour codes.
    assert!(!stdout(&o).contains('\x1b'));
}

#[test]
fn one_shot_modes_and_sampling_flags() {
    let dir = TempDir::new("oneshot");
    let file = dir.path("prompt.txt");
    std::fs::write(&file, b"What is 2+2?\n\xff").unwrap();
    let greedy = |extra: &[&str]| {
        let mut args = vec!["-m", tiny(), "-t", "2", "-n", "8", "--temp", "0"];
        args.extend_from_slice(extra);
        let o = ds4(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let a = greedy(&["--prompt-file", file.to_str().unwrap(), "--nothink"]);
    let b = greedy(&["--prompt-file", file.to_str().unwrap(), "--nothink"]);
    assert_eq!(stdout(&a), stdout(&b), "greedy is deterministic");
    let (p_nothink, ..) = stats(&stderr(&a));
    let c = greedy(&["--prompt-file", file.to_str().unwrap(), "-sys", ""]);
    let (p_nosys, ..) = stats(&stderr(&c));
    assert!(p_nosys < p_nothink, "no system prompt is shorter");
    // Sampled with a seed: reproducible.
    let s = |seed: &str| {
        let o = ds4(&[
            "-m",
            tiny(),
            "-t",
            "2",
            "-p",
            "hi",
            "-n",
            "8",
            "--seed",
            seed,
            "--top-p",
            "0.9",
            "--min-p",
            "0.1",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(s("7"), s("7"));
    // --think-max below the minimum context warns and thinks normally.
    let o = greedy(&["-p", "x", "--think-max", "--ctx", "4096"]);
    assert!(
        stderr(&o).contains(
            "ds4: warning: --think-max needs --ctx >= 393216; ctx=4096 uses normal thinking instead"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_flags_and_inputs_fail_clearly() {
    for (args, code) in [
        (vec!["-p", "x", "-n", "0"], 2),
        (vec!["-p", "x", "--temp", "101"], 2),
        (vec!["-p", "x", "--top-p", "1.5"], 2),
        (vec!["-p", "x", "--seed", "0"], 2),
        (vec!["-p", "x", "--prompt-file", "f"], 2),
        (vec!["-p", "x", "--logprobs-top-k", "129"], 2),
        (vec!["-p", "x", "--nothink", "--think"], 2),
        (vec!["--dump-tokens"], 2),
    ] {
        let mut full = vec!["-m", tiny()];
        full.extend_from_slice(&args);
        let o = ds4(&full);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    // A prompt longer than the context.
    let err = assert_one_line_error(&ds4(&["-m", tiny(), "-p", "hello there", "--ctx", "8"]));
    assert!(err.contains("does not fit the context (ctx=8"), "{err}");
    let err = assert_one_line_error(&ds4(&["-m", tiny(), "--prompt-file", "/nonexistent/p"]));
    assert!(err.contains("cannot read /nonexistent/p"), "{err}");
    // Not a GGUF.
    let dir = TempDir::new("badmodel");
    let junk = dir.path("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    let err = assert_one_line_error(&ds4(&["-m", junk.to_str().unwrap(), "-p", "x"]));
    assert!(err.contains("junk.gguf"), "{err}");
    if !cfg!(feature = "cuda") {
        let err = assert_one_line_error(&ds4(&["-m", tiny(), "-p", "x", "--backend", "cuda"]));
        assert!(err.contains("built without CUDA"), "{err}");
        // The server takes the same backend flags (checked before it binds).
        let err = assert_one_line_error(&ds4(&["serve", "-m", tiny(), "--cuda", "--port", "1"]));
        assert!(err.contains("built without CUDA"), "{err}");
    }
}

#[test]
fn dump_tokens_prints_the_rendered_prompt() {
    let o = ds4(&["-m", tiny(), "-p", "Hi <｜User｜>", "--dump-tokens"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let list = lines.next().unwrap();
    let ids: Vec<u32> = list
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(", ")
        .map(|s| s.parse().unwrap())
        .collect();
    let rows: Vec<&str> = lines.collect();
    assert_eq!(ids.len(), rows.len());
    for (id, row) in ids.iter().zip(&rows) {
        assert_eq!(row[..6].trim().parse::<u32>().unwrap(), *id, "{row}");
        assert_eq!(&row[6..8], "  ", "{row}");
    }
    // BOS, then the system prompt; the user's "<｜User｜>" stays text; the
    // prompt ends by opening the assistant's thinking.
    assert_eq!(rows[0], "     0  <｜begin▁of▁sentence｜>");
    assert_eq!(
        rows.iter().filter(|r| r.ends_with("  <｜User｜>")).count(),
        1
    );
    assert_eq!(rows.last().unwrap().trim(), "128821  <think>");
    let o = ds4(&["-m", tiny(), "-p", "Hi", "--dump-tokens", "--nothink"]);
    assert_eq!(
        stdout(&o).lines().last().unwrap().trim(),
        "128822  </think>"
    );
}

#[test]
fn dump_logprobs_writes_greedy_steps() {
    let dir = TempDir::new("logprobs");
    let dump = |file: &std::path::Path| {
        ds4(&[
            "-m",
            tiny(),
            "-t",
            "2",
            "-p",
            "hello",
            "-n",
            "6",
            "--dump-logprobs",
            file.to_str().unwrap(),
            "--logprobs-top-k",
            "5",
        ])
    };
    let file = dir.path("lp.json");
    let o = dump(&file);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "no text is printed");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("{\"source\":\"ds4\",\"prompt_tokens\":"),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["source"], "ds4");
    assert_eq!(doc["ctx"], 32768);
    assert_eq!(doc["top_k"], 5);
    assert!(doc["prompt_tokens"].as_u64().unwrap() > 3);
    let steps = doc["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 6);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step["step"], i);
        let top = step["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        let lp: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        let logits: Vec<f64> = top.iter().map(|t| t["logit"].as_f64().unwrap()).collect();
        assert!(lp.iter().all(|&l| l <= 0.0), "{lp:?}");
        assert!(lp.windows(2).all(|w| w[0] >= w[1]), "descending: {lp:?}");
        assert!(logits.windows(2).all(|w| w[0] >= w[1]), "{logits:?}");
        // The top-k carry at most all the probability: log Σ p ≤ 0.
        let mass: f64 = lp.iter().map(|l| l.exp()).sum();
        assert!(mass <= 1.0 + 1e-5, "{mass}");
        // Greedy: the selected token is the most likely one.
        assert_eq!(step["selected"]["id"], top[0]["token"]["id"]);
        for t in top.iter().map(|t| &t["token"]).chain([&step["selected"]]) {
            assert!(t["id"].is_u64() && t["text"].is_string());
            let bytes: Vec<u8> = t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            if let Ok(s) = std::str::from_utf8(&bytes) {
                assert_eq!(t["text"], s);
            }
        }
    }
    // The same dump again is identical (greedy).
    let file2 = dir.path("lp2.json");
    let o = dump(&file2);
    assert!(o.status.success());
    assert_eq!(text, std::fs::read_to_string(&file2).unwrap());
}
