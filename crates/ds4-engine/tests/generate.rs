//! The generation loop on tiny_a: budget, stop tokens, sink stops,
//! cancellation, and agreement with a plain greedy forward loop.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use ds4_cpu::{CpuBackend, CpuOptions};
use ds4_engine::{
    generate, Control, Engine, EngineOptions, Finish, FnSink, GenerateOptions, Sampler,
    SamplingParams, Step,
};
use ds4_model::numerics::Numerics;
use ds4_model::Model;

fn engine(ctx: usize) -> Engine<CpuBackend> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny_a/tiny_ds4.gguf");
    let model = Model::open(path).unwrap();
    let backend = CpuBackend::new(
        &model,
        CpuOptions {
            numerics: Numerics::Exact,
            threads: 1,
        },
    );
    Engine::new(
        model,
        backend,
        EngineOptions {
            ctx,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn greedy_generation_matches_argmax_of_a_fresh_forward_and_stops_as_told() {
    let e = engine(64);
    let mut s = e.new_session().unwrap();
    e.sync(&mut s, &[5, 9, 200, 17], Control::default())
        .unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let opts = GenerateOptions {
        max_tokens: 6,
        stop_tokens: vec![],
    };
    let mut seen = Vec::new();
    let out = generate(
        &e,
        &mut s,
        &mut sampler,
        &opts,
        None,
        &mut FnSink(|t, _: &[f32]| {
            seen.push(t);
            Step::Continue
        }),
    )
    .unwrap();
    assert_eq!(out.finish, Finish::Length);
    assert_eq!(out.tokens, seen);
    assert_eq!(s.tokens().len(), 4 + 6);

    // Same prompt + generated tokens from scratch: each token was the argmax.
    let mut fresh = e.new_session().unwrap();
    let mut prefix = vec![5, 9, 200, 17];
    for &t in &out.tokens {
        e.sync(&mut fresh, &prefix, Control::default()).unwrap();
        assert_eq!(ds4_engine::argmax(fresh.logits()), Some(t));
        prefix.push(t);
    }

    // A stop token ends generation before it is evaluated.
    let mut s2 = e.new_session().unwrap();
    e.sync(&mut s2, &[5, 9, 200, 17], Control::default())
        .unwrap();
    let stop = out.tokens[2];
    let opts = GenerateOptions {
        max_tokens: 6,
        stop_tokens: vec![stop],
    };
    let out2 = generate(
        &e,
        &mut s2,
        &mut Sampler::new(SamplingParams::greedy()),
        &opts,
        None,
        &mut FnSink(|_, _: &[f32]| Step::Continue),
    )
    .unwrap();
    assert_eq!(out2.finish, Finish::StopToken(stop));
    assert_eq!(out2.tokens, out.tokens[..2].to_vec());
    assert_eq!(s2.len(), 4 + 2);

    // The sink can stop, and a raised cancel flag stops before anything happens.
    let mut s3 = e.new_session().unwrap();
    e.sync(&mut s3, &[5, 9], Control::default()).unwrap();
    let mut n = 0;
    let out3 = generate(
        &e,
        &mut s3,
        &mut Sampler::new(SamplingParams::greedy()),
        &GenerateOptions {
            max_tokens: 10,
            stop_tokens: vec![],
        },
        None,
        &mut FnSink(|_, _: &[f32]| {
            n += 1;
            if n == 3 {
                Step::Stop
            } else {
                Step::Continue
            }
        }),
    )
    .unwrap();
    assert_eq!((out3.finish, out3.tokens.len()), (Finish::Sink, 2));
    let cancel = AtomicBool::new(true);
    let out4 = generate(
        &e,
        &mut s3,
        &mut Sampler::new(SamplingParams::greedy()),
        &GenerateOptions {
            max_tokens: 10,
            stop_tokens: vec![],
        },
        Some(&cancel),
        &mut FnSink(|_, _: &[f32]| Step::Continue),
    )
    .unwrap();
    assert_eq!((out4.finish, out4.tokens.len()), (Finish::Cancelled, 0));
}

#[test]
fn generation_stops_at_the_context_limit() {
    let e = engine(8);
    let mut s = e.new_session().unwrap();
    e.sync(&mut s, &[1, 2, 3, 4, 5, 6], Control::default())
        .unwrap();
    let out = generate(
        &e,
        &mut s,
        &mut Sampler::new(SamplingParams::greedy()),
        &GenerateOptions {
            max_tokens: 100,
            stop_tokens: vec![],
        },
        None,
        &mut FnSink(|_, _: &[f32]| Step::Continue),
    )
    .unwrap();
    assert_eq!(out.finish, Finish::ContextFull);
    assert_eq!(s.len(), 8);
}
