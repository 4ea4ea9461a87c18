//! The session pool and the disk cache with real payloads (tiny_a): a file
//! written by the engine parsed field by field against SERVING.md §6.3 and
//! MODEL.md §5.3, save → load round trips, several conversations, LRU
//! eviction to disk, and damaged files during a request.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::*;
use ds4_engine::kvstore::{KvStore, KvStoreOptions, StoreOutcome, StoreRequest, ToolMapping};
use ds4_engine::{CachePolicy, Control, DiskCache, PoolOptions, SaveReason, SessionPool};
use ds4_model::numerics::Numerics;
use ds4_model::payload::payload_bytes;

fn policy() -> CachePolicy {
    CachePolicy {
        min_tokens: 8,
        cold_max_tokens: 1000,
        continued_interval_tokens: 0,
        boundary_trim_tokens: 4,
        boundary_align_tokens: 8,
        user_token: None,
        assistant_token: None,
    }
}

fn disk(dir: &Path) -> DiskCache {
    DiskCache {
        store: KvStore::open(
            dir,
            KvStoreOptions {
                policy: policy(),
                warn: Arc::new(|m| eprintln!("warning: {m}")),
                ..KvStoreOptions::default()
            },
        )
        .unwrap(),
        text_of: Box::new(|t: &[u32]| text_of(t)),
        tool_map_of: None,
    }
}

fn kv_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .filter(|p| p.extension().is_some_and(|e| e == "kv"))
        .collect();
    v.sort();
    v
}

fn fresh_logits(e: &CpuEngine, prompt: &[u32]) -> Vec<f32> {
    let mut s = e.new_session().unwrap();
    e.sync(&mut s, prompt, Control::default()).unwrap();
    s.logits().to_vec()
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn engine_written_file_parses_field_by_field() {
    let e = engine(Numerics::Official);
    let dir = tempfile::tempdir().unwrap();
    let mut pool = SessionPool::new(PoolOptions::default(), Some(disk(dir.path())));
    let prompt = tokens(21, 27);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_, r) = pool.prepare(&e, &prompt, Control::default()).unwrap();
    // Cold store: 27 − trim 4 = 23, aligned down to 8 → a 16-token boundary.
    assert_eq!(r.stored, 1);
    let files = kv_files(dir.path());
    assert_eq!(files.len(), 1);
    let b = fs::read(&files[0]).unwrap();
    let n = 16usize;
    let text = text_of(&prompt[..n]);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        name,
        format!(
            "{}.kv",
            ds4_engine::kvstore::format::sha1_hex(text.as_bytes())
        )
    );
    // Fixed header (48 bytes).
    assert_eq!(&b[0..3], b"KVC");
    assert_eq!(b[3], 1, "version");
    assert_eq!(b[4], e.quant_bits(), "quant bits");
    assert!(b[4] == 2 || b[4] == 4);
    assert_eq!(b[5], 1, "save reason cold");
    assert_eq!(b[6], 0, "no extension flags");
    assert_eq!(b[7], 0, "reserved");
    assert_eq!(u32_at(&b, 8), n as u32, "cached tokens");
    assert_eq!(u32_at(&b, 12), 0, "hits");
    assert_eq!(u32_at(&b, 16), 96, "ctx");
    assert_ne!(u32_at(&b, 20), 0, "our checksum in ds4's reserved word");
    let created = u64_at(&b, 24);
    assert!(created >= t0 && created <= t0 + 60);
    assert_eq!(u64_at(&b, 32), created, "last used = created");
    let pbytes = payload_bytes(e.config(), 96, n);
    assert_eq!(u64_at(&b, 40), pbytes, "payload bytes");
    // Text.
    let tb = u32_at(&b, 48) as usize;
    assert_eq!(&b[52..52 + tb], text.as_bytes());
    // Payload: 13 header words.
    let p = &b[52 + tb..];
    assert_eq!(
        p.len() as u64,
        pbytes,
        "no trailer, nothing after the payload"
    );
    let w: Vec<u32> = (0..13).map(|i| u32_at(p, 4 * i)).collect();
    assert_eq!(
        w,
        vec![
            0x3456_5344,
            1,
            96,
            8,
            16,
            8,
            96 / 4 + 2,
            n as u32,
            6,
            256,
            128,
            1024,
            8
        ]
    );
    let mut at = 52;
    let toks: Vec<u32> = (0..n).map(|i| u32_at(p, at + 4 * i)).collect();
    assert_eq!(toks, &prompt[..n]);
    at += 4 * n + 4 * 1024; // tokens, logits
    let counts: Vec<u32> = (0..6).map(|i| u32_at(p, at + 4 * i)).collect();
    assert_eq!(
        counts,
        vec![0, 0, 4, 1, 4, 1],
        "attention rows: ratios 0,0,4,16,4,16"
    );
    let index: Vec<u32> = (0..6).map(|i| u32_at(p, at + 24 + 4 * i)).collect();
    assert_eq!(index, vec![0, 0, 4, 0, 4, 0]);
    at += 48;
    // Per layer: raw rows, then compressed rows and state (kv, score).
    for (il, ratio) in [0usize, 0, 4, 16, 4, 16].into_iter().enumerate() {
        at += 8 * 256 * 4;
        if ratio == 4 {
            at += (4 * 256 + 2 * 8 * 512) * 4; // attention rows + S_kv + S_sc (8 × 512)
            let score0 = f32::from_le_bytes(p[at - 8 * 512 * 4..][..4].try_into().unwrap());
            assert!(score0.is_finite(), "layer {il}: a live score");
            at += (4 * 128 + 2 * 8 * 256) * 4; // indexer rows + state
        } else if ratio == 16 {
            at += (256 + 2 * 16 * 256) * 4;
        }
    }
    assert_eq!(at, p.len(), "per-layer sections fill the payload exactly");
    // After the cold store the session went on to the whole prompt.
    assert_eq!(r.sync.evaluated, 27);
}

#[test]
fn disk_save_then_load_is_byte_identical_and_resumes_exactly() {
    for n in BOTH {
        let e = engine(n);
        let dir = tempfile::tempdir().unwrap();
        let store = disk(dir.path()).store;
        let prompt = tokens(22, 27);
        let mut s = e.new_session().unwrap();
        e.sync(&mut s, &prompt, Control::default()).unwrap();
        let payload = e.export_payload(&s).unwrap();
        let text = text_of(&prompt);
        let req = StoreRequest {
            text: &text,
            payload: &payload,
            tokens: 27,
            ctx: 96,
            quant_bits: e.quant_bits(),
            reason: SaveReason::Shutdown,
            key_flags: 0,
            tool_map: &[],
            protect: &[],
        };
        assert!(matches!(
            store.store(&req).unwrap(),
            StoreOutcome::Written { .. }
        ));
        let mut longer = prompt.clone();
        longer.extend(tokens(23, 6));
        let entry = store.lookup(&text_of(&longer), 96, e.quant_bits()).unwrap();
        let loaded = store.load(&entry).unwrap();
        assert_eq!(
            loaded.payload, payload,
            "{n:?}: payload bytes changed on disk"
        );
        let mut t = e.new_session().unwrap();
        e.import_payload(&mut t, &loaded.payload).unwrap();
        assert_bit_identical(t.logits(), s.logits(), "next-token logits after load");
        assert_eq!(e.export_payload(&t).unwrap(), payload);
        e.sync(&mut s, &longer, Control::default()).unwrap();
        e.sync(&mut t, &longer, Control::default()).unwrap();
        assert_bit_identical(t.logits(), s.logits(), "continued after load");
    }
}

#[test]
fn two_conversations_alternate_and_reuse_their_own_prefixes() {
    let e = engine(Numerics::Exact);
    let mut pool = SessionPool::new(
        PoolOptions {
            max_sessions: 2,
            ..PoolOptions::default()
        },
        None,
    );
    let mut a = tokens(31, 20);
    let mut b = tokens(32, 18);
    let (ia, r) = pool.prepare(&e, &a, Control::default()).unwrap();
    assert_eq!(r.sync.reused, 0);
    let (ib, r) = pool.prepare(&e, &b, Control::default()).unwrap();
    assert_ne!(ia, ib);
    assert_eq!(r.sync.reused, 0);
    for round in 0..3 {
        a.extend(tokens(40 + round, 6));
        let (id, r) = pool.prepare(&e, &a, Control::default()).unwrap();
        assert_eq!((id, r.sync.reused, r.sync.evaluated), (ia, a.len() - 6, 6));
        // The CPU backend's values do not depend on batching: bit-identical.
        assert_bit_identical(
            pool.session(id).unwrap().logits(),
            &fresh_logits(&e, &a),
            "a",
        );
        b.extend(tokens(50 + round, 5));
        let (id, r) = pool.prepare(&e, &b, Control::default()).unwrap();
        assert_eq!((id, r.sync.reused, r.sync.evaluated), (ib, b.len() - 5, 5));
        assert_bit_identical(
            pool.session(id).unwrap().logits(),
            &fresh_logits(&e, &b),
            "b",
        );
    }
    // Generation through the pool appends to the right session.
    let logits = pool.eval(&e, ia, &[5]).unwrap();
    a.push(5);
    assert_eq!(pool.session(ia).unwrap().tokens(), &a[..]);
    assert_eq!(logits.len(), 1024);
}

#[test]
fn least_recently_used_session_goes_to_disk_and_comes_back() {
    for n in BOTH {
        let e = engine(n);
        let dir = tempfile::tempdir().unwrap();
        let mut pool = SessionPool::new(PoolOptions::default(), Some(disk(dir.path())));
        let a = tokens(61, 20);
        let b = tokens(62, 19);
        let (ia, _) = pool.prepare(&e, &a, Control::default()).unwrap();
        // One session only: B (no common prefix) evicts A to disk.
        let (ib, r) = pool.prepare(&e, &b, Control::default()).unwrap();
        assert_eq!(r.evicted_sessions, 1);
        assert_ne!(ia, ib, "a replaced session gets a new id");
        assert_eq!(pool.ids(), vec![ib]);
        let evicted = kv_files(dir.path())
            .into_iter()
            .filter_map(|p| {
                let r = ds4_engine::inspect_file_with(&p, Some((e.config(), 96)));
                assert!(r.valid(), "{:?}", r.problems);
                r.header.filter(|h| h.reason == SaveReason::Evict)
            })
            .collect::<Vec<_>>();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].tokens, 20);
        // A comes back extended: loaded from disk, then 6 tokens evaluated.
        let mut a2 = a.clone();
        a2.extend(tokens(63, 6));
        let (id, r) = pool.prepare(&e, &a2, Control::default()).unwrap();
        assert_eq!(
            (r.disk_tokens, r.sync.reused, r.sync.evaluated),
            (20, 20, 6)
        );
        assert_bit_identical(
            pool.session(id).unwrap().logits(),
            &fresh_logits(&e, &a2),
            "A after disk",
        );
        // Shutdown saves the live session.
        assert_eq!(pool.shutdown(&e).unwrap(), 1);
    }
}

#[test]
fn memory_budget_limits_live_sessions() {
    let e = engine(Numerics::Exact);
    let mut probe = SessionPool::new(PoolOptions::default(), None);
    let (id, _) = probe
        .prepare(&e, &tokens(70, 12), Control::default())
        .unwrap();
    let one = e.session_bytes(probe.session(id).unwrap());
    let mut pool = SessionPool::new(
        PoolOptions {
            memory_budget: 2 * one + one / 2,
            max_sessions: 8,
        },
        None,
    );
    let (i1, _) = pool
        .prepare(&e, &tokens(71, 12), Control::default())
        .unwrap();
    let (i2, _) = pool
        .prepare(&e, &tokens(72, 12), Control::default())
        .unwrap();
    let (i3, _) = pool
        .prepare(&e, &tokens(73, 12), Control::default())
        .unwrap();
    assert_eq!(pool.ids().len(), 2, "the budget holds two sessions");
    assert!(pool.session(i3).is_some());
    assert!(pool.session(i1).is_none() || pool.session(i2).is_none());
    assert!(pool.memory_bytes(&e) <= 2 * one + one / 2);
}

#[test]
fn a_damaged_cache_file_is_skipped_and_the_session_stays_correct() {
    let e = engine(Numerics::Official);
    let dir = tempfile::tempdir().unwrap();
    let a = tokens(81, 20);
    {
        let mut pool = SessionPool::new(PoolOptions::default(), Some(disk(dir.path())));
        pool.prepare(&e, &a, Control::default()).unwrap();
        pool.shutdown(&e).unwrap();
    }
    let mut a2 = a.clone();
    a2.extend(tokens(82, 5));
    let want = fresh_logits(&e, &a2);
    let path = kv_files(dir.path())
        .into_iter()
        .find(|p| {
            let r = ds4_engine::inspect_file(p);
            r.header.is_some_and(|h| h.tokens == 20)
        })
        .unwrap();
    let good = fs::read(&path).unwrap();
    let tb = u32_at(&good, 48) as usize;
    // (what, damage): a flipped payload byte (caught by the checksum), and a
    // ds4-style file without checksum whose payload disagrees with the model.
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: [(&str, Damage); 3] = [
        (
            "flipped logit",
            Box::new(move |b: &mut Vec<u8>| b[52 + tb + 52 + 80 + 3] ^= 0x40),
        ),
        (
            "no checksum, wrong vocab",
            Box::new(move |b: &mut Vec<u8>| {
                b[20..24].fill(0);
                b[52 + tb + 44] ^= 1;
            }),
        ),
        (
            "no checksum, token outside the vocabulary",
            Box::new(move |b: &mut Vec<u8>| {
                b[20..24].fill(0);
                b[52 + tb + 52 + 2] = 0x7f;
            }),
        ),
    ];
    for (what, damage) in cases {
        for p in kv_files(dir.path()) {
            fs::remove_file(p).unwrap();
        }
        let mut bytes = good.clone();
        damage(&mut bytes);
        fs::write(&path, &bytes).unwrap();
        let mut pool = SessionPool::new(PoolOptions::default(), Some(disk(dir.path())));
        let (id, r) = pool.prepare(&e, &a2, Control::default()).unwrap();
        assert_eq!(r.disk_tokens, 0, "{what}: a damaged file was used");
        assert_eq!(r.sync.evaluated, a2.len(), "{what}");
        assert_bit_identical(pool.session(id).unwrap().logits(), &want, what);
        assert!(!path.exists(), "{what}: the file was not moved aside");
        assert!(dir.path().join("quarantine").read_dir().unwrap().count() > 0);
    }
}

/// A checkpoint written by the pool carries the tool-id mappings whose DSML
/// block occurs in its text (SERVING.md §6.3 flag bit 0, §3.8), and a reader
/// handle finds them by id without loading payloads.
#[test]
fn checkpoints_carry_the_tool_map_and_a_reader_finds_ids() {
    let e = engine(Numerics::Exact);
    let dir = tempfile::tempdir().unwrap();
    let a = tokens(71, 20);
    let b = tokens(72, 19);
    let in_text = text_of(&a[5..9]);
    let mut cache = disk(dir.path());
    let block = in_text.clone();
    cache.tool_map_of = Some(Box::new(move |_text: &str| {
        vec![
            ToolMapping {
                id: "call_in".into(),
                dsml: block.clone(),
            },
            ToolMapping {
                id: "call_absent".into(),
                dsml: "<no such block>".into(),
            },
        ]
    }));
    let mut pool = SessionPool::new(PoolOptions::default(), Some(cache));
    pool.prepare(&e, &a, Control::default()).unwrap();
    // One live session: B evicts A to disk, with its map.
    pool.prepare(&e, &b, Control::default()).unwrap();
    let reader = KvStore::reader(dir.path(), KvStoreOptions::default());
    let all = reader.tool_mappings(&|_| true);
    assert_eq!(
        all,
        vec![ToolMapping {
            id: "call_in".into(),
            dsml: in_text.clone()
        }],
        "only the mapping whose block is in the checkpoint text is stored"
    );
    assert!(reader.tool_mappings(&|id| id == "call_other").is_empty());
    // The full load agrees with the reader.
    let entry = reader
        .scan()
        .into_iter()
        .find(|e| e.header.reason == SaveReason::Evict)
        .unwrap();
    assert_eq!(reader.load(&entry).unwrap().tool_map, all);
}

/// A sink that accepts every token and says whether a checkpoint may be
/// taken (a server sink says no inside a tool-call block).
struct Sink {
    checkpoint_ok: bool,
}

impl ds4_engine::TokenSink for Sink {
    fn choose(&mut self, _: &mut ds4_engine::Sampler, logits: &[f32]) -> Option<u32> {
        // Greedy, and never token 0 (tiny_a's vocabulary has no stop here).
        logits
            .iter()
            .enumerate()
            .skip(1)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
    }
    fn accept(&mut self, _: u32, _: &[f32]) -> ds4_engine::Step {
        ds4_engine::Step::Continue
    }
    fn checkpoint_ok(&self) -> bool {
        self.checkpoint_ok
    }
}

/// SERVING.md §6.4: continued checkpoints are also written while decoding,
/// at the frontier (here every 8 tokens), unless the sink is inside a
/// tool-call block.
#[test]
fn continued_checkpoints_are_written_during_generation() {
    let e = engine(Numerics::Exact);
    for ok in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = disk(dir.path());
        cache.store = KvStore::open(
            dir.path(),
            KvStoreOptions {
                policy: CachePolicy {
                    continued_interval_tokens: 8,
                    cold_max_tokens: 0,
                    ..policy()
                },
                ..KvStoreOptions::default()
            },
        )
        .unwrap();
        let mut pool = SessionPool::new(PoolOptions::default(), Some(cache));
        let prompt = tokens(81, 10);
        let (id, _) = pool.prepare(&e, &prompt, Control::default()).unwrap();
        let mut sampler = ds4_engine::Sampler::new(Default::default());
        let opts = ds4_engine::GenerateOptions {
            max_tokens: 12,
            stop_tokens: Vec::new(),
        };
        let mut sink = Sink { checkpoint_ok: ok };
        let g = pool
            .generate(&e, id, &mut sampler, &opts, None, &mut sink)
            .unwrap();
        assert_eq!(g.tokens.len(), 12);
        let mut continued: Vec<u32> = kv_files(dir.path())
            .into_iter()
            .filter_map(|p| {
                let r = ds4_engine::inspect_file_with(&p, Some((e.config(), 96)));
                assert!(r.valid(), "{:?}", r.problems);
                r.header
                    .filter(|h| h.reason == SaveReason::Continued)
                    .map(|h| h.tokens)
            })
            .collect();
        continued.sort_unstable();
        // The prefill of 10 tokens passes the frontier 8; decoding (live
        // lengths 11..=22) passes 16.
        let want: Vec<u32> = if ok { vec![8, 16] } else { vec![8] };
        assert_eq!(continued, want, "checkpoint_ok = {ok}");
    }
}

/// SERVING.md §6.4: evict and shutdown checkpoints are keyed by the caller's
/// visible transcript when it describes the session as it is (flag bit 2
/// here), so a prompt that starts with that text finds the whole live state;
/// any later change to the session drops the key.
#[test]
fn shutdown_checkpoints_use_the_visible_key_while_it_holds() {
    use ds4_engine::kvstore::format::FLAG_THINKING_VISIBLE;
    use ds4_engine::VisibleKey;
    let e = engine(Numerics::Exact);
    for keep in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = SessionPool::new(PoolOptions::default(), Some(disk(dir.path())));
        let prompt = tokens(91, 20);
        let (id, _) = pool.prepare(&e, &prompt, Control::default()).unwrap();
        pool.eval(&e, id, &tokens(92, 3)).unwrap();
        let live = pool.session(id).unwrap().tokens().to_vec();
        let visible = "<visible transcript without the hidden part>".to_string();
        pool.set_visible_key(
            id,
            Some(VisibleKey {
                text: visible.clone(),
                flags: FLAG_THINKING_VISIBLE,
                len: live.len(),
            }),
        )
        .unwrap();
        if !keep {
            pool.eval(&e, id, &tokens(93, 1)).unwrap();
        }
        assert_eq!(pool.shutdown(&e).unwrap(), 1);
        let store = KvStore::reader(
            dir.path(),
            KvStoreOptions {
                policy: policy(),
                ..KvStoreOptions::default()
            },
        );
        let shutdown: Vec<_> = store
            .scan()
            .into_iter()
            .filter(|en| en.header.reason == SaveReason::Shutdown)
            .collect();
        assert_eq!(shutdown.len(), 1);
        let loaded = store.load(&shutdown[0]).unwrap();
        let flagged = shutdown[0].header.flags & FLAG_THINKING_VISIBLE != 0;
        if keep {
            assert!(flagged);
            assert_eq!(loaded.text, visible);
            let next_prompt = format!("{visible}<next user turn>");
            let hit = store.lookup(&next_prompt, 96, e.quant_bits()).unwrap();
            assert_eq!(hit.sha, shutdown[0].sha);
            // The payload is the live state, hidden part included.
            let mut s = e.new_session().unwrap();
            e.import_payload(&mut s, &loaded.payload).unwrap();
            assert_eq!(s.tokens(), &live[..]);
        } else {
            assert!(!flagged, "a changed session is keyed by its token text");
            let mut after = live.clone();
            after.extend(tokens(93, 1));
            assert_eq!(loaded.text, text_of(&after));
        }
    }
}
