//! The CPU forward pass against the tiny_a oracles (../shared/oracle/README.md).

mod common;

use common::*;
use ds4_model::forward::{forward, forward_chunked, Logits};
use ds4_model::backend::Backend;
use ds4_model::numerics::Numerics;

#[test]
fn exact_numerics_match_transformers() {
    let model = tiny_a_model();
    let b = backend(&model, Numerics::Exact);
    let tokens = tiny_a_tokens();
    let mut kv = b.new_kv(256, tokens.len()).unwrap();
    let logits = forward(&b, &model.weights, &mut kv, &tokens, Logits::All).unwrap();
    let (shape, want) = read_npy_f32(&tiny_a_dir().join("hf_none_logits.npy"));
    assert_eq!(shape, vec![160, 1024]);
    let rel = rel_l2(&logits, &want);
    let agree = argmax_agreement(&logits, &want, 1024);
    eprintln!("tiny_a exact vs hf_none: rel L2 {rel:.3e}, argmax {agree}/160");
    assert!(rel < 1e-4, "relative L2 {rel}");
    assert_eq!(agree, 160);
}

#[test]
fn chunked_prefill_equals_token_by_token_decode() {
    let model = tiny_a_model();
    let b = backend(&model, Numerics::Exact);
    let tokens = tiny_a_tokens();
    let mut kv = b.new_kv(256, 1).unwrap();
    let mut decode = Vec::new();
    for &t in &tokens {
        decode.extend(forward(&b, &model.weights, &mut kv, &[t], Logits::Last).unwrap());
    }
    for chunk in [7, 64, tokens.len()] {
        let mut kv = b.new_kv(256, chunk).unwrap();
        let logits = forward_chunked(&b, &model.weights, &mut kv, &tokens, chunk, true).unwrap();
        let rel = rel_l2(&logits, &decode);
        eprintln!("chunk {chunk}: rel {rel:.3e} vs token-by-token");
        assert!(rel < 1e-5, "chunk {chunk}: relative {rel}");
    }
}
