//! `ds4 kv ls DIR` and `ds4 kv inspect FILE`: what a cache file holds and
//! whether it is valid, as text (Display) or JSON (serde), without a model
//! (payload header fields only) or with one (the whole payload checked).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use ds4_model::payload::{PayloadHeader, SessionPayload, PAYLOAD_MAGIC, PAYLOAD_VERSION};
use ds4_model::Config;
use serde::Serialize;

use super::format::{self, parse_file, sha1_hex, sha_of_name, Header, FIXED_BYTES};

/// Characters of cache text shown at each end of an abridged preview.
pub const PREVIEW_CHARS: usize = 120;

/// The payload header as read (no model needed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PayloadSummary {
    pub ctx: u32,
    pub prefill_chunk: u32,
    pub raw_capacity: u32,
    pub raw_window: u32,
    pub compressed_capacity: u32,
    pub tokens: u32,
    pub layers: u32,
    pub head_dim: u32,
    pub indexer_head_dim: u32,
    pub vocab: u32,
    pub live_raw_rows: u32,
}

/// Everything `ds4 kv inspect` reports about one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub path: PathBuf,
    pub file_bytes: u64,
    /// `None` when the name is not `<40 hex>.kv`.
    pub name_sha: Option<String>,
    pub header: Option<Header>,
    pub text_bytes: Option<u64>,
    /// The cache text, abridged to its first and last [`PREVIEW_CHARS`].
    pub text_preview: Option<String>,
    pub payload: Option<PayloadSummary>,
    pub tool_ids: Vec<String>,
    /// Whether a checksum was present and verified.
    pub checksum_verified: bool,
    /// Whether the payload was checked against a model config.
    pub payload_checked: bool,
    /// Every problem found; empty = valid.
    pub problems: Vec<String>,
}

impl Report {
    pub fn valid(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("valid".into(), self.valid().into());
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// `text` shortened to its ends, on char boundaries, control chars escaped.
pub fn abridge(text: &str, keep: usize) -> String {
    let n = text.chars().count();
    let esc = |s: &str| s.escape_debug().to_string();
    if n <= 2 * keep + 3 {
        return esc(text);
    }
    let head: String = text.chars().take(keep).collect();
    let tail: String = text.chars().skip(n - keep).collect();
    format!("{} … [{} chars] … {}", esc(&head), n - 2 * keep, esc(&tail))
}

fn unix_time(t: u64) -> String {
    if t == 0 {
        return "-".into();
    }
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let (days, secs) = ((t / 86400) as i64, t % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Inspects one file; `cfg` (with the ctx to check against) also checks
/// the payload body.
pub fn inspect_file_with(path: &Path, model: Option<(&Config, usize)>) -> Report {
    let mut r = Report {
        path: path.to_path_buf(),
        file_bytes: 0,
        name_sha: path
            .file_name()
            .and_then(|n| sha_of_name(&n.to_string_lossy())),
        header: None,
        text_bytes: None,
        text_preview: None,
        payload: None,
        tool_ids: Vec::new(),
        checksum_verified: false,
        payload_checked: false,
        problems: Vec::new(),
    };
    if r.name_sha.is_none() {
        r.problems
            .push("name is not <40 hex digits>.kv: the cache ignores this file".into());
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            r.problems.push(format!("cannot read: {e}"));
            return r;
        }
    };
    r.file_bytes = bytes.len() as u64;
    match Header::parse(&bytes) {
        Ok(h) => r.header = Some(h),
        Err(e) => {
            r.problems.push(e.to_string());
            return r;
        }
    }
    if bytes.len() >= FIXED_BYTES {
        let tb = u32::from_le_bytes(bytes[48..52].try_into().expect("4")) as u64;
        r.text_bytes = Some(tb);
        let end = (FIXED_BYTES as u64 + tb).min(bytes.len() as u64) as usize;
        r.text_preview = Some(abridge(
            &String::from_utf8_lossy(&bytes[FIXED_BYTES..end]),
            PREVIEW_CHARS,
        ));
        let payload_at = FIXED_BYTES as u64 + tb;
        if let Some(p) = bytes.get(payload_at as usize..) {
            if let Ok(h) = PayloadHeader::parse(p) {
                r.payload = Some(PayloadSummary {
                    ctx: h.ctx,
                    prefill_chunk: h.prefill_chunk,
                    raw_capacity: h.raw_capacity,
                    raw_window: h.raw_window,
                    compressed_capacity: h.compressed_capacity,
                    tokens: h.n_tokens,
                    layers: h.n_layer,
                    head_dim: h.head_dim,
                    indexer_head_dim: h.indexer_head_dim,
                    vocab: h.vocab,
                    live_raw_rows: h.live_raw,
                });
                if h.magic != PAYLOAD_MAGIC || h.version != PAYLOAD_VERSION {
                    r.problems.push("payload: bad magic or version".into());
                }
            }
        }
    }
    let f = match parse_file(&bytes) {
        Ok(f) => f,
        Err(e) => {
            r.problems.push(e.to_string());
            return r;
        }
    };
    r.checksum_verified = f.checksum_verified;
    if let Some(sha) = &r.name_sha {
        let actual = sha1_hex(f.text.as_bytes());
        if &actual != sha {
            r.problems
                .push(format!("text hashes to {actual}, not the file name"));
        }
    }
    match &r.payload {
        Some(p) if p.tokens != f.header.tokens => r.problems.push(format!(
            "payload holds {} tokens, header says {}",
            p.tokens, f.header.tokens
        )),
        None => r.problems.push("payload header unreadable".into()),
        _ => {}
    }
    if f.header.flags & format::FLAG_TOOL_MAP != 0 {
        match format::parse_tool_map(f.trailer, u32::MAX as u64) {
            Ok(m) => r.tool_ids = m.into_iter().map(|m| m.id).collect(),
            Err(e) => r.problems.push(e.to_string()),
        }
    }
    if let Some((cfg, ctx)) = model {
        r.payload_checked = true;
        match SessionPayload::decode(f.payload, cfg, ctx) {
            Ok(p) if p.tokens.len() as u64 != f.header.tokens as u64 => r
                .problems
                .push("payload token count differs from the header".into()),
            Ok(_) => {}
            Err(e) => r.problems.push(format!("payload: {e}")),
        }
    }
    r
}

pub fn inspect_file(path: &Path) -> Report {
    inspect_file_with(path, None)
}

/// `ds4 kv ls`: a report for every `.kv` file of a directory, newest use
/// first; other files are listed as ignored.
pub fn list_dir(dir: &Path) -> std::io::Result<Listing> {
    let mut reports = Vec::new();
    let mut ignored = Vec::new();
    for de in fs::read_dir(dir)?.flatten() {
        let name = de.file_name().to_string_lossy().into_owned();
        if !de.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if sha_of_name(&name).is_some() {
            reports.push(inspect_file(&de.path()));
        } else {
            ignored.push(name);
        }
    }
    reports.sort_by_key(|r| std::cmp::Reverse(r.header.map_or(0, |h| h.last_used)));
    ignored.sort();
    Ok(Listing {
        dir: dir.to_path_buf(),
        reports,
        ignored,
    })
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listing {
    pub dir: PathBuf,
    pub reports: Vec<Report>,
    /// Files whose names are not cache names.
    pub ignored: Vec<String>,
}

impl Listing {
    pub fn to_json(&self) -> String {
        let reports: Vec<serde_json::Value> = self
            .reports
            .iter()
            .map(|r| serde_json::from_str(&r.to_json()).unwrap_or_default())
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "dir": self.dir,
            "files": reports,
            "ignored": self.ignored,
        }))
        .unwrap_or_default()
    }
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file:      {}", self.path.display())?;
        writeln!(f, "valid:     {}", if self.valid() { "yes" } else { "NO" })?;
        for p in &self.problems {
            writeln!(f, "problem:   {p}")?;
        }
        writeln!(
            f,
            "size:      {} ({} bytes)",
            mib(self.file_bytes),
            self.file_bytes
        )?;
        if let Some(h) = &self.header {
            writeln!(f, "tokens:    {}", h.tokens)?;
            writeln!(f, "reason:    {}", h.reason.name())?;
            writeln!(f, "quant:     {}-bit routed experts", h.quant_bits)?;
            writeln!(f, "ctx:       {}", h.ctx)?;
            writeln!(f, "hits:      {}", h.hits)?;
            writeln!(f, "created:   {}", unix_time(h.created))?;
            writeln!(f, "last used: {}", unix_time(h.last_used))?;
            let mut keys = Vec::new();
            if h.flags & format::FLAG_RESPONSES_VISIBLE != 0 {
                keys.push("responses-visible");
            }
            if h.flags & format::FLAG_THINKING_VISIBLE != 0 {
                keys.push("thinking-visible");
            }
            writeln!(
                f,
                "key:       {}",
                if keys.is_empty() {
                    "token-text".to_string()
                } else {
                    keys.join(",")
                }
            )?;
            writeln!(
                f,
                "payload:   {} ({} bytes)",
                mib(h.payload_bytes),
                h.payload_bytes
            )?;
            writeln!(
                f,
                "checksum:  {}",
                if self.checksum_verified {
                    "verified"
                } else if h.checksum == 0 {
                    "absent (ds4-written)"
                } else {
                    "bad"
                }
            )?;
        }
        if let Some(p) = &self.payload {
            writeln!(
                f,
                "session:   ctx {} chunk {} layers {} head {} indexer {} vocab {} raw rows {}/{} (ring {})",
                p.ctx, p.prefill_chunk, p.layers, p.head_dim, p.indexer_head_dim, p.vocab,
                p.live_raw_rows, p.raw_window, p.raw_capacity
            )?;
        }
        if !self.tool_ids.is_empty() {
            writeln!(f, "tool ids:  {}", self.tool_ids.join(", "))?;
        }
        if let (Some(tb), Some(t)) = (self.text_bytes, &self.text_preview) {
            writeln!(f, "text:      {tb} bytes: \"{t}\"")?;
        }
        Ok(())
    }
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<12} {:>8} {:>11} {:<9} {:>5} {:>4} {:<23} {:<5} text",
            "sha", "tokens", "size", "reason", "hits", "bits", "last used", "valid"
        )?;
        let mut total = 0;
        for r in &self.reports {
            total += r.file_bytes;
            let sha = r.name_sha.as_deref().unwrap_or("?");
            let (tokens, reason, hits, bits, used) = match &r.header {
                Some(h) => (
                    h.tokens.to_string(),
                    h.reason.name(),
                    h.hits.to_string(),
                    h.quant_bits.to_string(),
                    unix_time(h.last_used),
                ),
                None => ("-".into(), "-", "-".into(), "-".into(), "-".into()),
            };
            let text = r
                .text_preview
                .as_deref()
                .map(|t| abridge(t, 24))
                .unwrap_or_default();
            writeln!(
                f,
                "{:<12} {tokens:>8} {:>11} {reason:<9} {hits:>5} {bits:>4} {used:<23} {:<5} {text}",
                &sha[..sha.len().min(12)],
                mib(r.file_bytes),
                if r.valid() { "yes" } else { "NO" }
            )?;
        }
        writeln!(
            f,
            "{} files, {} total{}",
            self.reports.len(),
            mib(total),
            if self.ignored.is_empty() {
                String::new()
            } else {
                format!("; ignored: {}", self.ignored.join(", "))
            }
        )
    }
}
