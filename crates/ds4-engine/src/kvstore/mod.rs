//! The disk KV cache (SERVING.md §6.3-6.7): one `<sha1>.kv` file per
//! checkpoint in a directory, named by the SHA-1 of its cache text.
//!
//! Safety rules:
//! * writes go to `<name>.tmp.<pid>`, are fsynced, renamed into place, and
//!   the directory is fsynced; a crash leaves either the old state or the
//!   whole new file, never a partial `.kv` (stale temp files of dead
//!   processes are removed at open);
//! * readers check the header and every length against the file size
//!   before trusting a byte, then the checksum (see [`format`]);
//! * a `.kv` file that fails any check is moved aside into `quarantine/`
//!   with a warning and never loaded; files with other names are ignored.

pub mod format;
pub mod inspect;
pub mod policy;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use format::{FormatError, Header, SaveReason, ToolMapping};
pub use policy::CachePolicy;

use format::{parse_file, sha1_hex, sha_of_name, FIXED_BYTES, HEADER_BYTES};
use policy::{budget_required, eviction_score, EvictionInput};

/// Largest tool-id map section [`KvStore::tool_mappings`] reads.
const MAX_TOOL_MAP_READ: u64 = 600 << 20;

/// Name of the folder bad files are moved to.
pub const QUARANTINE_DIR: &str = "quarantine";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: FormatError },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Wraps the writer of every checkpoint write (fault injection in tests:
/// a full disk, a slow or dying writer).
pub trait WriteHook: Send + Sync {
    fn wrap<'a>(&self, w: Box<dyn Write + 'a>) -> Box<dyn Write + 'a>;
}

/// Options of a [`KvStore`], with ds4's defaults.
#[derive(Clone)]
pub struct KvStoreOptions {
    /// Space budget in bytes (0: unlimited). ds4: 4096 MiB.
    pub budget_bytes: u64,
    /// Only load checkpoints written with the same routed-expert quant.
    pub reject_different_quant: bool,
    /// Most tool-id map entries accepted per file is 4× this (ds4).
    pub max_tool_ids: u64,
    pub policy: CachePolicy,
    /// Where warnings go (default: stderr).
    pub warn: Arc<dyn Fn(&str) + Send + Sync>,
    pub write_hook: Option<Arc<dyn WriteHook>>,
}

impl Default for KvStoreOptions {
    fn default() -> Self {
        Self {
            budget_bytes: 4096 << 20,
            reject_different_quant: false,
            max_tool_ids: 100_000,
            policy: CachePolicy::default(),
            warn: Arc::new(|m| eprintln!("ds4: kv cache: {m}")),
            write_hook: None,
        }
    }
}

/// One checkpoint file as its header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub sha: String,
    pub path: PathBuf,
    pub header: Header,
    pub text_bytes: u64,
    pub file_size: u64,
}

/// A checkpoint read back whole and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub entry: Entry,
    pub text: String,
    pub payload: Vec<u8>,
    pub tool_map: Vec<ToolMapping>,
}

/// What to store.
pub struct StoreRequest<'a> {
    /// The cache text (rendered prefix, or a visible transcript with a flag).
    pub text: &'a str,
    /// The DS4 session payload.
    pub payload: &'a [u8],
    pub tokens: u32,
    pub ctx: u32,
    pub quant_bits: u8,
    pub reason: SaveReason,
    /// `FLAG_RESPONSES_VISIBLE` / `FLAG_THINKING_VISIBLE` when the key is a
    /// visible transcript (the tool-map bit is set here).
    pub key_flags: u8,
    /// Written only where the DSML block occurs in the text.
    pub tool_map: &'a [ToolMapping],
    /// SHA-1s kept through the eviction pass after the write (e.g. files
    /// that prefix the prompt being served).
    pub protect: &'a [String],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    Written {
        sha: String,
        bytes: u64,
    },
    /// A compatible file with the same text and trailer already exists.
    Kept {
        sha: String,
    },
    /// Not written: the file would not fit the budget.
    TooLarge {
        bytes: u64,
        budget: u64,
    },
}

pub struct KvStore {
    dir: PathBuf,
    opts: KvStoreOptions,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pid_alive(pid: u32) -> Option<bool> {
    let proc_root = Path::new("/proc");
    proc_root
        .join("self")
        .exists()
        .then(|| proc_root.join(pid.to_string()).exists())
}

impl KvStore {
    /// Opens (creating, mode 0700) a cache directory: removes temp files of
    /// dead writers, moves bad `.kv` files aside, runs an eviction pass.
    pub fn open(dir: impl AsRef<Path>, opts: KvStoreOptions) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        }
        let store = Self { dir, opts };
        store.remove_stale_temp_files();
        store.evict(&[]);
        Ok(store)
    }

    /// A handle on a cache directory for lookups: no temp-file cleanup and no
    /// eviction pass, unlike [`KvStore::open`] (for a second thread that
    /// looks up tool-id maps while the owner writes checkpoints; a damaged
    /// file it meets is still quarantined, as by any scan).
    pub fn reader(dir: impl AsRef<Path>, opts: KvStoreOptions) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            opts,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tool-id mappings whose id `wanted` accepts, from every checkpoint
    /// with a map section (SERVING.md §3.8), most recently used first, one
    /// per id. Reads only headers and map sections. A map that does not
    /// parse is skipped here; loading that checkpoint reports it.
    pub fn tool_mappings(&self, wanted: &dyn Fn(&str) -> bool) -> Vec<ToolMapping> {
        let mut entries: Vec<Entry> = self
            .scan()
            .into_iter()
            .filter(|e| e.header.flags & format::FLAG_TOOL_MAP != 0)
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse((e.header.last_used, e.header.created)));
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for e in &entries {
            let Ok(map) = self.read_tool_map(e) else {
                continue;
            };
            for m in map {
                if wanted(&m.id) && seen.insert(m.id.clone()) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// The map section of one checkpoint (after its text and payload).
    fn read_tool_map(&self, e: &Entry) -> Result<Vec<ToolMapping>, StoreError> {
        let path = &e.path;
        let fmt = |source| StoreError::Format {
            path: path.clone(),
            source,
        };
        let start = format::required_bytes(e.text_bytes, e.header.payload_bytes)
            .filter(|&s| s < e.file_size)
            .ok_or_else(|| fmt(FormatError::ToolMap("no map section".into())))?;
        // The replay memory keeps at most 512 MiB of blocks; a larger map
        // section is not worth reading on a request path.
        if e.file_size - start > MAX_TOOL_MAP_READ {
            return Err(fmt(FormatError::ToolMap("map section too large".into())));
        }
        let mut f = File::open(path).map_err(io_err(path))?;
        f.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
        let mut trailer = Vec::new();
        f.take(e.file_size - start)
            .read_to_end(&mut trailer)
            .map_err(io_err(path))?;
        format::parse_tool_map(&trailer, 4 * self.opts.max_tool_ids).map_err(fmt)
    }

    pub fn options(&self) -> &KvStoreOptions {
        &self.opts
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.opts.policy
    }

    fn warn(&self, msg: &str) {
        (self.opts.warn)(msg);
    }

    pub fn path_for(&self, sha: &str) -> PathBuf {
        self.dir.join(format!("{sha}.kv"))
    }

    fn remove_stale_temp_files(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for de in rd.flatten() {
            let name = de.file_name().to_string_lossy().into_owned();
            let Some((base, pid)) = name.rsplit_once(".tmp.") else {
                continue;
            };
            if sha_of_name(base).is_none() {
                continue;
            }
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            let stale = match pid_alive(pid) {
                Some(alive) => !alive || pid == std::process::id(),
                // No /proc: only files older than a day.
                None => de
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 86400),
            };
            if stale && fs::remove_file(de.path()).is_ok() {
                self.warn(&format!("removed unfinished write {name}"));
            }
        }
    }

    /// Moves a bad file into `quarantine/` (deletes it if that fails).
    pub fn quarantine(&self, path: &Path, why: &str) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let qdir = self.dir.join(QUARANTINE_DIR);
        let target = qdir.join(format!("{name}.{}", now_secs()));
        let moved = fs::create_dir_all(&qdir).is_ok() && fs::rename(path, &target).is_ok();
        if moved {
            self.warn(&format!(
                "skipped {name}: {why}; moved to {}",
                target.display()
            ));
        } else {
            let _ = fs::remove_file(path);
            self.warn(&format!("skipped {name}: {why}; deleted"));
        }
    }

    /// Reads and checks one file's header and lengths.
    fn read_entry(&self, path: &Path, sha: &str) -> Result<Entry, StoreError> {
        let mut f = File::open(path).map_err(io_err(path))?;
        let file_size = f.metadata().map_err(io_err(path))?.len();
        let mut head = [0u8; FIXED_BYTES];
        let n = read_up_to(&mut f, &mut head).map_err(io_err(path))?;
        let fmt = |source| StoreError::Format {
            path: path.to_path_buf(),
            source,
        };
        let header = Header::parse(&head[..n]).map_err(fmt)?;
        if n < FIXED_BYTES {
            return Err(fmt(FormatError::Short(n as u64)));
        }
        let text_bytes = u32::from_le_bytes(head[HEADER_BYTES..].try_into().expect("4")) as u64;
        let needed = format::required_bytes(text_bytes, header.payload_bytes).unwrap_or(u64::MAX);
        if file_size < needed {
            return Err(fmt(FormatError::Truncated {
                needed,
                have: file_size,
            }));
        }
        Ok(Entry {
            sha: sha.to_string(),
            path: path.to_path_buf(),
            header,
            text_bytes,
            file_size,
        })
    }

    /// Every valid checkpoint, by header. Bad `.kv` files are quarantined.
    pub fn scan(&self) -> Vec<Entry> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for de in rd.flatten() {
            let name = de.file_name().to_string_lossy().into_owned();
            let Some(sha) = sha_of_name(&name) else {
                continue;
            };
            if !de.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            match self.read_entry(&de.path(), &sha) {
                Ok(e) => out.push(e),
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.quarantine(&de.path(), &e.to_string()),
            }
        }
        out.sort_by(|a, b| a.sha.cmp(&b.sha));
        out
    }

    /// The longest checkpoint whose text is a byte prefix of `prompt_text`
    /// and that a session of `ctx` tokens with `quant_bits` may load
    /// (SERVING.md §6.6). Header-level: [`KvStore::load`] checks the rest.
    pub fn lookup(&self, prompt_text: &str, ctx: u32, quant_bits: u8) -> Option<Entry> {
        let min = self.opts.policy.min_tokens as u64;
        let mut cands: Vec<Entry> = self
            .scan()
            .into_iter()
            .filter(|e| {
                e.text_bytes <= prompt_text.len() as u64
                    && e.header.tokens as u64 >= min
                    && e.header.ctx <= ctx
                    && (!self.opts.reject_different_quant || e.header.quant_bits == quant_bits)
            })
            .collect();
        cands.sort_by_key(|e| std::cmp::Reverse((e.text_bytes, e.header.tokens)));
        let mut last: Option<(u64, String)> = None;
        cands.into_iter().find(|e| {
            let sha = match &last {
                Some((len, sha)) if *len == e.text_bytes => sha.clone(),
                _ => {
                    let sha = sha1_hex(&prompt_text.as_bytes()[..e.text_bytes as usize]);
                    last = Some((e.text_bytes, sha.clone()));
                    sha
                }
            };
            sha == e.sha
        })
    }

    /// Reads a checkpoint whole and checks it: header unchanged since the
    /// scan, lengths, checksum, text hash = name, tool map. Any failure
    /// quarantines the file.
    pub fn load(&self, entry: &Entry) -> Result<Loaded, StoreError> {
        let path = &entry.path;
        let bytes = fs::read(path).map_err(io_err(path))?;
        match self.check_loaded(entry, &bytes) {
            Ok(l) => Ok(l),
            Err(e) => {
                self.quarantine(path, &e.to_string());
                Err(e)
            }
        }
    }

    fn check_loaded(&self, entry: &Entry, bytes: &[u8]) -> Result<Loaded, StoreError> {
        let path = &entry.path;
        let invalid = |why: String| StoreError::Invalid {
            path: path.clone(),
            why,
        };
        let f = parse_file(bytes).map_err(|source| StoreError::Format {
            path: path.clone(),
            source,
        })?;
        if f.header.tokens != entry.header.tokens || f.text.len() as u64 != entry.text_bytes {
            return Err(invalid("changed since it was listed".into()));
        }
        let sha = sha1_hex(f.text.as_bytes());
        if sha != entry.sha {
            return Err(invalid(format!("text hashes to {sha}, not its name")));
        }
        let tool_map = if f.header.flags & format::FLAG_TOOL_MAP != 0 {
            format::parse_tool_map(f.trailer, 4 * self.opts.max_tool_ids).map_err(|source| {
                StoreError::Format {
                    path: path.clone(),
                    source,
                }
            })?
        } else {
            Vec::new()
        };
        Ok(Loaded {
            entry: entry.clone(),
            text: f.text.to_string(),
            payload: f.payload.to_vec(),
            tool_map,
        })
    }

    /// Records a hit: hits + 1, last used = now (header only; the checksum
    /// does not cover these two fields).
    pub fn touch(&self, entry: &Entry) -> Result<(), StoreError> {
        let path = &entry.path;
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut h = [0u8; HEADER_BYTES];
        f.read_exact(&mut h).map_err(io_err(path))?;
        let header = Header::parse(&h).map_err(|source| StoreError::Format {
            path: path.clone(),
            source,
        })?;
        let hits = header.hits.saturating_add(1);
        f.seek(SeekFrom::Start(12)).map_err(io_err(path))?;
        f.write_all(&hits.to_le_bytes()).map_err(io_err(path))?;
        f.seek(SeekFrom::Start(32)).map_err(io_err(path))?;
        f.write_all(&now_secs().to_le_bytes())
            .map_err(io_err(path))?;
        Ok(())
    }

    /// Deletes a checkpoint that was loaded and will be re-saved from the
    /// live session (ds4 "consume").
    pub fn remove(&self, entry: &Entry) -> Result<(), StoreError> {
        fs::remove_file(&entry.path).map_err(io_err(&entry.path))
    }

    /// Writes a checkpoint (crash-safe), then runs an eviction pass that
    /// protects it and `req.protect`.
    pub fn store(&self, req: &StoreRequest<'_>) -> Result<StoreOutcome, StoreError> {
        if req.quant_bits != 2 && req.quant_bits != 4 {
            return Err(StoreError::Invalid {
                path: self.dir.clone(),
                why: format!("quant bits {} (2 or 4 expected)", req.quant_bits),
            });
        }
        if req.tokens == 0 {
            return Err(StoreError::Invalid {
                path: self.dir.clone(),
                why: "a checkpoint needs at least one token".into(),
            });
        }
        // Only mappings whose DSML block occurs in the text are written
        // (the text layer decides block boundaries; a substring is enough here).
        let kept: Vec<ToolMapping> = req
            .tool_map
            .iter()
            .filter(|m| !m.id.is_empty() && m.id.len() <= 256 && !m.dsml.is_empty())
            .filter(|m| req.text.contains(&m.dsml))
            .cloned()
            .collect();
        let trailer = if kept.is_empty() {
            Vec::new()
        } else {
            format::encode_tool_map(&kept)
        };
        let bytes = format::required_bytes(req.text.len() as u64, req.payload.len() as u64)
            .and_then(|b| b.checked_add(trailer.len() as u64))
            .unwrap_or(u64::MAX);
        let budget = self.opts.budget_bytes;
        if budget > 0 && budget_required(bytes).is_none_or(|r| r > budget) {
            self.warn(&format!(
                "skipped storing {} tokens ({}): {bytes} bytes do not fit the budget of {budget}",
                req.tokens,
                req.reason.name()
            ));
            return Ok(StoreOutcome::TooLarge { bytes, budget });
        }
        let sha = sha1_hex(req.text.as_bytes());
        let path = self.path_for(&sha);
        let flags = req.key_flags & !format::FLAG_TOOL_MAP
            | if trailer.is_empty() {
                0
            } else {
                format::FLAG_TOOL_MAP
            };
        if self.existing_matches(&path, req, flags, &trailer) {
            return Ok(StoreOutcome::Kept { sha });
        }
        let now = now_secs();
        let header = Header {
            quant_bits: req.quant_bits,
            reason: req.reason,
            flags,
            tokens: req.tokens,
            hits: 0,
            ctx: req.ctx,
            checksum: 0,
            created: now,
            last_used: now,
            payload_bytes: req.payload.len() as u64,
        };
        self.write_atomic(&path, |w| {
            format::write_file(w, &header, req.text, req.payload, &trailer)
        })?;
        let mut protect = req.protect.to_vec();
        protect.push(sha.clone());
        self.evict(&protect);
        Ok(StoreOutcome::Written { sha, bytes })
    }

    /// A file with this name that can stay: readable, same text, flags and
    /// trailer, compatible quant, its ctx ≤ ours.
    fn existing_matches(
        &self,
        path: &Path,
        req: &StoreRequest<'_>,
        flags: u8,
        trailer: &[u8],
    ) -> bool {
        let Ok(bytes) = fs::read(path) else {
            return false;
        };
        let Ok(f) = parse_file(&bytes) else {
            return false;
        };
        let quant_ok = !self.opts.reject_different_quant || f.header.quant_bits == req.quant_bits;
        quant_ok
            && f.header.ctx <= req.ctx
            && f.header.flags == flags
            && f.text == req.text
            && f.trailer == trailer
            && f.header.tokens == req.tokens
    }

    /// Writes `path` through a temp file: write, flush, fsync, rename, fsync
    /// the directory. On failure the temp file is removed.
    fn write_atomic(
        &self,
        path: &Path,
        body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let tmp = PathBuf::from(format!("{}.tmp.{}", path.display(), std::process::id()));
        let result = (|| -> io::Result<()> {
            let file = File::create(&tmp)?;
            {
                let buffered: Box<dyn Write + '_> =
                    Box::new(BufWriter::with_capacity(1 << 20, &file));
                let mut w = match &self.opts.write_hook {
                    Some(h) => h.wrap(buffered),
                    None => buffered,
                };
                body(&mut w)?;
                w.flush()?;
            }
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, path)?;
            if let Ok(d) = File::open(&self.dir) {
                // Makes the rename durable; not every platform allows it.
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            self.warn(&format!("failed to write {}: {e}", path.display()));
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
        Ok(())
    }

    /// The cache text of a listed file (for the eviction pass).
    fn read_text(&self, e: &Entry) -> Option<Vec<u8>> {
        let mut f = File::open(&e.path).ok()?;
        f.seek(SeekFrom::Start(FIXED_BYTES as u64)).ok()?;
        let mut text = vec![0u8; usize::try_from(e.text_bytes).ok()?];
        f.read_exact(&mut text).ok()?;
        Some(text)
    }

    /// Deletes files while the directory is over budget, lowest
    /// [`policy::eviction_score`] first (protected ones last; ties → older
    /// last use first). Returns the evicted entries.
    pub fn evict(&self, protect: &[String]) -> Vec<Entry> {
        let budget = self.opts.budget_bytes;
        if budget == 0 {
            return Vec::new();
        }
        let entries = self.scan();
        let mut total: u64 = entries.iter().map(|e| e.file_size).sum();
        if total <= budget {
            return Vec::new();
        }
        let texts: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| self.read_text(e).unwrap_or_default())
            .collect();
        let mut alive: Vec<bool> = vec![true; entries.len()];
        let now = now_secs();
        let mut evicted = Vec::new();
        while total > budget {
            let extends = |i: usize, j: usize| {
                texts[j].len() > texts[i].len() && texts[j].starts_with(&texts[i])
            };
            let victim = (0..entries.len())
                .filter(|&i| alive[i])
                .map(|i| {
                    let e = &entries[i];
                    let leaf = !(0..entries.len()).any(|j| alive[j] && j != i && extends(i, j));
                    let input = EvictionInput {
                        tokens: e.header.tokens as u64,
                        file_size: e.file_size,
                        hits: e.header.hits,
                        created: e.header.created,
                        last_used: e.header.last_used,
                        reason: e.header.reason,
                        leaf,
                        protected: protect.contains(&e.sha),
                    };
                    (
                        i,
                        input.protected,
                        eviction_score(&input, now),
                        e.header.last_used,
                    )
                })
                .min_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)).then(a.3.cmp(&b.3)));
            let Some((i, ..)) = victim else {
                break;
            };
            alive[i] = false;
            let e = &entries[i];
            if fs::remove_file(&e.path).is_ok() {
                total = total.saturating_sub(e.file_size);
                evicted.push(e.clone());
            } else {
                break;
            }
        }
        evicted
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
