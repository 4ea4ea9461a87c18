//! A JSON value that behaves like Python's `json` module.
//!
//! The official chat encoder re-serialises tool schemas, `response_format` and every tool-call
//! argument with `json.dumps(value, ensure_ascii=False)` after a `json.loads` round trip. The
//! prompt bytes therefore depend on Python details that `serde_json` does not reproduce:
//!
//! * objects keep insertion order and a duplicate key keeps its *first* position with the *last*
//!   value (dict assignment semantics);
//! * integers are arbitrary precision (kept as their decimal digits), floats print with
//!   `float.__repr__` (`1e-07`, `100000.0`, `1e+22`, `-0.0`, `Infinity`, `NaN`);
//! * `NaN`, `Infinity` and `-Infinity` are accepted on input;
//! * separators are `", "` and `": "`, non-ASCII characters are written raw.
//!
//! Python can hold lone surrogates in strings; Rust strings cannot, so input with an unpaired
//! `\uD800`-style escape is rejected here (the encoder then treats the text as "not JSON"). The
//! fixtures contain no such input.

use std::fmt::Write as _;

/// CPython refuses to convert integers with more decimal digits than this (`sys.int_info`
/// default since 3.11), so `json.loads` fails on them.
const PY_INT_MAX_STR_DIGITS: usize = 4300;

/// A parsed JSON value with Python semantics.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    Null,
    Bool(bool),
    /// Decimal digits of a Python `int`, already normalised (`-0` becomes `0`).
    Int(String),
    Float(f64),
    Str(String),
    Array(Vec<PyValue>),
    /// Insertion-ordered, keys unique.
    Object(Vec<(String, PyValue)>),
}

/// One member of a JSON object with the position of its raw value text.
#[derive(Debug, Clone, PartialEq)]
pub struct RawMember {
    pub key: String,
    pub raw: std::ops::Range<usize>,
    pub value: PyValue,
}

/// Why a text is not JSON for Python's `json.loads`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {reason}")]
pub struct JsonError {
    pub offset: usize,
    pub reason: &'static str,
}

impl PyValue {
    /// `json.loads(text)`.
    pub fn parse(text: &str) -> Result<PyValue, JsonError> {
        let mut p = Parser {
            s: text.as_bytes(),
            src: text,
            i: 0,
            depth: 0,
        };
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(p.err("extra data"));
        }
        Ok(v)
    }

    /// Parses a JSON object and returns its members in source order, duplicates included, each
    /// with the byte range of its raw value text. `None` if `text` is not a JSON object.
    pub fn parse_object_members(text: &str) -> Option<Vec<RawMember>> {
        let mut p = Parser {
            s: text.as_bytes(),
            src: text,
            i: 0,
            depth: 0,
        };
        p.ws();
        if p.s.get(p.i) != Some(&b'{') {
            return None;
        }
        p.i += 1;
        let mut out = Vec::new();
        p.ws();
        if p.s.get(p.i) == Some(&b'}') {
            p.i += 1;
        } else {
            loop {
                if p.s.get(p.i) != Some(&b'"') {
                    return None;
                }
                let key = p.string().ok()?;
                p.ws();
                if p.s.get(p.i) != Some(&b':') {
                    return None;
                }
                p.i += 1;
                p.ws();
                let start = p.i;
                let value = p.value().ok()?;
                out.push(RawMember {
                    key,
                    raw: start..p.i,
                    value,
                });
                p.ws();
                match p.s.get(p.i) {
                    Some(b',') => {
                        p.i += 1;
                        p.ws();
                    }
                    Some(b'}') => {
                        p.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        p.ws();
        (p.i == p.s.len()).then_some(out)
    }

    /// `json.dumps(self, ensure_ascii=False)`.
    pub fn dumps(&self) -> String {
        let mut out = String::new();
        self.dump_into(&mut out, ", ", ": ");
        out
    }

    /// `json.dumps(self, ensure_ascii=False, separators=(",", ":"))`.
    pub fn dumps_compact(&self) -> String {
        let mut out = String::new();
        self.dump_into(&mut out, ",", ":");
        out
    }

    fn dump_into(&self, out: &mut String, item_sep: &str, key_sep: &str) {
        match self {
            PyValue::Null => out.push_str("null"),
            PyValue::Bool(true) => out.push_str("true"),
            PyValue::Bool(false) => out.push_str("false"),
            PyValue::Int(d) => out.push_str(d),
            PyValue::Float(f) => push_py_float(out, *f),
            PyValue::Str(s) => push_py_str(out, s),
            PyValue::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    v.dump_into(out, item_sep, key_sep);
                }
                out.push(']');
            }
            PyValue::Object(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    push_py_str(out, k);
                    out.push_str(key_sep);
                    v.dump_into(out, item_sep, key_sep);
                }
                out.push('}');
            }
        }
    }

    /// Python truthiness (`if value:`).
    pub fn truthy(&self) -> bool {
        match self {
            PyValue::Null => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(d) => d != "0",
            PyValue::Float(f) => *f != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::Array(a) => !a.is_empty(),
            PyValue::Object(o) => !o.is_empty(),
        }
    }

    /// `dict.get(key)` on an object; `None` for other types or a missing key.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, PyValue::Null)
    }

    /// `str(value)` as Python's f-strings would print it for the scalar cases the encoder can
    /// meet (`None`, strings, numbers, booleans); containers print as their JSON form, which is
    /// close enough for diagnostics.
    pub fn py_str(&self) -> String {
        match self {
            PyValue::Null => "None".to_owned(),
            PyValue::Bool(true) => "True".to_owned(),
            PyValue::Bool(false) => "False".to_owned(),
            PyValue::Str(s) => s.clone(),
            PyValue::Float(f) => {
                let mut s = String::new();
                push_py_float_repr(&mut s, *f, "inf", "nan");
                s
            }
            other => other.dumps(),
        }
    }

    /// Inserts with dict semantics: an existing key keeps its slot and takes the new value.
    pub fn object_insert(entries: &mut Vec<(String, PyValue)>, key: String, value: PyValue) {
        if let Some(slot) = entries.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            entries.push((key, value));
        }
    }
}

/// Appends `json.dumps(s, ensure_ascii=False)`.
pub fn push_py_str(out: &mut String, s: &str) {
    out.push('"');
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        last = i + 1;
    }
    out.push_str(&s[last..]);
    out.push('"');
}

/// Appends a float the way `json.dumps` writes it (`float.__repr__`, with JSON spellings for
/// the non-finite values).
pub fn push_py_float(out: &mut String, f: f64) {
    push_py_float_repr(out, f, "Infinity", "NaN")
}

fn push_py_float_repr(out: &mut String, f: f64, inf: &str, nan: &str) {
    if f.is_nan() {
        out.push_str(nan);
        return;
    }
    if f.is_infinite() {
        if f < 0.0 {
            out.push('-');
        }
        out.push_str(inf);
        return;
    }
    // Rust's `{:e}` prints the shortest digit string that round-trips, like Python's repr
    // (both pick the correctly rounded shortest form); only the layout differs.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // Python's `decpt`: position of the decimal point relative to the digit string.
    let decpt = exp + 1;
    if neg {
        out.push('-');
    }
    if (-4 < decpt) && (decpt <= 16) {
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..(-decpt) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let d = decpt as usize;
            if digits.len() <= d {
                out.push_str(&digits);
                for _ in digits.len()..d {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..d]);
                out.push('.');
                out.push_str(&digits[d..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

const MAX_DEPTH: usize = 512;

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: &'static str) -> JsonError {
        JsonError {
            offset: self.i,
            reason,
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<PyValue, JsonError> {
        match self.s.get(self.i) {
            None => Err(self.err("expecting value")),
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => Ok(PyValue::Str(self.string()?)),
            Some(b'n') if self.eat("null") => Ok(PyValue::Null),
            Some(b't') if self.eat("true") => Ok(PyValue::Bool(true)),
            Some(b'f') if self.eat("false") => Ok(PyValue::Bool(false)),
            Some(b'N') if self.eat("NaN") => Ok(PyValue::Float(f64::NAN)),
            Some(b'I') if self.eat("Infinity") => Ok(PyValue::Float(f64::INFINITY)),
            Some(b'-') if self.s[self.i..].starts_with(b"-Infinity") => {
                self.i += "-Infinity".len();
                Ok(PyValue::Float(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expecting value")),
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            // CPython raises RecursionError long before this for deep input.
            return Err(self.err("nesting too deep"));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<PyValue, JsonError> {
        self.enter()?;
        self.i += 1;
        let mut entries: Vec<(String, PyValue)> = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(PyValue::Object(entries));
        }
        loop {
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.err("expecting property name"));
            }
            let key = self.string()?;
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return Err(self.err("expecting ':'"));
            }
            self.i += 1;
            self.ws();
            let v = self.value()?;
            PyValue::object_insert(&mut entries, key, v);
            if self.item_end(b'}', "expecting ',' or '}'")? {
                return Ok(PyValue::Object(entries));
            }
        }
    }

    /// After a member: `,` (more follow; `false`) or the closing `close`
    /// (the container ends; `true`), else the error `expected`.
    fn item_end(&mut self, close: u8, expected: &'static str) -> Result<bool, JsonError> {
        self.ws();
        match self.s.get(self.i) {
            Some(b',') => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            Some(&c) if c == close => {
                self.i += 1;
                self.depth -= 1;
                Ok(true)
            }
            _ => Err(self.err(expected)),
        }
    }

    fn array(&mut self) -> Result<PyValue, JsonError> {
        self.enter()?;
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(PyValue::Array(items));
        }
        loop {
            items.push(self.value()?);
            if self.item_end(b']', "expecting ',' or ']'")? {
                return Ok(PyValue::Array(items));
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("invalid \\u escape"))?;
        let mut v = 0u32;
        for &c in h {
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + d;
        }
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1;
        let mut out = String::new();
        let mut run = self.i;
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            match b {
                b'"' => {
                    out.push_str(&self.src[run..self.i]);
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(&self.src[run..self.i]);
                    self.i += 1;
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("lone surrogate"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("lone surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(char::from_u32(cp).ok_or_else(|| self.err("lone surrogate"))?);
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                    run = self.i;
                }
                // json.loads(strict=True) rejects raw control characters inside strings.
                0..=0x1f => return Err(self.err("invalid control character")),
                _ => self.i += 1,
            }
        }
    }

    fn number(&mut self) -> Result<PyValue, JsonError> {
        let start = self.i;
        let neg = self.s[self.i] == b'-';
        if neg {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.s.get(self.i) {
                    self.i += 1;
                }
            }
            _ => return Err(self.err("expecting value")),
        }
        let int_end = self.i;
        let mut is_float = false;
        if self.s.get(self.i) == Some(&b'.') && matches!(self.s.get(self.i + 1), Some(b'0'..=b'9'))
        {
            is_float = true;
            self.i += 1;
            while let Some(b'0'..=b'9') = self.s.get(self.i) {
                self.i += 1;
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            let mut j = self.i + 1;
            if let Some(b'+' | b'-') = self.s.get(j) {
                j += 1;
            }
            if matches!(self.s.get(j), Some(b'0'..=b'9')) {
                is_float = true;
                self.i = j;
                while let Some(b'0'..=b'9') = self.s.get(self.i) {
                    self.i += 1;
                }
            }
        }
        let text = &self.src[start..self.i];
        if is_float {
            // Out-of-range exponents saturate to +-inf / 0.0 exactly like CPython's float().
            let f: f64 = text.parse().map_err(|_| self.err("bad float"))?;
            Ok(PyValue::Float(f))
        } else {
            let digits = &self.src[if neg { start + 1 } else { start }..int_end];
            if digits.len() > PY_INT_MAX_STR_DIGITS {
                return Err(self.err("integer string too long"));
            }
            if digits == "0" {
                Ok(PyValue::Int("0".to_owned()))
            } else {
                Ok(PyValue::Int(text.to_owned()))
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for PyValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PyValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<PyValue, E> {
                Ok(PyValue::Null)
            }
            fn visit_none<E>(self) -> Result<PyValue, E> {
                Ok(PyValue::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<PyValue, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<PyValue, E> {
                Ok(PyValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<PyValue, E> {
                Ok(PyValue::Int(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<PyValue, E> {
                Ok(PyValue::Int(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<PyValue, E> {
                Ok(PyValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<PyValue, E> {
                Ok(PyValue::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<PyValue, E> {
                Ok(PyValue::Str(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<PyValue, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = a.next_element()? {
                    items.push(v);
                }
                Ok(PyValue::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<PyValue, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, PyValue>()? {
                    PyValue::object_insert(&mut entries, k, v);
                }
                Ok(PyValue::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::str::FromStr for PyValue {
    type Err = JsonError;
    fn from_str(s: &str) -> Result<Self, JsonError> {
        PyValue::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> String {
        PyValue::parse(s).unwrap().dumps()
    }

    #[test]
    fn python_float_repr() {
        assert_eq!(rt("1e-7"), "1e-07");
        assert_eq!(rt("1E5"), "100000.0");
        assert_eq!(rt("1e22"), "1e+22");
        assert_eq!(rt("1e16"), "1e+16");
        assert_eq!(rt("1e15"), "1000000000000000.0");
        assert_eq!(rt("-0.0"), "-0.0");
        assert_eq!(rt("0.0001"), "0.0001");
        assert_eq!(rt("0.00001"), "1e-05");
        assert_eq!(rt("1.5e300"), "1.5e+300");
        assert_eq!(rt("1e400"), "Infinity");
        assert_eq!(rt("-1e400"), "-Infinity");
        assert_eq!(rt("123.456"), "123.456");
        assert_eq!(rt("0.1"), "0.1");
        assert_eq!(rt("2.5e-5"), "2.5e-05");
        assert_eq!(rt("NaN"), "NaN");
        assert_eq!(rt("12345678901234567.0"), "1.2345678901234568e+16");
    }

    #[test]
    fn ints_and_objects() {
        assert_eq!(rt("-0"), "0");
        assert_eq!(
            rt("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(rt(r#"{"a":1,"b":2,"a":3}"#), r#"{"a": 3, "b": 2}"#);
        assert_eq!(
            rt(r#" [1, {"x": [] }, "\u00e9\n\u0001"] "#),
            "[1, {\"x\": []}, \"é\\n\\u0001\"]"
        );
        assert_eq!(rt(r#""\ud83d\ude80""#), "\"🚀\"");
        assert!(PyValue::parse("01").is_err());
        assert!(PyValue::parse("1.").is_err());
        assert!(PyValue::parse("").is_err());
        assert!(PyValue::parse("\"\\ud800\"").is_err());
        assert!(PyValue::parse("{\"a\" 1}").is_err());
    }
}
