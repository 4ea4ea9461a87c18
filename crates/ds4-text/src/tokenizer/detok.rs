//! Incremental detokenization (SERVING.md §1.8, §5.9).
//!
//! A token may end inside a multi-byte UTF-8 character. The stream holds such an incomplete
//! tail until the next bytes complete it, and replaces invalid sequences with U+FFFD exactly
//! where `String::from_utf8_lossy` would on the whole byte string, so the concatenated output
//! equals the lossy decode of everything pushed.

use super::Tokenizer;

/// Bytes in, complete UTF-8 text out.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes`; returns the text that can no longer change.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut out = String::new();
        self.push_into(bytes, &mut out);
        out
    }

    pub fn push_into(&mut self, bytes: &[u8], out: &mut String) {
        self.pending.extend_from_slice(bytes);
        let mut rest: &[u8] = &self.pending;
        let keep_from;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    keep_from = self.pending.len();
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("prefix validated above"));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            keep_from = self.pending.len() - after.len();
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        self.pending.drain(..keep_from);
    }

    /// Bytes held back because they may start a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Flushes what is held (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Token ids in, complete UTF-8 text out.
#[derive(Debug, Clone)]
pub struct Detokenizer<'t> {
    tok: &'t Tokenizer,
    utf8: Utf8Stream,
}

impl<'t> Detokenizer<'t> {
    pub fn new(tok: &'t Tokenizer) -> Self {
        Detokenizer {
            tok,
            utf8: Utf8Stream::new(),
        }
    }

    /// Adds one token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.utf8.push(self.tok.token_bytes(id))
    }

    pub fn push_into(&mut self, id: u32, out: &mut String) {
        self.utf8.push_into(self.tok.token_bytes(id), out)
    }

    pub fn pending(&self) -> &[u8] {
        self.utf8.pending()
    }

    pub fn finish(&mut self) -> String {
        self.utf8.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_partial_and_replaces_invalid() {
        let mut s = Utf8Stream::new();
        let bytes = "é🚀".as_bytes();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&s.push(&[*b]));
        }
        assert_eq!(out, "é🚀");
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&[0xF0, 0x9F]), "");
        assert_eq!(s.push(b"a"), "\u{FFFD}a");
        assert_eq!(s.push(&[0xE2, 0x82]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&[0xFF, 0xC3]), "\u{FFFD}");
        assert_eq!(s.push(&[0xA9]), "é");
    }
}
