//! The DeepSeek V4 pre-tokenizer (SERVING.md §1.2).
//!
//! `tokenizer.json` declares a `Sequence` of three `Split(Isolated)` regexes. HF runs them with
//! Oniguruma; the third one needs a look-ahead (`\s+(?!\S)`), which the `regex` crate rejects.
//!
//! [`split`] is a hand-written matcher for the three expressions. Regexes are slow here because
//! every byte of input goes through them; the hand-written version decodes each character once,
//! classifies it with a table and never allocates. [`reference_split`] runs the literal patterns
//! with `fancy-regex`; tests and the fuzz target check that both agree on arbitrary input, and
//! the fixtures check both against HF.

use std::sync::OnceLock;

use super::classes::{self, ClassTable, CJK, L, M, N, P, S, WS};

/// The three regexes, verbatim from `tokenizer.json`.
pub const PATTERNS: [&str; 3] = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

#[inline]
fn char_at(s: &str, i: usize) -> Option<(char, usize)> {
    let b = *s.as_bytes().get(i)?;
    if b < 0x80 {
        return Some((b as char, 1));
    }
    let c = s[i..].chars().next()?;
    Some((c, c.len_utf8()))
}

/// Calls `f` with every pre-token of `text`, in order. The pieces concatenate to `text`.
pub fn split<'a>(text: &'a str, f: &mut impl FnMut(&'a str)) {
    let t = classes::table();
    split_digits(t, text, f);
}

/// Step 1: `\p{N}{1,3}`.
fn split_digits<'a>(t: &ClassTable, s: &'a str, f: &mut impl FnMut(&'a str)) {
    let b = s.as_bytes();
    let mut gap = 0;
    let mut i = 0;
    while i < b.len() {
        let (c, l) = char_at(s, i).expect("in bounds");
        if t.get(c) & N == 0 {
            i += l;
            continue;
        }
        if gap < i {
            split_cjk(t, &s[gap..i], f);
        }
        let start = i;
        let mut n = 0;
        while n < 3 {
            match char_at(s, i) {
                Some((c, l)) if t.get(c) & N != 0 => {
                    i += l;
                    n += 1;
                }
                _ => break,
            }
        }
        // Steps 2 and 3 leave a run of at most three `\p{N}` characters alone: no number is
        // CJK, and no alternative of the third regex can start on, or consume, a number
        // (the only candidate, `[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+`, needs a letter next).
        f(&s[start..i]);
        gap = i;
    }
    if gap < b.len() {
        split_cjk(t, &s[gap..], f);
    }
}

/// Step 2: runs of CJK ideographs and kana.
fn split_cjk<'a>(t: &ClassTable, s: &'a str, f: &mut impl FnMut(&'a str)) {
    let b = s.as_bytes();
    // CJK code points are all >= U+3040, i.e. 3-byte sequences; pure ASCII can skip the scan.
    if b.iter().all(|&x| x < 0x80) {
        split_main(t, s, f);
        return;
    }
    let mut gap = 0;
    let mut i = 0;
    while i < b.len() {
        let (c, l) = char_at(s, i).expect("in bounds");
        if t.get(c) & CJK == 0 {
            i += l;
            continue;
        }
        let start = i;
        i += l;
        while let Some((c, l)) = char_at(s, i) {
            if t.get(c) & CJK == 0 {
                break;
            }
            i += l;
        }
        if gap < start {
            split_main(t, &s[gap..start], f);
        }
        split_main(t, &s[start..i], f);
        gap = i;
    }
    if gap < b.len() {
        split_main(t, &s[gap..], f);
    }
}

/// Step 3: the six-way alternation. `s` is the whole haystack of this step (a piece produced by
/// step 2), which matters for `(?!\S)` at its end.
fn split_main<'a>(t: &ClassTable, s: &'a str, f: &mut impl FnMut(&'a str)) {
    let n = s.len();
    let mut gap: Option<usize> = None;
    let mut p = 0;
    while p < n {
        let (c, cl) = char_at(s, p).expect("in bounds");
        match match_at(t, s, p, c, cl) {
            Some(end) => {
                if let Some(g) = gap.take() {
                    f(&s[g..p]);
                }
                f(&s[p..end]);
                p = end;
            }
            None => {
                gap.get_or_insert(p);
                p += cl;
            }
        }
    }
    if let Some(g) = gap {
        f(&s[g..]);
    }
}

#[inline]
fn run_while(t: &ClassTable, s: &str, mut i: usize, mask: u8) -> usize {
    while let Some((c, l)) = char_at(s, i) {
        if t.get(c) & mask == 0 {
            break;
        }
        i += l;
    }
    i
}

#[inline]
fn run_newlines(s: &str, mut i: usize) -> usize {
    let b = s.as_bytes();
    while i < b.len() && (b[i] == b'\r' || b[i] == b'\n') {
        i += 1;
    }
    i
}

/// End of the leftmost-first match of the third regex starting at `p`, if any.
#[inline]
fn match_at(t: &ClassTable, s: &str, p: usize, c: char, cl: usize) -> Option<usize> {
    let b = s.as_bytes();
    let fc = t.get(c);
    let next = char_at(s, p + cl);
    // [!-/:-@[-`{-~][A-Za-z]+
    if c.is_ascii_punctuation() && b.get(p + 1).is_some_and(u8::is_ascii_alphabetic) {
        let mut e = p + 2;
        while b.get(e).is_some_and(u8::is_ascii_alphabetic) {
            e += 1;
        }
        return Some(e);
    }
    // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
    if c != '\r' && c != '\n' && fc & (L | P | S) == 0 {
        if let Some((c2, l2)) = next {
            if t.get(c2) & (L | M) != 0 {
                return Some(run_while(t, s, p + cl + l2, L | M));
            }
        }
    }
    if fc & (L | M) != 0 {
        return Some(run_while(t, s, p + cl, L | M));
    }
    // ` ?[\p{P}\p{S}]+[\r\n]*`
    if c == ' ' {
        if let Some((c2, l2)) = next {
            if t.get(c2) & (P | S) != 0 {
                return Some(run_newlines(s, run_while(t, s, p + 1 + l2, P | S)));
            }
        }
    }
    if fc & (P | S) != 0 {
        return Some(run_newlines(s, run_while(t, s, p + cl, P | S)));
    }
    if fc & WS == 0 {
        return None;
    }
    // Whitespace run W = [p, e).
    let mut e = p;
    let mut last_start = p;
    let mut count = 0usize;
    let mut after_last_nl = None;
    while let Some((c2, l2)) = char_at(s, e) {
        if t.get(c2) & WS == 0 {
            break;
        }
        if c2 == '\r' || c2 == '\n' {
            after_last_nl = Some(e + l2);
        }
        last_start = e;
        e += l2;
        count += 1;
    }
    // `\s*[\r\n]+`: `\s*` backtracks to the last newline of the run; the newline run after it
    // cannot extend further because it was the last one.
    if let Some(end) = after_last_nl {
        return Some(end);
    }
    // `\s+(?!\S)`: the whole run at the end of the haystack, otherwise all but its last
    // character (which is whitespace, so the look-ahead holds), provided one remains.
    if e == s.len() || count < 2 {
        // (`count < 2` before a non-space falls through to `\s+`, the whole run.)
        return Some(e);
    }
    Some(last_start)
}

/// The reference implementation: the literal patterns run by `fancy-regex` with HF's
/// `Split(Isolated)` semantics. Much slower; used to cross-check [`split`].
pub fn reference_split(text: &str) -> Vec<&str> {
    static RES: OnceLock<Vec<fancy_regex::Regex>> = OnceLock::new();
    let res = RES.get_or_init(|| {
        PATTERNS
            .iter()
            .map(|p| fancy_regex::Regex::new(p).expect("pre-tokenizer pattern compiles"))
            .collect()
    });
    let mut pieces = vec![text];
    for re in res {
        let mut next = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let mut last = 0;
            for m in re.find_iter(piece) {
                let m = m.expect("backtrack limit not reached on pre-tokenizer patterns");
                if m.start() == m.end() {
                    continue;
                }
                if last < m.start() {
                    next.push(&piece[last..m.start()]);
                }
                next.push(m.as_str());
                last = m.end();
            }
            if last < piece.len() {
                next.push(&piece[last..]);
            }
        }
        pieces = next;
    }
    pieces
}

/// Collects [`split`] into a vector.
pub fn split_vec(text: &str) -> Vec<&str> {
    let mut v = Vec::new();
    split(text, &mut |p| v.push(p));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &[&str]) {
        assert_eq!(split_vec(input), expected, "fast split of {input:?}");
        assert_eq!(
            reference_split(input),
            expected,
            "reference split of {input:?}"
        );
    }

    #[test]
    fn spec_reference_splits() {
        check(
            "    int x = 123456;\n",
            &["   ", " int", " x", " =", " ", "123", "456", ";\n"],
        );
        check("Hello, world!\n\n", &["Hello", ",", " world", "!\n\n"]);
        check("x  \n\n  y", &["x", "  \n\n", " ", " y"]);
        check("a\t\tb", &["a", "\t", "\tb"]);
        check("x = y;  // c", &["x", " =", " y", ";", " ", " //", " c"]);
        check("foo.bar()", &["foo", ".bar", "()"]);
        check("ok，好的", &["ok", "，", "好的"]);
        check("emoji 🚀 done", &["emoji", " 🚀", " done"]);
        check("a   b", &["a", "  ", " b"]);
        check("カ・ナ", &["カ", "・", "ナ"]);
        check("\u{0}\u{0}x", &["\u{0}", "\u{0}x"]);
        check("", &[]);
    }
}
