//! `ds4 pull` against a local HTTP server (loopback only, a bounded number
//! of connections, stopped when the test ends) that behaves like Hugging
//! Face: a redirect carrying `X-Linked-Etag` (SHA-256) and `X-Linked-Size`,
//! then a file server with byte ranges. Cases: a plain download, an
//! interrupted transfer resumed in the same run, a partial file resumed by a
//! later run, a server that ignores ranges, a wrong checksum, a wrong size,
//! a token, and a missing file.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{ds4_cmd, stderr, TempDir};
use sha2::{Digest, Sha256};

const Q2: &str = "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf";
const MTP: &str = "DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf";
const LEN: usize = 300_000;

/// The served file: deterministic bytes.
fn content() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone, Default)]
struct Behaviour {
    /// The first file response announces the whole length, sends half, and closes.
    interrupt_first: bool,
    bad_sha: bool,
    wrong_size: bool,
    /// Answers 200 with the whole file whatever the Range.
    no_ranges: bool,
    token: Option<String>,
}

#[derive(Clone, Debug)]
struct Request {
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(b: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let data = content();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut served = 0;
            let mut file_responses = 0;
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline && served < 64 {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        let _ = handle(stream, &b, &data, &log2, &mut file_responses);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(
    stream: TcpStream,
    b: &Behaviour,
    data: &[u8],
    log: &Mutex<Vec<Request>>,
    file_responses: &mut usize,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut auth) = (None, None);
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    log.lock().unwrap().push(Request {
        path: path.clone(),
        range: range.clone(),
        auth: auth.clone(),
    });
    let mut out = stream;
    let respond = |out: &mut TcpStream, status: &str, headers: &[String], body: &[u8]| {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        out.flush()
    };
    if let Some(t) = &b.token {
        if auth.as_deref() != Some(&format!("Bearer {t}")) {
            return respond(
                &mut out,
                "401 Unauthorized",
                &["Content-Length: 0".into()],
                b"",
            );
        }
    }
    if let Some(name) = path.strip_prefix("/hf/") {
        let sha = if b.bad_sha {
            "0".repeat(64)
        } else {
            sha256_hex(data)
        };
        let size = if b.wrong_size { LEN + 1 } else { LEN };
        return respond(
            &mut out,
            "302 Found",
            &[
                format!("Location: /cdn/{name}"),
                format!("X-Linked-Etag: \"{sha}\""),
                format!("X-Linked-Size: {size}"),
                "Content-Length: 0".into(),
            ],
            b"",
        );
    }
    let Some(name) = path.strip_prefix("/cdn/") else {
        return respond(
            &mut out,
            "404 Not Found",
            &["Content-Length: 0".into()],
            b"",
        );
    };
    if name != Q2 && name != MTP {
        return respond(
            &mut out,
            "404 Not Found",
            &["Content-Length: 0".into()],
            b"",
        );
    }
    *file_responses += 1;
    let start = range
        .as_deref()
        .filter(|_| !b.no_ranges)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let etag = "ETag: \"cdn-etag-not-a-sha\"".to_string();
    match start {
        Some(s) if s >= LEN => respond(
            &mut out,
            "416 Range Not Satisfiable",
            &[
                format!("Content-Range: bytes */{LEN}"),
                "Content-Length: 0".into(),
            ],
            b"",
        ),
        Some(s) => respond(
            &mut out,
            "206 Partial Content",
            &[
                format!("Content-Range: bytes {s}-{}/{LEN}", LEN - 1),
                format!("Content-Length: {}", LEN - s),
                etag,
            ],
            &data[s..],
        ),
        None if b.interrupt_first && *file_responses == 1 => {
            // Announce everything, send half, hang up.
            let r = respond(
                &mut out,
                "200 OK",
                &[format!("Content-Length: {LEN}"), etag],
                &data[..LEN / 2],
            );
            let _ = out.shutdown(std::net::Shutdown::Both);
            r
        }
        None => respond(
            &mut out,
            "200 OK",
            &[
                format!("Content-Length: {LEN}"),
                "Accept-Ranges: bytes".into(),
                etag,
            ],
            data,
        ),
    }
}

fn pull(dir: &Path, args: &[&str]) -> std::process::Output {
    ds4_cmd()
        .arg("pull")
        .args(args)
        .current_dir(dir)
        .env_remove("HF_TOKEN")
        .output()
        .expect("run ds4 pull")
}

/// A failed pull: progress lines, then exactly one `error:` line, last.
fn assert_one_line_error(o: &std::process::Output) -> String {
    assert!(!o.status.success());
    let err = stderr(o);
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(err.trim_end().lines().last(), Some(errors[0]), "{err}");
    errors[0].to_string()
}

fn part(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.part"))
}

#[test]
fn pull_follows_the_redirect_verifies_and_links() {
    let s = Server::start(Behaviour::default());
    let tmp = TempDir::new("pull-ok");
    let o = pull(&tmp.0, &["q2", "--url", &s.url("/hf"), "--dir", "models"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("sha256 verified"), "{}", stderr(&o));
    let file = tmp.0.join("models").join(Q2);
    assert_eq!(std::fs::read(&file).unwrap(), content());
    assert!(!part(&tmp.0.join("models"), Q2).exists());
    let link = tmp.0.join("ds4flash.gguf");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("models").join(Q2)
    );
    assert_eq!(std::fs::read(&link).unwrap().len(), LEN);
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].path, format!("/hf/{Q2}"));
    assert_eq!(reqs[1].path, format!("/cdn/{Q2}"));
    assert!(reqs.iter().all(|r| r.range.is_none() && r.auth.is_none()));
    // Again: nothing to download, the link stays.
    let o = pull(&tmp.0, &["q2", "--url", &s.url("/hf"), "--dir", "models"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is already downloaded"),
        "{}",
        stderr(&o)
    );
    assert_eq!(s.requests().len(), 2);
    assert!(std::fs::read_link(&link).is_ok());
}

#[test]
fn pull_resumes_an_interrupted_transfer() {
    let s = Server::start(Behaviour {
        interrupt_first: true,
        ..Behaviour::default()
    });
    let tmp = TempDir::new("pull-interrupt");
    let o = pull(&tmp.0, &["q2", "--url", &s.url("/hf"), "--no-link"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("resuming (attempt 1 of 5)"), "{err}");
    assert!(err.contains("sha256 verified"), "{err}");
    assert_eq!(std::fs::read(tmp.0.join(Q2)).unwrap(), content());
    assert!(!tmp.0.join("ds4flash.gguf").exists(), "--no-link");
    let ranges: Vec<Option<String>> = s
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .map(|r| r.range)
        .collect();
    assert_eq!(
        ranges,
        vec![None, Some(format!("bytes={}-", LEN / 2))],
        "the second request resumes where the first stopped"
    );
}

#[test]
fn pull_resumes_a_partial_file_from_an_earlier_run() {
    let tmp = TempDir::new("pull-partial");
    // An earlier run that gave up keeps its bytes.
    {
        let s = Server::start(Behaviour {
            interrupt_first: true,
            ..Behaviour::default()
        });
        let o = pull(&tmp.0, &["q2", "--url", &s.url("/hf"), "--retries", "0"]);
        let err = assert_one_line_error(&o);
        assert!(err.contains("gave up after 0 retries"), "{err}");
        assert!(err.contains("run the same command to resume"), "{err}");
        assert_eq!(
            std::fs::metadata(part(&tmp.0, Q2)).unwrap().len() as usize,
            LEN / 2
        );
        assert!(!tmp.0.join(Q2).exists() && !tmp.0.join("ds4flash.gguf").exists());
    }
    // A fresh part of another length, from "another" run.
    std::fs::write(part(&tmp.0, Q2), &content()[..100_000]).unwrap();
    let s = Server::start(Behaviour::default());
    let o = pull(&tmp.0, &["q2", "--url", &s.url("/hf")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming at byte 100000"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("sha256 verified"));
    let cdn: Vec<Request> = s
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(std::fs::read(tmp.0.join(Q2)).unwrap(), content());
    assert!(tmp.0.join("ds4flash.gguf").exists());
}

#[test]
fn pull_starts_over_when_the_server_ignores_ranges() {
    let tmp = TempDir::new("pull-noranges");
    std::fs::write(part(&tmp.0, Q2), b"junk that is not the file").unwrap();
    let s = Server::start(Behaviour {
        no_ranges: true,
        ..Behaviour::default()
    });
    let o = pull(&tmp.0, &["q2", "--url", &s.url("/hf")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(tmp.0.join(Q2)).unwrap(), content());
}

#[test]
fn pull_rejects_a_bad_checksum_or_size() {
    for (b, want) in [
        (
            Behaviour {
                bad_sha: true,
                ..Behaviour::default()
            },
            "checksum mismatch",
        ),
        (
            Behaviour {
                wrong_size: true,
                ..Behaviour::default()
            },
            "size mismatch",
        ),
    ] {
        let s = Server::start(b);
        let tmp = TempDir::new("pull-bad");
        let err = assert_one_line_error(&pull(&tmp.0, &["q2", "--url", &s.url("/hf")]));
        assert!(err.contains(want), "{err}");
        assert!(err.contains("the download was removed"), "{err}");
        assert!(!tmp.0.join(Q2).exists());
        assert!(!part(&tmp.0, Q2).exists());
        assert!(!tmp.0.join("ds4flash.gguf").exists());
    }
}

#[test]
fn pull_sends_the_token_and_reports_missing_files() {
    let s = Server::start(Behaviour {
        token: Some("secret".into()),
        ..Behaviour::default()
    });
    let tmp = TempDir::new("pull-token");
    let err = assert_one_line_error(&pull(&tmp.0, &["mtp", "--url", &s.url("/hf")]));
    assert!(
        err.contains("access denied (HTTP 401)") && err.contains("HF_TOKEN"),
        "{err}"
    );
    let o = pull(
        &tmp.0,
        &["mtp", "--url", &s.url("/hf"), "--token", "secret"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(tmp.0.join(MTP)).unwrap(), content());
    assert!(
        !tmp.0.join("ds4flash.gguf").exists(),
        "mtp is not the main model"
    );
    assert!(s
        .requests()
        .iter()
        .any(|r| r.auth.as_deref() == Some("Bearer secret")));
    // HF_TOKEN from the environment.
    let o = ds4_cmd()
        .args(["pull", "q2", "--url", &s.url("/hf")])
        .current_dir(&tmp.0)
        .env("HF_TOKEN", "secret")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tmp.0.join("ds4flash.gguf").exists());
    // A file the server does not have.
    let s = Server::start(Behaviour::default());
    let err = assert_one_line_error(&pull(&tmp.0, &["q4", "--url", &s.url("/hf")]));
    assert!(err.contains("not found (HTTP 404)"), "{err}");
    let err = assert_one_line_error(&pull(&tmp.0, &["q4", "--url", "ftp://x"]));
    assert!(err.contains("--url must start with http"), "{err}");
}
