//! Live classification of generated text for the generation loop:
//!
//! * [`DsmlTracker`] — where the text stands relative to DSML syntax
//!   (SERVING.md §3.4–3.5): thinking is followed across `<think>`/`</think>`,
//!   the first tool-calls block is tracked after thinking closes, and each
//!   position is classified for forced greedy sampling; the block's close
//!   tag ends generation.
//! * [`StopList`] — stop sequences: earliest match and how many bytes are
//!   safe to stream (§5.7, §5.9).

use ds4_text::dsml::{Syntax, SYNTAXES};
use ds4_text::tokenizer::{THINK_END, THINK_START};

/// Sampling class of the next token (§3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Greedy {
    /// No open block (or the block finished): request sampling.
    Outside,
    /// Inside tags, between elements, or a partial close tag: temperature 0.
    Structural,
    /// Inside a `string="true"` value: request sampling.
    StringBody,
    /// Inside a `string="false"` value, outside JSON strings: temperature 0.
    JsonStructural,
    /// Inside a JSON string literal of a non-string value: request sampling.
    JsonString,
}

impl Greedy {
    pub fn forces_greedy(self) -> bool {
        matches!(self, Greedy::Structural | Greedy::JsonStructural)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Thinking,
    Outside,
    /// Inside the block, between elements (or inside a tag).
    Between,
    StringValue,
    JsonValue {
        in_str: bool,
        esc: bool,
    },
    /// The first block closed.
    Done,
}

/// Incremental DSML state of a generation; see the module docs.
#[derive(Clone, Debug)]
pub struct DsmlTracker {
    text: String,
    pos: usize,
    phase: Phase,
    syntax: Option<Syntax>,
    /// A trailing partial close tag (≥ 2 bytes) inside a value.
    partial_close: bool,
    /// Inside an unfinished tag between elements.
    in_tag: bool,
}

/// Start of a trailing proper prefix of `tag` in `s` (byte index), if any.
fn partial_suffix(s: &str, tag: &str) -> Option<usize> {
    let max = tag.len().saturating_sub(1).min(s.len());
    (1..=max)
        .rev()
        .map(|n| s.len() - n)
        .find(|&i| s.is_char_boundary(i) && tag.starts_with(&s[i..]))
}

impl DsmlTracker {
    /// `in_thinking`: the prompt ended inside `<think>` (thinking mode).
    pub fn new(in_thinking: bool) -> Self {
        Self {
            text: String::new(),
            pos: 0,
            phase: if in_thinking {
                Phase::Thinking
            } else {
                Phase::Outside
            },
            syntax: None,
            partial_close: false,
            in_tag: false,
        }
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        while self.step() {}
    }

    /// The first tool-calls block has closed: generation should stop.
    pub fn closed(&self) -> bool {
        self.phase == Phase::Done
    }

    /// A tool-calls block was opened (closed or not).
    pub fn opened(&self) -> bool {
        self.syntax.is_some()
    }

    /// Still inside thinking.
    pub fn thinking(&self) -> bool {
        self.phase == Phase::Thinking
    }

    /// Inside the block (not finished).
    pub fn in_block(&self) -> bool {
        self.syntax.is_some() && self.phase != Phase::Done
    }

    pub fn state(&self) -> Greedy {
        match self.phase {
            Phase::Thinking | Phase::Outside | Phase::Done => Greedy::Outside,
            Phase::Between => Greedy::Structural,
            _ if self.partial_close => Greedy::Structural,
            Phase::StringValue => Greedy::StringBody,
            Phase::JsonValue { in_str: true, .. } => Greedy::JsonString,
            Phase::JsonValue { .. } => Greedy::JsonStructural,
        }
    }

    /// One unit of progress; `false` when more text is needed.
    fn step(&mut self) -> bool {
        let rest = &self.text[self.pos..];
        match self.phase {
            Phase::Done => false,
            Phase::Thinking => {
                // Re-entering thinking is possible (`<think>` again); only the
                // close matters here.
                if let Some(i) = rest.find(THINK_END) {
                    self.pos += i + THINK_END.len();
                    self.phase = Phase::Outside;
                    return true;
                }
                self.pos += partial_suffix(rest, THINK_END).unwrap_or(rest.len());
                false
            }
            Phase::Outside => {
                let hit = SYNTAXES
                    .iter()
                    .filter_map(|sx| rest.find(sx.calls_open).map(|i| (i, *sx)))
                    .min_by_key(|&(i, _)| i);
                let think = rest.find(THINK_START);
                match (hit, think) {
                    (Some((i, sx)), t) if t.is_none_or(|t| i < t) => {
                        self.pos += i + sx.calls_open.len();
                        self.syntax = Some(sx);
                        self.phase = Phase::Between;
                        true
                    }
                    (_, Some(t)) => {
                        self.pos += t + THINK_START.len();
                        self.phase = Phase::Thinking;
                        true
                    }
                    _ => {
                        let keep = SYNTAXES
                            .iter()
                            .map(|sx| sx.calls_open)
                            .chain([THINK_START])
                            .filter_map(|tag| partial_suffix(rest, tag))
                            .min()
                            .unwrap_or(rest.len());
                        self.pos += keep;
                        false
                    }
                }
            }
            Phase::Between => {
                let sx = self.syntax.expect("a block is open");
                let trimmed = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
                self.pos += rest.len() - trimmed.len();
                let rest = trimmed;
                if rest.is_empty() {
                    self.in_tag = false;
                    return false;
                }
                if !rest.starts_with('<') {
                    // Forgiving: stray bytes between elements are skipped.
                    let n = rest.chars().next().map_or(1, char::len_utf8);
                    self.pos += n;
                    return true;
                }
                let Some(gt) = rest.find('>') else {
                    self.in_tag = true;
                    return false;
                };
                self.in_tag = false;
                let tag = &rest[..=gt];
                self.pos += gt + 1;
                if tag.starts_with(sx.calls_close) {
                    self.phase = Phase::Done;
                } else if tag.starts_with(sx.param_open) {
                    self.phase = if tag.contains("string=\"false\"") {
                        Phase::JsonValue {
                            in_str: false,
                            esc: false,
                        }
                    } else {
                        Phase::StringValue
                    };
                }
                true
            }
            Phase::StringValue => {
                let sx = self.syntax.expect("a block is open");
                if let Some(i) = rest.find(sx.param_close) {
                    self.pos += i + sx.param_close.len();
                    self.phase = Phase::Between;
                    self.partial_close = false;
                    return true;
                }
                match partial_suffix(rest, sx.param_close) {
                    Some(i) => {
                        self.partial_close = rest.len() - i >= 2;
                        self.pos += i;
                    }
                    None => {
                        self.partial_close = false;
                        self.pos += rest.len();
                    }
                }
                false
            }
            Phase::JsonValue {
                mut in_str,
                mut esc,
            } => {
                let sx = self.syntax.expect("a block is open");
                let bytes = rest.as_bytes();
                let mut i = 0;
                self.partial_close = false;
                while i < bytes.len() {
                    if !in_str && bytes[i] == b'<' {
                        let tail = &rest[i..];
                        if tail.starts_with(sx.param_close) {
                            self.pos += i + sx.param_close.len();
                            self.phase = Phase::Between;
                            return true;
                        }
                        if sx.param_close.starts_with(tail) {
                            // Wait for more bytes at the '<'.
                            self.partial_close = tail.len() >= 2;
                            break;
                        }
                    }
                    let b = bytes[i];
                    if in_str {
                        if esc {
                            esc = false;
                        } else if b == b'\\' {
                            esc = true;
                        } else if b == b'"' {
                            in_str = false;
                        }
                    } else if b == b'"' {
                        in_str = true;
                    }
                    i += 1;
                }
                self.pos += i;
                self.phase = Phase::JsonValue { in_str, esc };
                false
            }
        }
    }
}

/// Stop sequences of a request.
#[derive(Clone, Debug, Default)]
pub struct StopList {
    stops: Vec<String>,
    max_len: usize,
}

impl StopList {
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self { stops, max_len }
    }

    pub fn len(&self) -> usize {
        self.stops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Byte offset of the earliest match of any stop sequence.
    pub fn earliest(&self, text: &str) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
    }

    /// How many leading bytes of `text` can be streamed: everything but the
    /// last `max_len - 1` bytes (which could begin a stop sequence), cut
    /// back to a character boundary.
    pub fn safe_len(&self, text: &str) -> usize {
        let mut n = text.len().saturating_sub(self.max_len.saturating_sub(1));
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsml_decode_state_separates_structure_and_payload() {
        // SERVING.md §9 item 58.
        let mut t = DsmlTracker::new(false);
        t.push("I will run it.\n\n");
        assert_eq!(t.state(), Greedy::Outside);
        t.push("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">");
        assert_eq!(t.state(), Greedy::Structural);
        t.push("\n<｜DSML｜parameter name=\"command\" string=\"true\">echo hi");
        assert_eq!(t.state(), Greedy::StringBody);
        t.push(" </");
        assert_eq!(t.state(), Greedy::Structural);
        t.push("｜DSML｜parameter>\n<｜DSML｜parameter name=\"edits\" string=\"false\">[{");
        assert_eq!(t.state(), Greedy::JsonStructural);
        t.push("\"cmd\": \"for i in");
        assert_eq!(t.state(), Greedy::JsonString);
        t.push(" 1 2; do </x>\"}]");
        assert_eq!(t.state(), Greedy::JsonStructural);
        t.push("</｜DSML｜parameter>\n</｜DSML｜invoke>\n");
        assert_eq!(t.state(), Greedy::Structural);
        assert!(!t.closed());
        t.push("</｜DSML｜tool_calls>");
        assert!(t.closed());
        assert_eq!(t.state(), Greedy::Outside);
    }

    #[test]
    fn thinking_hides_dsml_until_closed() {
        // SERVING.md §9 items 42, 74 (tracker side).
        let mut t = DsmlTracker::new(true);
        t.push("need <｜DSML｜tool_calls> here </thi");
        assert!(t.thinking() && !t.opened());
        t.push("nk>answer <think>again</think>");
        assert!(!t.thinking() && !t.opened());
        t.push("\n\n<DSML｜tool_calls><DSML｜invoke name=\"x\"></DSML｜invoke></DSML｜tool_calls>");
        assert!(t.opened() && t.closed());
    }

    #[test]
    fn tool_marker_state_ignores_orphan_end() {
        // SERVING.md §9 item 76.
        let mut t = DsmlTracker::new(false);
        t.push("text </｜DSML｜tool_calls> more");
        assert!(!t.opened() && !t.closed());
        t.push("<tool_calls>\n<invoke name=\"a\">\n</invoke>\n</tool_calls>");
        assert!(t.opened() && t.closed());
    }

    #[test]
    fn split_tags_wait() {
        let mut t = DsmlTracker::new(false);
        for piece in [
            "<｜DS",
            "ML｜tool_",
            "calls>",
            "<｜DSML｜inv",
            "oke name=\"a\">",
        ] {
            t.push(piece);
        }
        assert!(t.opened());
        assert_eq!(t.state(), Greedy::Structural);
    }

    #[test]
    fn stop_list_parses_all_sequences() {
        // SERVING.md §9 item 69.
        let s = StopList::new(vec!["END".into(), "STOP".into()]);
        assert_eq!((s.len(), s.max_len()), (2, 4));
        assert_eq!(s.earliest("hello STOP END"), Some(6));
        assert_eq!(s.safe_len("abcdef"), 3);
    }

    #[test]
    fn stop_list_streaming_holds_and_trims_stop_text() {
        // SERVING.md §9 item 70.
        let s = StopList::new(vec!["</END>".into(), "STOP".into()]);
        assert_eq!(s.safe_len("hello </"), 3);
        assert_eq!(s.earliest("hello STOP"), Some(6));
        assert_eq!(s.earliest("hello, STOP"), Some(7));
        // Never splits a character.
        let s = StopList::new(vec!["ab".into()]);
        assert_eq!(s.safe_len("é"), 0);
        let s = StopList::new(vec!["abc".into()]);
        assert_eq!(s.safe_len("xé"), 1);
        assert_eq!(StopList::new(vec![String::new()]).safe_len("abc"), 3);
    }
}
