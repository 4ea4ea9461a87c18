//! `ds4 bench` on the tiny synthetic model: ds4-bench's CSV (header, one row
//! per frontier, consistent columns), the SVG chart, and bad options.

mod common;

use common::{assert_one_line_error, ds4, stderr, stdout, tiny, TempDir};

const HEADER: &str = "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes";

/// Checks the CSV and returns its rows as (ctx, prefill tokens, gen tokens, kv bytes).
fn rows(csv: &str) -> Vec<(u64, u64, u64, u64)> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(HEADER), "{csv}");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            for rate in [f[2], f[4]] {
                let (_, decimals) = rate.split_once('.').expect("a rate with decimals");
                assert_eq!(decimals.len(), 2, "{l}");
                assert!(rate.parse::<f64>().unwrap() > 0.0, "{l}");
            }
            let n = |i: usize| f[i].parse::<u64>().unwrap();
            (n(0), n(1), n(3), n(5))
        })
        .collect()
}

#[test]
fn bench_writes_one_row_per_frontier_and_a_chart() {
    let dir = TempDir::new("bench");
    let csv = dir.path("b.csv");
    let svg = dir.path("b.svg");
    let o = ds4(&[
        "bench",
        "-m",
        tiny(),
        "-t",
        "2",
        "--frontiers",
        "32,64,128",
        "-n",
        "4",
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    let r = rows(&std::fs::read_to_string(&csv).unwrap());
    assert_eq!(
        r.iter().map(|r| (r.0, r.1, r.2)).collect::<Vec<_>>(),
        vec![(32, 32, 4), (64, 32, 4), (128, 64, 4)]
    );
    // The KV snapshot grows with the context.
    assert!(r.windows(2).all(|w| w[0].3 < w[1].3), "{r:?}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<?xml") && chart.trim_end().ends_with("</svg>"));
    assert_eq!(chart.matches("<polyline").count(), 2);
    assert_eq!(chart.matches("<circle").count(), 6);
    assert!(chart.contains("prefill tokens/s") && chart.contains("decode tokens/s"));
}

#[test]
fn bench_schedule_to_stdout() {
    let o = ds4(&[
        "bench",
        "-m",
        tiny(),
        "-t",
        "2",
        "--ctx-start",
        "16",
        "--ctx-max",
        "40",
        "--step-incr",
        "16",
        "--gen-tokens",
        "2",
        "--ctx",
        "100",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = rows(&stdout(&o));
    assert_eq!(
        r.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
        vec![(16, 16), (32, 16), (40, 8)]
    );
    assert!(stderr(&o).contains("ctx=100"), "{}", stderr(&o));
}

#[test]
fn bench_prompt_files_and_bad_options() {
    let dir = TempDir::new("bench-bad");
    let short = dir.path("short.txt");
    std::fs::write(&short, "just a few words").unwrap();
    let err = assert_one_line_error(&ds4(&[
        "bench",
        "-m",
        tiny(),
        "--prompt-file",
        short.to_str().unwrap(),
        "--frontiers",
        "64",
    ]));
    assert!(err.contains("the last frontier needs 64"), "{err}");
    // A chat-rendered prompt of enough tokens.
    let o = ds4(&[
        "bench",
        "-m",
        tiny(),
        "-t",
        "2",
        "--chat-prompt-file",
        short.to_str().unwrap(),
        "--frontiers",
        "8,14",
        "-n",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rows(&stdout(&o)).len(), 2);
    let err = assert_one_line_error(&ds4(&[
        "bench",
        "-m",
        tiny(),
        "--frontiers",
        "64",
        "-n",
        "8",
        "--ctx-alloc",
        "72",
    ]));
    assert!(err.contains("--ctx-alloc 72 must be above"), "{err}");
    let err = assert_one_line_error(&ds4(&["bench", "-m", tiny(), "--frontiers", "64,32"]));
    assert!(err.contains("strictly increasing"), "{err}");
    let err = assert_one_line_error(&ds4(&["bench", "-m", "/nonexistent/m.gguf"]));
    assert!(err.contains("no model at /nonexistent/m.gguf"), "{err}");
}
