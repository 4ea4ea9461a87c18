//! The CPU forward pass against the project's own transformers fixtures
//! (tests/data/fixtures_<name>/, scripts/gen_model_fixtures.py): full logits
//! at every position in exact numerics.
//!
//! * `hca128`: the production HCA ratio 128 (5 compressed rows in 640 tokens)
//!   after a CSA layer selecting 8 of up to 160 rows, window 16;
//! * `q4k`: Q4_K routed experts, otherwise tiny_a-like;
//! * `indexer_long`: two CSA layers selecting 6 of up to 96 rows, a mixed
//!   file (IQ2_XXS/Q2_K experts in one layer, Q4_K in the other).

mod common;

use common::own::{own_fixture, OwnFixture, OWN_FIXTURES};
use common::*;
use ds4_model::backend::Backend;
use ds4_model::forward::{forward, forward_chunked, Logits};
use ds4_model::numerics::Numerics;

/// Runs the whole sequence as one batch and compares with transformers.
fn check_exact(f: &OwnFixture) {
    let b = backend(&f.model, Numerics::Exact);
    let t = f.tokens.len();
    let mut kv = b.new_kv(t, t).unwrap();
    let start = std::time::Instant::now();
    let logits = forward(&b, &f.model.weights, &mut kv, &f.tokens, Logits::All).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let rel = rel_l2(&logits, &f.logits);
    let agree = argmax_agreement(&logits, &f.logits, f.vocab);
    eprintln!(
        "{}: exact vs transformers: rel L2 {rel:.3e}, argmax {agree}/{t} ({secs:.2} s)",
        f.name
    );
    assert!(rel < 1e-4, "{}: relative L2 {rel}", f.name);
    assert_eq!(agree, t, "{}: argmax agreement {agree}/{t}", f.name);
}

#[test]
fn hca128_exact_matches_transformers() {
    check_exact(&own_fixture("hca128"));
}

#[test]
fn q4k_exact_matches_transformers() {
    check_exact(&own_fixture("q4k"));
}

#[test]
fn indexer_long_exact_matches_transformers() {
    check_exact(&own_fixture("indexer_long"));
}

/// Prefill in chunks that straddle compressor windows (and the 128-token
/// HCA windows) lands on the same logits as transformers' single batch.
#[test]
fn chunked_prefill_matches_transformers() {
    for name in OWN_FIXTURES {
        let f = own_fixture(name);
        let b = backend(&f.model, Numerics::Exact);
        let chunk = 61;
        let mut kv = b.new_kv(f.tokens.len(), chunk).unwrap();
        let logits =
            forward_chunked(&b, &f.model.weights, &mut kv, &f.tokens, chunk, true).unwrap();
        let rel = rel_l2(&logits, &f.logits);
        let agree = argmax_agreement(&logits, &f.logits, f.vocab);
        let t = f.tokens.len();
        eprintln!("{name}: chunks of {chunk}: rel L2 {rel:.3e}, argmax {agree}/{t}");
        assert!(rel < 1e-4, "{name}: relative L2 {rel}");
        assert_eq!(agree, t, "{name}: argmax agreement {agree}/{t}");
    }
}
