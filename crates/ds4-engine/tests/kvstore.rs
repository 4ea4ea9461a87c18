//! The disk cache at the file level: faults (damaged, foreign, truncated
//! files, a full disk, a writer killed mid-write), lookup rules, the
//! eviction policy, and the `kv ls` / `kv inspect` reports. Payloads here
//! are opaque bytes; model-backed round trips are in tests/cache.rs.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ds4_engine::kvstore::format::{self, Header, ToolMapping};
use ds4_engine::kvstore::{
    KvStore, KvStoreOptions, SaveReason, StoreOutcome, StoreRequest, WriteHook,
};
use ds4_engine::{inspect_file, list_dir, CachePolicy};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Options with a warning sink the test can read.
fn opts(budget: u64) -> (KvStoreOptions, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let o = KvStoreOptions {
        budget_bytes: budget,
        policy: CachePolicy {
            min_tokens: 4,
            ..CachePolicy::default()
        },
        warn: Arc::new(move |m| sink.lock().unwrap().push(m.to_string())),
        ..KvStoreOptions::default()
    };
    (o, log)
}

fn request<'a>(text: &'a str, payload: &'a [u8], tokens: u32) -> StoreRequest<'a> {
    StoreRequest {
        text,
        payload,
        tokens,
        ctx: 4096,
        quant_bits: 2,
        reason: SaveReason::Cold,
        key_flags: 0,
        tool_map: &[],
        protect: &[],
    }
}

fn kv_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".kv") || n.contains(".tmp."))
        .collect();
    v.sort();
    v
}

fn quarantined(dir: &Path) -> usize {
    fs::read_dir(dir.join("quarantine")).map_or(0, |r| r.count())
}

/// A valid file written by the store, returned as bytes with its name.
fn valid_file(text: &str) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), opts(0).0).unwrap();
    let payload: Vec<u8> = (0..1000u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let map = [ToolMapping {
        id: "call_7".into(),
        dsml: "<call>".into(),
    }];
    let mut req = request(text, &payload, 9);
    req.tool_map = &map;
    let StoreOutcome::Written { sha, .. } = store.store(&req).unwrap() else {
        panic!("not written");
    };
    let name = format!("{sha}.kv");
    (name.clone(), fs::read(dir.path().join(name)).unwrap())
}

#[test]
fn store_lookup_load_and_touch() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = opts(0);
    let store = KvStore::open(dir.path(), o).unwrap();
    let payload = vec![7u8; 333];
    let text = "<s>system prompt<User>hi";
    let out = store.store(&request(text, &payload, 12)).unwrap();
    assert!(
        matches!(out, StoreOutcome::Written { bytes, .. } if bytes == 52 + text.len() as u64 + 333)
    );
    // Same text again: kept, not rewritten.
    assert!(matches!(
        store.store(&request(text, &payload, 12)).unwrap(),
        StoreOutcome::Kept { .. }
    ));
    let prompt = format!("{text}<Assistant>more");
    let e = store.lookup(&prompt, 4096, 2).expect("prefix found");
    assert_eq!(e.header.tokens, 12);
    assert!(
        store.lookup(&prompt, 2048, 2).is_none(),
        "file ctx larger than ours"
    );
    assert!(store
        .lookup("<s>system prompt<User>HI and more", 4096, 2)
        .is_none());
    let l = store.load(&e).unwrap();
    assert_eq!(
        (l.text.as_str(), l.payload.as_slice()),
        (text, &payload[..])
    );
    store.touch(&e).unwrap();
    store.touch(&e).unwrap();
    let e2 = store.lookup(&prompt, 4096, 2).unwrap();
    assert_eq!(e2.header.hits, 2);
    assert!(e2.header.last_used >= e.header.last_used);
    // Touching does not break the checksum.
    assert!(store.load(&e2).is_ok());
    // The longest matching prefix wins.
    store
        .store(&request(&prompt[..prompt.len() - 2], &payload, 14))
        .unwrap();
    assert_eq!(store.lookup(&prompt, 4096, 2).unwrap().header.tokens, 14);
}

#[test]
fn damaged_files_are_moved_aside_and_never_loaded() {
    let text = "<s>a conversation<call>";
    let (name, good) = valid_file(text);
    let n = good.len();
    let text_end = 52 + text.len();
    type Damage = (&'static str, Box<dyn Fn(&mut Vec<u8>)>);
    let cases: Vec<Damage> = vec![
        (
            "truncated by one byte",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 1)),
        ),
        (
            "truncated into the header",
            Box::new(|b: &mut Vec<u8>| b.truncate(30)),
        ),
        ("empty", Box::new(|b: &mut Vec<u8>| b.clear())),
        ("magic", Box::new(|b: &mut Vec<u8>| b[1] ^= 0x20)),
        ("version", Box::new(|b: &mut Vec<u8>| b[3] = 2)),
        ("quant bits 3", Box::new(|b: &mut Vec<u8>| b[4] = 3)),
        (
            "quant bits 4 (checksum)",
            Box::new(|b: &mut Vec<u8>| b[4] = 4),
        ),
        ("zero tokens", Box::new(|b: &mut Vec<u8>| b[8..12].fill(0))),
        ("token count", Box::new(|b: &mut Vec<u8>| b[8] ^= 1)),
        ("ctx", Box::new(|b: &mut Vec<u8>| b[17] ^= 0x10)),
        (
            "huge payload length",
            Box::new(|b: &mut Vec<u8>| b[47] = 0x7f),
        ),
        ("huge text length", Box::new(|b: &mut Vec<u8>| b[51] = 0x7f)),
        ("text byte", Box::new(|b: &mut Vec<u8>| b[55] ^= 0x01)),
        (
            "payload byte",
            Box::new(move |b: &mut Vec<u8>| b[text_end + 100] ^= 0x40),
        ),
        (
            "last payload byte",
            Box::new(move |b: &mut Vec<u8>| b[text_end + 3999] ^= 0x80),
        ),
        (
            "tool map count",
            Box::new(move |b: &mut Vec<u8>| b[n - 20] ^= 0xff),
        ),
        (
            "tool map truncated",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 3)),
        ),
        ("checksum", Box::new(|b: &mut Vec<u8>| b[21] ^= 0x10)),
    ];
    for (what, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = good.clone();
        damage(&mut bytes);
        fs::write(dir.path().join(&name), &bytes).unwrap();
        let (o, log) = opts(0);
        let store = KvStore::open(dir.path(), o).unwrap();
        let prompt = format!("{text} and the rest");
        let loaded = store.lookup(&prompt, 4096, 2).map(|e| store.load(&e));
        assert!(
            !matches!(loaded, Some(Ok(_))),
            "{what}: a damaged file was loaded"
        );
        assert!(
            kv_files(dir.path()).is_empty(),
            "{what}: file still in place"
        );
        assert_eq!(quarantined(dir.path()), 1, "{what}: not quarantined");
        assert!(!log.lock().unwrap().is_empty(), "{what}: no warning");
        let report = inspect_file(
            &dir.path()
                .join("quarantine")
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        );
        assert!(!report.valid(), "{what}: inspect calls it valid");
    }
}

#[test]
fn foreign_files_and_quant_rules() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("README.txt"), "not a cache file").unwrap();
    fs::write(dir.path().join("abcdef.kv"), "short name").unwrap();
    fs::create_dir(dir.path().join(format!("{}.kv", "a".repeat(40)))).unwrap();
    let (o, _) = opts(0);
    let store = KvStore::open(dir.path(), o.clone()).unwrap();
    let payload = vec![1u8; 64];
    let mut req = request("<s>four bits", &payload, 5);
    req.quant_bits = 4;
    store.store(&req).unwrap();
    assert_eq!(store.scan().len(), 1);
    assert!(
        store.lookup("<s>four bits!", 4096, 2).is_some(),
        "cross-quant accepted by default"
    );
    let strict = KvStore::open(
        dir.path(),
        KvStoreOptions {
            reject_different_quant: true,
            ..o
        },
    )
    .unwrap();
    assert!(strict.lookup("<s>four bits!", 4096, 2).is_none());
    assert!(strict.lookup("<s>four bits!", 4096, 4).is_some());
    // Storing the same text at 2 bits with the strict store replaces it.
    req.quant_bits = 2;
    assert!(matches!(
        strict.store(&req).unwrap(),
        StoreOutcome::Written { .. }
    ));
    assert_eq!(strict.scan()[0].header.quant_bits, 2);
    // Foreign files are untouched.
    assert!(dir.path().join("README.txt").exists());
    assert!(dir.path().join("abcdef.kv").exists());
    assert_eq!(quarantined(dir.path()), 0);
    // Bad quant bits in a request are refused.
    req.quant_bits = 3;
    assert!(strict.store(&req).is_err());
}

/// A writer that fails with "no space left" after `limit` bytes.
struct FullDisk(u64);

impl WriteHook for FullDisk {
    fn wrap<'a>(&self, w: Box<dyn Write + 'a>) -> Box<dyn Write + 'a> {
        struct Limited<'a> {
            inner: Box<dyn Write + 'a>,
            left: u64,
        }
        impl Write for Limited<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.left == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "no space left on device",
                    ));
                }
                let n = (buf.len() as u64).min(self.left) as usize;
                self.left -= n as u64;
                self.inner.write(&buf[..n])
            }
            fn flush(&mut self) -> io::Result<()> {
                self.inner.flush()
            }
        }
        Box::new(Limited {
            inner: w,
            left: self.0,
        })
    }
}

#[test]
fn a_full_disk_leaves_no_file_and_keeps_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (o, log) = opts(0);
    let store = KvStore::open(dir.path(), o.clone()).unwrap();
    let payload = vec![3u8; 5000];
    store.store(&request("<s>older", &payload, 6)).unwrap();
    for limit in [0, 10, 52, 100, 4000, 5060] {
        let full = KvStore::open(
            dir.path(),
            KvStoreOptions {
                write_hook: Some(Arc::new(FullDisk(limit))),
                ..o.clone()
            },
        )
        .unwrap();
        let err = full
            .store(&request("<s>newer text", &payload, 8))
            .unwrap_err();
        assert!(err.to_string().contains("no space"), "{err}");
        let files = kv_files(dir.path());
        assert_eq!(files.len(), 1, "limit {limit}: {files:?}");
    }
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.contains("failed to write")));
    let e = store.lookup("<s>older and more", 4096, 2).unwrap();
    assert!(store.load(&e).is_ok());
}

/// A writer that stalls halfway and signals it (the child of the kill test).
struct Stall(PathBuf);

impl WriteHook for Stall {
    fn wrap<'a>(&self, w: Box<dyn Write + 'a>) -> Box<dyn Write + 'a> {
        struct Slow<'a> {
            inner: Box<dyn Write + 'a>,
            written: u64,
            marker: PathBuf,
        }
        impl Write for Slow<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(4096);
                self.inner.write_all(&buf[..n])?;
                self.inner.flush()?;
                self.written += n as u64;
                if self.written > 100_000 {
                    fs::write(&self.marker, b"halfway")?;
                    std::thread::sleep(Duration::from_secs(60));
                }
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.inner.flush()
            }
        }
        Box::new(Slow {
            inner: w,
            written: 0,
            marker: self.0.clone(),
        })
    }
}

const CHILD_ENV: &str = "DS4_KVSTORE_TEST_CHILD_DIR";

/// Not a test on its own: the child process of the kill test (it does
/// nothing unless the parent set the environment variable).
#[test]
fn child_writer_helper() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = KvStore::open(
        &dir,
        KvStoreOptions {
            write_hook: Some(Arc::new(Stall(dir.join("marker")))),
            ..opts(0).0
        },
    )
    .unwrap();
    let payload = vec![9u8; 400_000];
    let _ = store.store(&request("<s>killed mid-write", &payload, 50));
}

#[test]
fn a_writer_killed_mid_write_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = opts(0);
    let store = KvStore::open(dir.path(), o.clone()).unwrap();
    store
        .store(&request("<s>survivor", &[5u8; 100], 7))
        .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_writer_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dir.path().join("marker").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "child never reached the write"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let files = kv_files(dir.path());
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".kv")).count(),
        1,
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.contains(".tmp.")),
        "the partial write was a temp file: {files:?}"
    );
    // Reopening removes the dead writer's temp file and loads cleanly.
    let store = KvStore::open(dir.path(), o).unwrap();
    let files = kv_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let e = store.lookup("<s>survivor!", 4096, 2).unwrap();
    assert!(store.load(&e).is_ok());
    assert_eq!(quarantined(dir.path()), 0);
}

/// Writes a file with chosen header fields (checksum computed).
#[allow(clippy::too_many_arguments)]
fn write_entry(
    dir: &Path,
    text: &str,
    payload: usize,
    tokens: u32,
    reason: SaveReason,
    hits: u32,
    created: u64,
    last_used: u64,
) -> String {
    let sha = format::sha1_hex(text.as_bytes());
    let h = Header {
        quant_bits: 2,
        reason,
        flags: 0,
        tokens,
        hits,
        ctx: 4096,
        checksum: 0,
        created,
        last_used,
        payload_bytes: 0,
    };
    let mut f = fs::File::create(dir.join(format!("{sha}.kv"))).unwrap();
    format::write_file(&mut f, &h, text, &vec![0u8; payload], &[]).unwrap();
    sha
}

fn store_with_budget(dir: &Path, budget: u64) -> KvStore {
    KvStore::open(dir, opts(budget).0).unwrap()
}

#[test]
fn eviction_follows_density_hits_and_age() {
    let t = now();
    // Higher tokens per byte survives (ds4 test 86).
    let dir = tempfile::tempdir().unwrap();
    let dense = write_entry(dir.path(), "x1", 1000, 800, SaveReason::Cold, 0, t, t);
    let sparse = write_entry(dir.path(), "y1", 1000, 100, SaveReason::Cold, 0, t, t);
    let s = store_with_budget(dir.path(), 1200);
    let left: Vec<String> = s.scan().into_iter().map(|e| e.sha).collect();
    assert_eq!(left, vec![dense.clone()]);
    assert!(!left.contains(&sparse));

    // Old hits decay: 10 hits 14 half-lives ago lose to a fresh denser file (test 89).
    let dir = tempfile::tempdir().unwrap();
    let old = t - 14 * 21600;
    let stale = write_entry(dir.path(), "a", 1000, 300, SaveReason::Cold, 10, old, old);
    let fresh = write_entry(dir.path(), "b", 1000, 400, SaveReason::Cold, 0, t, t);
    let s = store_with_budget(dir.path(), 1200);
    assert_eq!(
        s.scan().into_iter().map(|e| e.sha).collect::<Vec<_>>(),
        vec![fresh]
    );
    let _ = stale;

    // Equal scores: the older last use goes first (test 90).
    let dir = tempfile::tempdir().unwrap();
    let older = write_entry(dir.path(), "c", 1000, 300, SaveReason::Cold, 0, 0, 0);
    let newer = write_entry(dir.path(), "d", 1000, 300, SaveReason::Cold, 0, 0, 5);
    let s = store_with_budget(dir.path(), 1200);
    let _ = older;
    let left: Vec<String> = s.scan().into_iter().map(|e| e.sha).collect();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0], format::sha1_hex(b"c"));
    let _ = newer;
}

#[test]
fn eviction_protects_the_new_file_unless_it_alone_is_too_big() {
    let t = now();
    let dir = tempfile::tempdir().unwrap();
    write_entry(
        dir.path(),
        "<s>old dense",
        900,
        5000,
        SaveReason::Cold,
        3,
        t,
        t,
    );
    let s = store_with_budget(dir.path(), 1500);
    let out = s.store(&request("<s>new sparse", &[0u8; 900], 5)).unwrap();
    let StoreOutcome::Written { sha, .. } = out else {
        panic!()
    };
    let left: Vec<String> = s.scan().into_iter().map(|e| e.sha).collect();
    assert_eq!(left, vec![sha], "the just-written file survives");
    // A file that cannot fit the budget is not written at all.
    let out = s.store(&request("<s>too big", &[0u8; 1990], 5)).unwrap();
    assert!(matches!(out, StoreOutcome::TooLarge { .. }));
}

/// ds4 #444: an active conversation writes continued checkpoints at 4k,
/// 8k, 12k… into a full directory. ds4's density score deletes the small
/// prefix files first, including the newest state of the conversation
/// that is about to resume; here the leaves (newest file of each
/// conversation) outrank the frontiers their conversation has moved past.
#[test]
fn eviction_keeps_what_the_next_request_needs() {
    let t = now();
    let dir = tempfile::tempdir().unwrap();
    let conv_a = "<s>A".repeat(50);
    let conv_b = "<s>B".repeat(50);
    // Conversation B: one big old leaf, one superseded prefix.
    let b_prefix = write_entry(
        dir.path(),
        &conv_b[..40],
        1000,
        100,
        SaveReason::Continued,
        0,
        t - 100,
        t - 100,
    );
    let b_leaf = write_entry(
        dir.path(),
        &conv_b,
        3000,
        300,
        SaveReason::Evict,
        0,
        t - 100,
        t - 100,
    );
    // Conversation A, active: a cold anchor, a superseded continued, its leaf.
    let a_anchor = write_entry(
        dir.path(),
        &conv_a[..20],
        1000,
        100,
        SaveReason::Cold,
        0,
        t,
        t,
    );
    let a_cont = write_entry(
        dir.path(),
        &conv_a[..100],
        2000,
        200,
        SaveReason::Continued,
        0,
        t,
        t,
    );
    let a_leaf = write_entry(
        dir.path(),
        &conv_a[..150],
        2000,
        200,
        SaveReason::Continued,
        0,
        t,
        t,
    );
    let total: u64 = fs::read_dir(dir.path())
        .unwrap()
        .map(|d| d.unwrap().metadata().unwrap().len())
        .sum();
    let s = store_with_budget(dir.path(), total - 3000);
    let left: Vec<String> = s.scan().into_iter().map(|e| e.sha).collect();
    assert!(
        left.contains(&a_leaf),
        "the active conversation's leaf survives"
    );
    assert!(
        left.contains(&b_leaf),
        "the other conversation's leaf survives"
    );
    assert!(
        !left.contains(&a_cont) && !left.contains(&b_prefix),
        "superseded frontiers go first: {left:?}"
    );
    assert!(
        left.contains(&a_anchor),
        "a cold anchor outranks superseded continued files"
    );
}

#[test]
fn inspect_and_list_report_the_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = opts(0);
    let store = KvStore::open(dir.path(), o).unwrap();
    let text = format!("<s>{}<User>tail", "long prefix ".repeat(40));
    // A payload whose 13-word header says 42 tokens (the body is opaque here).
    let mut payload: Vec<u8> = [
        0x3456_5344u32,
        1,
        4096,
        2048,
        2176,
        128,
        1026,
        42,
        43,
        512,
        128,
        129_280,
        42,
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect();
    payload.resize(200, 0);
    let StoreOutcome::Written { sha, .. } = store.store(&request(&text, &payload, 42)).unwrap()
    else {
        panic!()
    };
    fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let r = inspect_file(&store.path_for(&sha));
    assert!(r.valid(), "{:?}", r.problems);
    let h = r.header.unwrap();
    assert_eq!(
        (h.tokens, h.quant_bits, h.reason, h.hits),
        (42, 2, SaveReason::Cold, 0)
    );
    assert!(r.checksum_verified);
    assert_eq!(r.text_bytes, Some(text.len() as u64));
    let preview = r.text_preview.clone().unwrap();
    assert!(
        preview.starts_with("<s>long prefix")
            && preview.contains('…')
            && preview.ends_with("<User>tail")
    );
    let p = r.payload.clone().unwrap();
    assert_eq!((p.tokens, p.layers, p.vocab), (42, 43, 129_280));
    let shown = r.to_string();
    assert!(
        shown.contains("tokens:    42") && shown.contains("reason:    cold"),
        "{shown}"
    );
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["header"]["tokens"], 42);
    assert_eq!(json["valid"], true);
    let l = list_dir(dir.path()).unwrap();
    assert_eq!(l.reports.len(), 1);
    assert_eq!(l.ignored, vec!["notes.txt".to_string()]);
    let table = l.to_string();
    assert!(
        table.contains("cold") && table.contains("1 files"),
        "{table}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(&l.to_json()).is_ok());
}
