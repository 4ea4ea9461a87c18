//! The snapshot and disk-cache invariants on a second model: the `tiny`
//! synthetic preset (real 129,280-token vocabulary, random weights, layer
//! schedule from `ds4_model::synth`), in both numerics modes.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::*;
use ds4_cpu::{CpuBackend, CpuOptions};
use ds4_engine::kvstore::{KvStore, KvStoreOptions, StoreOutcome, StoreRequest};
use ds4_engine::{CachePolicy, Control, Engine, Sampler, SamplingParams, SaveReason};
use ds4_model::numerics::Numerics;
use ds4_model::synth::{self, Preset, SynthSpec};
use ds4_model::Model;

/// Written once per test binary into the target directory.
fn synthetic_tiny() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("engine-synthetic-tiny-{}.gguf", std::process::id()));
        synth::write(
            &SynthSpec::new(Preset::Tiny).seed(7).threads(2),
            &path,
            true,
            &|_, _| {},
        )
        .unwrap();
        path
    })
}

fn engine(numerics: Numerics) -> CpuEngine {
    let model = Model::open(synthetic_tiny()).unwrap();
    let backend = CpuBackend::new(
        &model,
        CpuOptions {
            numerics,
            threads: 2,
        },
    );
    Engine::new(model, backend, small_opts()).unwrap()
}

fn decode(e: &CpuEngine, s: &mut ds4_engine::Session<CpuBackend>, steps: usize) -> Vec<Vec<f32>> {
    let mut sampler = Sampler::new(SamplingParams::greedy());
    (0..steps)
        .map(|_| {
            let t = sampler.sample(s.logits()).unwrap();
            e.eval(s, &[t]).unwrap().to_vec()
        })
        .collect()
}

#[test]
fn synthetic_model_snapshot_and_disk_round_trips_are_exact() {
    for n in BOTH {
        let e = engine(n);
        // 30 tokens: past the window and several compressed rows on every
        // compressed layer of the preset.
        let prompt = tokens(40, 30);
        let mut s = e.new_session().unwrap();
        e.sync(&mut s, &prompt, Control::default()).unwrap();
        assert!(
            s.logits().iter().all(|v| v.is_finite()),
            "{n:?}: non-finite logits"
        );

        // Snapshot → restore → continue equals the uninterrupted run, bit for bit.
        let snap = e.snapshot(&s).unwrap();
        let straight = decode(&e, &mut s, 4);
        let mut r = e.new_session().unwrap();
        e.restore(&mut r, &snap).unwrap();
        let again = decode(&e, &mut r, 4);
        for (i, (a, b)) in again.iter().zip(&straight).enumerate() {
            assert_bit_identical(a, b, &format!("{n:?} step {i} after restore"));
        }

        // Disk save → load: byte-identical payload, identical next-token logits.
        let mut t0 = e.new_session().unwrap();
        e.sync(&mut t0, &prompt, Control::default()).unwrap();
        let payload = e.export_payload(&t0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // ds4's default minimum checkpoint is 512 tokens; this prompt is 30.
        let opts = KvStoreOptions {
            policy: CachePolicy {
                min_tokens: 8,
                ..CachePolicy::default()
            },
            ..KvStoreOptions::default()
        };
        let store = KvStore::open(dir.path(), opts).unwrap();
        let text = text_of(&prompt);
        let req = StoreRequest {
            text: &text,
            payload: &payload,
            tokens: prompt.len() as u32,
            ctx: 96,
            quant_bits: e.quant_bits(),
            reason: SaveReason::Cold,
            key_flags: 0,
            tool_map: &[],
            protect: &[],
        };
        assert!(matches!(
            store.store(&req).unwrap(),
            StoreOutcome::Written { .. }
        ));
        // A request whose rendered text extends the saved prefix finds it.
        let mut longer = prompt.clone();
        longer.extend(tokens(41, 5));
        let entry = store
            .lookup(&text_of(&longer), 96, e.quant_bits())
            .expect("the checkpoint is found");
        let loaded = store.load(&entry).unwrap();
        assert_eq!(
            loaded.payload, payload,
            "{n:?}: payload bytes changed on disk"
        );
        let mut t = e.new_session().unwrap();
        e.import_payload(&mut t, &loaded.payload).unwrap();
        assert_bit_identical(t.logits(), t0.logits(), "next-token logits after load");
        let a = decode(&e, &mut t, 3);
        let b = decode(&e, &mut t0, 3);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_bit_identical(x, y, &format!("{n:?} step {i} after disk load"));
        }
    }
    let _ = std::fs::remove_file(synthetic_tiny());
}
