//! The interactive chat on the tiny synthetic model.
//!
//! * Through a pipe (runs everywhere): turns, `/nothink`, KV reuse from the
//!   stats lines, unknown commands, `/ctx`, history.
//! * Through tmux (a real terminal): a turn interrupted with Ctrl+C,
//!   `/nothink`, a second turn that reuses the live KV state (from its stats
//!   line), `/quit`. Skipped with a message where tmux is missing, except in
//!   CI (`CI` set), where it fails.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ds4_cmd, stderr, stdout, tiny, TempDir};

/// (prompt, reused, evaluated, generated, the line) of every stats line.
fn stats(text: &str) -> Vec<(usize, usize, usize, usize, String)> {
    text.lines()
        .filter_map(|l| {
            let at = l.find("ds4: prefill: ")?;
            let l = &l[at..];
            let counts = &l[l.find('(')?..];
            let n: Vec<usize> = counts
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .map(|w| w.parse().unwrap())
                .collect();
            (n.len() == 4).then(|| (n[0], n[1], n[2], n[3], l.to_string()))
        })
        .collect()
}

#[test]
fn piped_chat_reuses_the_kv_between_turns() {
    let home = TempDir::new("repl-pipe");
    let mut child = ds4_cmd()
        .args(["-m", tiny(), "-t", "2", "-n", "6"])
        .env("HOME", &home.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"hello\n/nothink\nsecond turn\n/bogus\n/tokens 3\n/ctx 2000\nthird\n/help\n/quit\n",
        )
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(out.starts_with("ds4 chat: type a message"), "{out}");
    assert_eq!(
        out.matches("/think-max ").count(),
        2,
        "help at start and on /help"
    );
    assert!(out.contains("Thinking mode: none."), "{out}");
    assert!(out.contains("At most 3 tokens per answer."), "{out}");
    assert!(err.contains("ds4: unknown command: /bogus"), "{err}");
    assert!(err.contains("ctx=2000"), "{err}");
    let s = stats(&err);
    assert_eq!(s.len(), 3, "{err}");
    // Turn 1: everything evaluated.
    assert_eq!((s[0].1, s[0].2, s[0].3), (0, s[0].0, 6), "{}", s[0].4);
    // Turn 2: the whole first turn (prompt + answer) is reused.
    assert_eq!(s[1].1, s[0].0 + s[0].3, "{}", s[1].4);
    assert_eq!(s[1].1 + s[1].2, s[1].0, "{}", s[1].4);
    assert!(s[1].2 < s[1].0 / 2, "{}", s[1].4);
    // Turn 3 after /ctx: a new engine, the transcript evaluated again.
    assert_eq!((s[2].1, s[2].2, s[2].3), (0, s[2].0, 3), "{}", s[2].4);
    let history = std::fs::read_to_string(home.path(".ds4_history")).unwrap();
    assert!(
        history.contains("second turn") && history.contains("/quit"),
        "{history}"
    );
}

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn run(&self, args: &[&str]) {
        let o = self.cmd().args(args).output().expect("run tmux");
        assert!(o.status.success(), "tmux {args:?}: {}", stderr(&o));
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "chat"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn screen(&self) -> String {
        self.capture(false)
    }

    /// The pane's text, with colour escapes when `escapes`.
    fn capture(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-J", "-S", "-", "-t", "chat"];
        if escapes {
            args.push("-e");
        }
        let o = self.cmd().args(&args).output().expect("capture-pane");
        stdout(&o)
    }

    /// Types a line at the `ds4> ` prompt and presses Enter, once the line
    /// shows on the screen (keys typed while the editor starts can be lost:
    /// then the line is cleared and typed again).
    fn type_line(&self, text: &str) {
        self.wait("the prompt", 120, |s| s.trim_end().ends_with("ds4>"));
        let want = format!("ds4> {text}");
        for _ in 0..10 {
            self.keys(&["-l", text]);
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if self.screen().trim_end().ends_with(&want) {
                    self.keys(&["Enter"]);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.keys(&["C-u"]);
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("could not type {text:?}:\n{}", self.screen());
    }

    /// Waits until `ok(screen)`, or fails with the screen.
    fn wait(&self, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn tmux_chat_ctrl_c_nothink_and_kv_reuse() {
    if !tmux_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is required in CI (apt-get install -y tmux)"
        );
        eprintln!("SKIPPED tmux_chat_ctrl_c_nothink_and_kv_reuse: tmux is not installed");
        return;
    }
    let home = TempDir::new("repl-tmux");
    let tmux = Tmux {
        socket: format!("ds4-test-{}", std::process::id()),
    };
    let cmd = format!(
        "env HOME='{}' TERM=xterm '{}' -m '{}' -t 2 --ctx 8192 --seed 1; echo EXITED $?; sleep 60",
        home.0.display(),
        env!("CARGO_BIN_EXE_ds4"),
        tiny()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "chat",
        "-x",
        "250",
        "-y",
        "50",
        &cmd,
    ]);

    // Turn 1: thinking (the default), interrupted once text streams.
    tmux.type_line("tell me a long story");
    tmux.wait("generated text", 60, |s| {
        s.split("ds4> tell me a long story")
            .nth(1)
            .is_some_and(|after| after.split_whitespace().collect::<String>().chars().count() >= 8)
    });
    tmux.keys(&["C-c"]);
    let s = tmux.wait("the interrupted turn's stats and a new prompt", 60, |s| {
        stats(s).len() == 1 && s.trim_end().ends_with("ds4>")
    });
    let first = &stats(&s)[0];
    assert!(first.4.contains(", interrupted)"), "{}", first.4);
    assert!(first.3 > 0, "{}", first.4);
    assert_eq!(first.1, 0, "{}", first.4);
    // Thinking mode on a terminal: the reasoning is grey.
    assert!(
        tmux.capture(true).contains("\u{1b}[90m"),
        "no grey reasoning"
    );

    // Thinking off, a short answer.
    tmux.type_line("/nothink");
    tmux.wait("the mode change", 10, |s| {
        s.contains("Thinking mode: none.")
    });
    tmux.type_line("/tokens 12");
    tmux.wait("the token limit", 10, |s| {
        s.contains("At most 12 tokens per answer.")
    });

    // Turn 2 reuses the live KV state: the partial answer stayed.
    tmux.type_line("and then?");
    let s = tmux.wait("the second turn's stats", 60, |s| stats(s).len() == 2);
    let second = &stats(&s)[1];
    assert_eq!(second.3, 12, "{}", second.4);
    assert!(second.4.contains(", token limit)"), "{}", second.4);
    assert_eq!(
        second.1,
        first.0 + first.3,
        "reused = turn 1 prompt + answer: {}",
        second.4
    );
    assert_eq!(second.1 + second.2, second.0, "{}", second.4);

    tmux.type_line("/quit");
    let s = tmux.wait("the exit", 30, |s| s.contains("EXITED "));
    assert!(s.contains("EXITED 0"), "{s}");
    assert!(!s.contains("panicked"), "{s}");
    let history = std::fs::read_to_string(home.path(".ds4_history")).unwrap();
    assert!(history.contains("and then?"), "{history}");
}
