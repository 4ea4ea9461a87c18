//! Session invariants on tiny_a (6 layers: window 8, ratios 0,0,4,16,4,16,
//! indexer top-k 4, so 40 tokens exercise compressed rows and the indexer),
//! in both numerics modes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use ds4_engine::{Control, EngineError, EngineOptions, Sampler, SamplingParams};
use ds4_model::payload::PayloadHeader;

/// Decodes `steps` greedy tokens, returning every logits vector.
fn decode(
    e: &CpuEngine,
    s: &mut ds4_engine::Session<ds4_cpu::CpuBackend>,
    steps: usize,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    for _ in 0..steps {
        let t = sampler.sample(s.logits()).unwrap();
        out.push(e.eval(s, &[t]).unwrap().to_vec());
    }
    out
}

#[test]
fn snapshot_restore_continue_is_bit_identical() {
    for n in BOTH {
        let e = engine(n);
        let mut s = e.new_session().unwrap();
        e.sync(&mut s, &tokens(1, 21), Control::default()).unwrap();
        let snap = e.snapshot(&s).unwrap();
        let straight = decode(&e, &mut s, 6);
        // Restore into a fresh session and into the one that moved on.
        let mut fresh = e.new_session().unwrap();
        e.restore(&mut fresh, &snap).unwrap();
        assert_bit_identical(fresh.logits(), snap.logits(), "restored logits");
        let again = decode(&e, &mut fresh, 6);
        e.restore(&mut s, &snap).unwrap();
        let third = decode(&e, &mut s, 6);
        for i in 0..6 {
            assert_bit_identical(&again[i], &straight[i], &format!("{n:?} step {i}"));
            assert_bit_identical(
                &third[i],
                &straight[i],
                &format!("{n:?} step {i} (same session)"),
            );
        }
    }
}

#[test]
fn payload_round_trip_is_byte_identical_and_resumes() {
    for n in BOTH {
        let e = engine(n);
        let mut s = e.new_session().unwrap();
        e.sync(&mut s, &tokens(2, 37), Control::default()).unwrap();
        let bytes = e.export_payload(&s).unwrap();
        assert_eq!(
            bytes.len() as u64,
            ds4_model::payload::payload_bytes(e.config(), 96, 37)
        );
        let mut t = e.new_session().unwrap();
        e.import_payload(&mut t, &bytes).unwrap();
        assert_eq!(
            e.export_payload(&t).unwrap(),
            bytes,
            "{n:?}: payload changed by a round trip"
        );
        assert_bit_identical(t.logits(), s.logits(), "imported logits");
        let a = decode(&e, &mut s, 5);
        let b = decode(&e, &mut t, 5);
        for i in 0..5 {
            assert_bit_identical(&a[i], &b[i], &format!("{n:?} step {i} after import"));
        }
    }
}

/// The payload does not depend on the prefill chunking: the CPU backend
/// computes every token's values independently of its batch, and export
/// resets stale compressor slots (canonical form), so token-by-token and
/// batched prefills give byte-identical payloads (except the prefill-chunk
/// and ring-size header fields, which describe the session, not the state).
#[test]
fn payload_is_canonical_across_batch_sizes() {
    for n in BOTH {
        let prompt = tokens(3, 38);
        let payload_with = |chunk: usize| {
            let e = engine_with(
                n,
                EngineOptions {
                    prefill_chunk: chunk,
                    ..small_opts()
                },
            );
            let mut s = e.new_session().unwrap();
            e.sync(&mut s, &prompt, Control::default()).unwrap();
            let mut b = e.export_payload(&s).unwrap();
            // Header fields 3 and 4: the prefill chunk and the physical ring
            // (window + chunk on the CPU).
            b[12..20].fill(0);
            b
        };
        let whole = payload_with(38);
        for chunk in [1, 2, 5, 8] {
            let other = payload_with(chunk);
            let first = other.iter().zip(&whole).position(|(a, b)| a != b);
            assert!(
                other.len() == whole.len() && first.is_none(),
                "{n:?}: chunk {chunk} vs one batch: first difference at byte {first:?} of {}",
                whole.len()
            );
        }
    }
}

#[test]
fn rewind_to_shorter_and_diverging_prompts_matches_fresh_runs() {
    for n in BOTH {
        let e = engine(n);
        let base = tokens(4, 30);
        let fresh = |p: &[u32]| {
            let mut s = e.new_session().unwrap();
            e.sync(&mut s, p, Control::default()).unwrap();
            s.logits().to_vec()
        };
        let mut s = e.new_session().unwrap();
        e.sync(&mut s, &base, Control::default()).unwrap();
        assert_eq!(s.rewind_points(), vec![16, 30]);

        // Shorter: restore the point at 16, evaluate 16..20 (chunk-aligned,
        // so the batches equal a fresh run's: bit-identical).
        let r = e.sync(&mut s, &base[..20], Control::default()).unwrap();
        assert_eq!((r.rewound_to, r.evaluated), (Some(16), 4));
        assert_bit_identical(s.logits(), &fresh(&base[..20]), "shorter prompt");

        // Diverging after 24 tokens.
        let mut other = base[..24].to_vec();
        other.extend(tokens(5, 8));
        e.sync(&mut s, &base, Control::default()).unwrap();
        let r = e.sync(&mut s, &other, Control::default()).unwrap();
        // The newest point at or before 24 is the end of the earlier prompt (20).
        assert_eq!(r.rewound_to, Some(20));
        assert_bit_identical(s.logits(), &fresh(&other), "diverging prompt");

        // A rewind point that is not chunk-aligned (prompt end at 21):
        // resuming from it batches differently, which changes nothing.
        let mut s2 = e.new_session().unwrap();
        e.sync(&mut s2, &base[..21], Control::default()).unwrap();
        e.sync(&mut s2, &base, Control::default()).unwrap();
        let r = e.sync(&mut s2, &base[..27], Control::default()).unwrap();
        assert_eq!(r.rewound_to, Some(21));
        assert_bit_identical(s2.logits(), &fresh(&base[..27]), "unaligned rewind");

        // No usable point (diverges at 3): refill from scratch.
        let mut third = base[..3].to_vec();
        third.extend(tokens(6, 12));
        let r = e.sync(&mut s, &third, Control::default()).unwrap();
        assert_eq!((r.rewound_to, r.evaluated), (Some(0), 15));
        assert_bit_identical(s.logits(), &fresh(&third), "refill");
    }
}

#[test]
fn regenerate_last_turn_restores_without_evaluating() {
    for n in BOTH {
        let e = engine(n);
        let prompt = tokens(7, 19);
        let mut s = e.new_session().unwrap();
        e.sync(&mut s, &prompt, Control::default()).unwrap();
        let after_prompt = s.logits().to_vec();
        let first = decode(&e, &mut s, 7);
        let r = e.sync(&mut s, &prompt, Control::default()).unwrap();
        assert_eq!((r.rewound_to, r.evaluated), (Some(19), 0));
        assert_eq!(s.tokens(), &prompt[..]);
        assert_bit_identical(s.logits(), &after_prompt, "logits at the prompt end");
        let second = decode(&e, &mut s, 7);
        for i in 0..7 {
            assert_bit_identical(
                &first[i],
                &second[i],
                &format!("{n:?} regenerated step {i}"),
            );
        }
        // The next turn extends the transcript: pure reuse.
        let mut next = s.tokens().to_vec();
        next.extend(tokens(8, 5));
        let r = e.sync(&mut s, &next, Control::default()).unwrap();
        assert_eq!((r.reused, r.rewound_to, r.evaluated), (26, None, 5));
    }
}

#[test]
fn progress_and_cancellation_leave_a_consistent_session() {
    let e = engine(ds4_model::numerics::Numerics::Exact);
    let prompt = tokens(9, 30);
    let cancel = AtomicBool::new(false);
    let mut seen = Vec::new();
    let mut cb = |p: &ds4_engine::Progress| {
        seen.push((p.done, p.total));
        if p.done >= 16 {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let mut s = e.new_session().unwrap();
    let err = e
        .sync(
            &mut s,
            &prompt,
            Control {
                progress: Some(&mut cb),
                cancel: Some(&cancel),
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Cancelled {
                evaluated: 16,
                len: 16
            }
        ),
        "{err}"
    );
    assert_eq!(seen, vec![(8, 30), (16, 30)]);
    assert_eq!(s.tokens(), &prompt[..16]);
    let r = e.sync(&mut s, &prompt, Control::default()).unwrap();
    assert_eq!((r.reused, r.evaluated), (16, 14));
    let mut f = e.new_session().unwrap();
    e.sync(&mut f, &prompt, Control::default()).unwrap();
    assert_bit_identical(s.logits(), f.logits(), "resumed after cancel");
}

#[test]
fn context_limit_and_bad_tokens_are_errors() {
    let e = engine_with(
        ds4_model::numerics::Numerics::Exact,
        EngineOptions {
            ctx: 24,
            ..small_opts()
        },
    );
    let mut s = e.new_session().unwrap();
    let err = e
        .sync(&mut s, &tokens(1, 25), Control::default())
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::ContextFull {
            needed: 25,
            ctx: 24
        }
    ));
    e.sync(&mut s, &tokens(1, 20), Control::default()).unwrap();
    let err = e.eval(&mut s, &tokens(2, 5)).unwrap_err();
    assert!(matches!(err, EngineError::ContextFull { .. }));
    assert_eq!(s.len(), 20, "a refused eval leaves the session as it was");
    let err = e
        .sync(&mut s, &[1, 2, 5000], Control::default())
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::TokenOutOfRange {
            id: 5000,
            pos: 2,
            ..
        }
    ));
    assert_eq!(s.len(), 20);
    // A payload of a larger context does not load.
    let big = engine(ds4_model::numerics::Numerics::Exact);
    let mut b = big.new_session().unwrap();
    big.sync(&mut b, &tokens(1, 10), Control::default())
        .unwrap();
    let bytes = big.export_payload(&b).unwrap();
    assert!(e.import_payload(&mut s, &bytes).is_err());
    assert_eq!(
        s.len(),
        20,
        "a payload that fails validation leaves the session alone"
    );
    let h = PayloadHeader::parse(&bytes).unwrap();
    assert_eq!((h.ctx, h.n_tokens, h.live_raw), (96, 10, 8));
}

/// Truncated or bit-flipped payloads are refused with an error, never a
/// panic, and never half-load a session.
#[test]
fn damaged_payloads_are_refused_without_panics() {
    let e = engine(ds4_model::numerics::Numerics::Exact);
    let mut s = e.new_session().unwrap();
    e.sync(&mut s, &tokens(11, 22), Control::default()).unwrap();
    let good = e.export_payload(&s).unwrap();
    let mut t = e.new_session().unwrap();
    for cut in (0..good.len()).step_by(997).chain([good.len() - 1]) {
        assert!(
            e.import_payload(&mut t, &good[..cut]).is_err(),
            "cut at {cut}"
        );
        assert!(t.is_empty());
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(e.import_payload(&mut t, &longer).is_err(), "trailing byte");
    // Every header word and the row counts, each bit pattern disturbed.
    let counts_at = 52 + 4 * 22 + 4 * 1024;
    for at in (0..52).chain(52..60).chain(counts_at..counts_at + 48) {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = good.clone();
            b[at] ^= flip;
            // Some header words are informational (prefill chunk, ring size,
            // compressed capacity) or saved ctx within range; the rest must fail.
            // Token bytes (52..60) may flip to another valid id: only the
            // disk file's checksum can tell; here they must not panic.
            if e.import_payload(&mut t, &b).is_ok() {
                let informational = at < 52 && matches!(at / 4, 2 | 3 | 4 | 6);
                assert!(
                    informational || (52..60).contains(&at),
                    "byte {at} ^ {flip:#x} was accepted"
                );
                assert_eq!(t.len(), 22);
            }
        }
    }
}
