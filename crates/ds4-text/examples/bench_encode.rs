//! Tokenizer throughput benchmark (used by `scripts/text_bench_tokenizer.py`).
//!
//! ```text
//! cargo run --release -p ds4-text --example bench_encode -- DOCS.jsonl [--tokenizer PATH] [--runs N]
//! ```
//!
//! `DOCS.jsonl` holds one JSON string per line. Every document is encoded with HF semantics
//! (`EncodeMode::Hf`, the same as HF `encode(add_special_tokens=False)`) on one thread. Prints
//! the first (cold-cache) pass and the best of `N` further passes in MB/s, plus a checksum of
//! all ids so the caller can compare with HF. `--dump PATH` also writes the ids of every
//! document as one JSON array per line (for differential checks).

use std::time::Instant;

use ds4_text::{EncodeMode, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut docs_path = None;
    let mut tok_path = format!(
        "{}/../../data/tokenizer/tokenizer.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut runs = 3usize;
    let mut dump = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tokenizer" => tok_path = args.next().ok_or("--tokenizer PATH")?,
            "--dump" => dump = Some(args.next().ok_or("--dump PATH")?),
            "--runs" => runs = args.next().ok_or("--runs N")?.parse()?,
            _ => docs_path = Some(a),
        }
    }
    let docs_path =
        docs_path.ok_or("usage: bench_encode DOCS.jsonl [--tokenizer PATH] [--runs N]")?;
    let docs: Vec<String> = std::fs::read_to_string(&docs_path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let bytes: usize = docs.iter().map(String::len).sum();
    let mb = bytes as f64 / 1e6;

    let t = Instant::now();
    let tok = Tokenizer::from_tokenizer_json(&std::fs::read_to_string(&tok_path)?)?;
    let load_s = t.elapsed().as_secs_f64();

    if let Some(path) = dump {
        let mut out = String::new();
        for d in &docs {
            out.push_str(&serde_json::to_string(&tok.encode_with(d, EncodeMode::Hf))?);
            out.push('\n');
        }
        std::fs::write(path, out)?;
    }

    let pass = || {
        let t = Instant::now();
        let mut n_ids = 0usize;
        let mut sum = 0u64;
        for d in &docs {
            let ids = tok.encode_with(d, EncodeMode::Hf);
            n_ids += ids.len();
            for id in ids {
                sum = sum.wrapping_mul(1_000_003).wrapping_add(id as u64 + 1);
            }
        }
        (t.elapsed().as_secs_f64(), n_ids, sum)
    };
    let (cold, n_ids, sum) = pass();
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let (s, n2, sum2) = pass();
        assert_eq!((n2, sum2), (n_ids, sum), "encoding is deterministic");
        best = best.min(s);
    }
    println!(
        "docs={} bytes={} ids={} checksum={}",
        docs.len(),
        bytes,
        n_ids,
        sum
    );
    println!("load_s={load_s:.3}");
    println!("ours_cold_mb_s={:.2}", mb / cold);
    println!("ours_warm_mb_s={:.2}", mb / best);
    Ok(())
}
