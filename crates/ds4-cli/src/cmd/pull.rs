//! `ds4 pull q2|q4|q2-imatrix|q4-imatrix|mtp`: downloads a published GGUF
//! from Hugging Face (or a mirror given with `--url`) into `--dir`.
//!
//! The file grows as `FILE.part`; an interrupted transfer is resumed with a
//! `Range:` request (right away, up to `--retries` times, and on the next
//! run). Redirects are followed by hand so that the `X-Linked-Size` and
//! `X-Linked-Etag` headers of Hugging Face's first answer are seen: the size
//! is checked, and an ETag of 64 hex digits (the SHA-256 of an LFS file) is
//! verified. A token (`--token` or `HF_TOKEN`) is sent to the first host
//! only. Finally `./ds4flash.gguf` links to the main model.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use ureq::http::{StatusCode, Uri};
use ureq::Agent;

/// Where the published files are.
pub const DEFAULT_URL: &str = "https://huggingface.co/antirez/deepseek-v4-gguf/resolve/main";

/// The link `ds4` opens by default.
pub const DEFAULT_LINK: &str = "ds4flash.gguf";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    /// 2-bit routed experts with importance-matrix quantization (~81 GiB)
    #[value(name = "q2-imatrix")]
    Q2Imatrix,
    /// 4-bit routed experts with importance-matrix quantization (~153 GiB)
    #[value(name = "q4-imatrix")]
    Q4Imatrix,
    /// 2-bit routed experts (~81 GiB)
    Q2,
    /// 4-bit routed experts (~153 GiB)
    Q4,
    /// The multi-token-prediction head (speculative drafts)
    Mtp,
}

const Q2: &str = "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2";
const Q4: &str =
    "DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2";

impl Variant {
    pub fn file_name(self) -> String {
        match self {
            Variant::Q2 => format!("{Q2}.gguf"),
            Variant::Q2Imatrix => format!("{Q2}-imatrix.gguf"),
            Variant::Q4 => format!("{Q4}.gguf"),
            Variant::Q4Imatrix => format!("{Q4}-imatrix.gguf"),
            Variant::Mtp => "DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf".to_string(),
        }
    }

    fn is_main_model(self) -> bool {
        self != Variant::Mtp
    }
}

#[derive(Args, Clone, Debug)]
pub struct PullArgs {
    /// Which file
    #[arg(value_enum)]
    pub which: Variant,
    /// Directory to download into
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Base URL of the files (a mirror); FILE is appended after a slash
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Hugging Face access token [default: $HF_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Do not point ./ds4flash.gguf at the downloaded model
    #[arg(long)]
    pub no_link: bool,
    /// Resume attempts after an interrupted transfer
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
}

/// What the server said about the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Meta {
    sha256: Option<String>,
    size: Option<u64>,
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// An ETag that is a SHA-256 (64 hex digits, quotes and `W/` removed).
fn sha256_etag(v: &str) -> Option<String> {
    let t = v.trim().trim_start_matches("W/").trim_matches('"');
    (t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

impl Meta {
    fn absorb(&mut self, resp: &ureq::http::Response<ureq::Body>, final_answer: bool) {
        if self.sha256.is_none() {
            let linked = header(resp, "x-linked-etag").and_then(sha256_etag);
            let own = final_answer
                .then(|| header(resp, "etag").and_then(sha256_etag))
                .flatten();
            self.sha256 = linked.or(own);
        }
        if self.size.is_none() {
            self.size = header(resp, "x-linked-size").and_then(|s| s.trim().parse().ok());
        }
    }
}

/// `Location` resolved against the URL it came from.
fn resolve(base: &str, location: &str) -> Result<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_string());
    }
    let uri: Uri = base.parse().with_context(|| format!("bad URL {base}"))?;
    let scheme = uri.scheme_str().unwrap_or("https");
    let auth = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{auth}{location}"));
    }
    let path = uri.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Ok(format!("{scheme}://{auth}{dir}{location}"))
}

fn host_of(url: &str) -> Option<String> {
    url.parse::<Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().to_string()))
}

struct Client {
    agent: Agent,
    token: Option<String>,
}

impl Client {
    fn new(token: Option<String>) -> Self {
        let agent: Agent = Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("ds4/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { agent, token }
    }

    /// A GET from `from` on (following up to 10 redirects), with the
    /// metadata seen on the way.
    fn get(&self, url: &str, from: u64) -> Result<(ureq::http::Response<ureq::Body>, Meta)> {
        let first_host = host_of(url);
        let mut meta = Meta::default();
        let mut current = url.to_string();
        for _ in 0..10 {
            let mut req = self.agent.get(&current);
            if from > 0 {
                req = req.header("Range", &format!("bytes={from}-"));
            }
            if let Some(t) = &self.token {
                if host_of(&current) == first_host {
                    req = req.header("Authorization", &format!("Bearer {t}"));
                }
            }
            let resp = req.call().map_err(|e| anyhow!("{current}: {e}"))?;
            let redirect = resp.status().is_redirection();
            meta.absorb(&resp, !redirect);
            if !redirect {
                return Ok((resp, meta));
            }
            let loc = header(&resp, "location")
                .ok_or_else(|| anyhow!("{current}: redirect without a Location"))?;
            current = resolve(&current, loc)?;
        }
        bail!("{url}: too many redirects")
    }
}

/// The outcome of one attempt.
enum Attempt {
    Done,
    /// Transient: try again (resuming).
    Retry(String),
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL).
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok();
    if range.trim() == "*" {
        return Some((0, total));
    }
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total))
}

struct Download<'a> {
    client: &'a Client,
    url: &'a str,
    part: &'a Path,
    /// Hash of the first `hashed` bytes of the part file.
    hasher: Sha256,
    hashed: u64,
    meta: Meta,
    total: Option<u64>,
}

impl Download<'_> {
    fn part_len(&self) -> u64 {
        std::fs::metadata(self.part).map_or(0, |m| m.len())
    }

    /// Makes the hash cover exactly the part file's bytes.
    fn rehash(&mut self) -> Result<()> {
        let have = self.part_len();
        if self.hashed == have {
            return Ok(());
        }
        self.hasher = Sha256::new();
        self.hashed = 0;
        if have == 0 {
            return Ok(());
        }
        let mut f = File::open(self.part)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            self.hashed += n as u64;
        }
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        File::create(self.part)
            .with_context(|| format!("cannot create {}", self.part.display()))?;
        self.hasher = Sha256::new();
        self.hashed = 0;
        Ok(())
    }

    fn attempt(&mut self, bar: &ProgressBar) -> Result<Attempt> {
        let have = self.part_len();
        let (resp, meta) = match self.client.get(self.url, have) {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(format!("{e:#}"))),
        };
        if self.meta.sha256.is_none() {
            self.meta.sha256 = meta.sha256;
        }
        if self.meta.size.is_none() {
            self.meta.size = meta.size;
        }
        let status = resp.status();
        let mut from = have;
        match status {
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let total = header(&resp, "content-range")
                    .and_then(content_range)
                    .and_then(|(_, t)| t)
                    .or(self.meta.size);
                if total == Some(have) {
                    self.total = total;
                    return Ok(Attempt::Done);
                }
                self.restart()?;
                return Ok(Attempt::Retry(format!(
                    "the server refused to resume at byte {have}; starting over"
                )));
            }
            StatusCode::PARTIAL_CONTENT => {
                let (start, total) = header(&resp, "content-range")
                    .and_then(content_range)
                    .ok_or_else(|| anyhow!("{}: 206 without a usable Content-Range", self.url))?;
                if start != have {
                    self.restart()?;
                    return Ok(Attempt::Retry(format!(
                        "the server resumed at byte {start}, not {have}; starting over"
                    )));
                }
                self.total = total.or(self.meta.size);
            }
            StatusCode::OK => {
                if have > 0 {
                    // The server ignored the range: the body is the whole file.
                    self.restart()?;
                    from = 0;
                }
                self.total = header(&resp, "content-length")
                    .and_then(|s| s.trim().parse().ok())
                    .or(self.meta.size);
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => bail!(
                "{}: access denied (HTTP {}); pass --token or set HF_TOKEN",
                self.url,
                status.as_u16()
            ),
            StatusCode::NOT_FOUND => bail!("{}: not found (HTTP 404)", self.url),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                return Ok(Attempt::Retry(format!("HTTP {}", s.as_u16())));
            }
            s => bail!("{}: unexpected HTTP {}", self.url, s.as_u16()),
        }
        self.rehash()?;
        if let Some(t) = self.total {
            bar.set_length(t);
        }
        bar.set_position(from);
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.part)
            .with_context(|| format!("cannot write {}", self.part.display()))?;
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = from;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    file.flush()?;
                    return Ok(Attempt::Retry(format!(
                        "interrupted after {got} bytes: {e}"
                    )));
                }
            };
            file.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", self.part.display()))?;
            self.hasher.update(&buf[..n]);
            self.hashed += n as u64;
            got += n as u64;
            bar.set_position(got);
        }
        file.flush()?;
        match self.total {
            Some(t) if got < t => Ok(Attempt::Retry(format!(
                "the transfer ended at byte {got} of {t}"
            ))),
            _ => Ok(Attempt::Done),
        }
    }
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `url` to `dest` through `dest.part`, verifying what the server
/// allows; returns whether a checksum was verified.
fn fetch(client: &Client, url: &str, dest: &Path, retries: u32) -> Result<bool> {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut dl = Download {
        client,
        url,
        part: &part,
        hasher: Sha256::new(),
        hashed: 0,
        meta: Meta::default(),
        total: None,
    };
    let resumed = dl.part_len();
    eprintln!(
        "ds4: downloading {url}\n  to {}{}",
        dest.display(),
        if resumed > 0 {
            format!(" (resuming at byte {resumed})")
        } else {
            String::new()
        }
    );
    let bar = progress_bar();
    let mut attempt = 0;
    loop {
        match dl.attempt(&bar) {
            Ok(Attempt::Done) => break,
            Ok(Attempt::Retry(why)) if attempt < retries => {
                attempt += 1;
                bar.suspend(|| eprintln!("ds4: {why}; resuming (attempt {attempt} of {retries})"));
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            }
            Ok(Attempt::Retry(why)) => {
                bar.finish_and_clear();
                bail!(
                    "{why}; gave up after {retries} retries ({} bytes kept in {}; run the same command to resume)",
                    dl.part_len(),
                    part.display()
                );
            }
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        }
    }
    bar.finish_and_clear();
    let have = dl.part_len();
    let expected = dl.meta.size.or(dl.total);
    if let Some(size) = expected {
        if have != size {
            std::fs::remove_file(&part).ok();
            bail!(
                "size mismatch for {}: the server announced {size} bytes, got {have} (the download was removed; run again)",
                dest.display()
            );
        }
    }
    let verified = match dl.meta.sha256.clone() {
        Some(want) => {
            dl.rehash()?;
            let got = hex(&dl.hasher.clone().finalize());
            if got != want {
                std::fs::remove_file(&part).ok();
                bail!(
                    "checksum mismatch for {}: expected sha256 {want}, got {got} (the download was removed; run again)",
                    dest.display()
                );
            }
            true
        }
        None => false,
    };
    std::fs::rename(&part, dest)
        .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))?;
    Ok(verified)
}

/// Points `./ds4flash.gguf` at `target` (replacing an older link, never a file).
fn link(target: &Path) -> Result<()> {
    let link = Path::new(DEFAULT_LINK);
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(link).context("cannot replace ./ds4flash.gguf")?;
        }
        Ok(_) => {
            eprintln!(
                "ds4: ./{DEFAULT_LINK} exists and is not a link; left as it is (use -m {})",
                target.display()
            );
            return Ok(());
        }
        Err(_) => {}
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link ./{DEFAULT_LINK} to {}", target.display()))?;
    #[cfg(not(unix))]
    std::fs::hard_link(target, link)
        .with_context(|| format!("cannot link ./{DEFAULT_LINK} to {}", target.display()))?;
    eprintln!("ds4: ./{DEFAULT_LINK} -> {}", target.display());
    Ok(())
}

pub fn run(args: PullArgs) -> Result<ExitCode> {
    let name = args.which.file_name();
    let url = format!("{}/{name}", args.url.trim_end_matches('/'));
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!(
            "--url must start with http:// or https://, got {}",
            args.url
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dest = args.dir.join(&name);
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("HF_TOKEN").ok())
        .filter(|t| !t.is_empty());
    if dest.exists() {
        eprintln!("ds4: {} is already downloaded", dest.display());
    } else {
        let client = Client::new(token);
        let verified = fetch(&client, &url, &dest, args.retries)?;
        let size = std::fs::metadata(&dest).map_or(0, |m| m.len());
        eprintln!(
            "ds4: {} complete: {size} bytes, {}",
            dest.display(),
            if verified {
                "sha256 verified"
            } else {
                "no checksum offered by the server"
            }
        );
    }
    if args.which.is_main_model() && !args.no_link {
        link(&dest)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert_eq!(
            Variant::Q2Imatrix.file_name(),
            "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf"
        );
        assert_eq!(
            resolve("https://a.b/x/y/z", "/cdn/f").unwrap(),
            "https://a.b/cdn/f"
        );
        assert_eq!(resolve("https://a.b/x/y", "q").unwrap(), "https://a.b/x/q");
        assert_eq!(
            resolve("https://a.b/x", "http://c/d").unwrap(),
            "http://c/d"
        );
        assert_eq!(resolve("https://a.b/x", "//c/d").unwrap(), "https://c/d");
    }

    #[test]
    fn etags_and_ranges() {
        let sha = "a".repeat(64);
        assert_eq!(sha256_etag(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(sha256_etag(&format!("W/\"{sha}\"")), Some(sha));
        assert_eq!(sha256_etag("\"abc\""), None);
        assert_eq!(content_range("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(content_range("bytes */1000"), Some((0, Some(1000))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("junk"), None);
    }
}
