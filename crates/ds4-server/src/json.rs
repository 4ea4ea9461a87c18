//! Request JSON in, response JSON out.
//!
//! Requests are parsed into [`PyValue`] (insertion-ordered objects), because
//! key order matters: tool schemas are rendered into the prompt byte for
//! byte, and tool-call arguments sent as JSON objects keep the client's key
//! order (SERVING.md §9 items 9, 10, 18). Responses are built the same way so
//! that field order follows the spec (e.g. `type` first in Responses events).
//!
//! Field access goes through [`Fields`], whose errors name the field:
//! `invalid JSON request: 'max_tokens' must be an integer`.

use ds4_text::pyjson::PyValue;

use crate::error::ApiError;

/// Deepest nesting of arrays and objects accepted (ds4: 256).
pub const MAX_DEPTH: usize = 256;

/// Nesting depth of a JSON text (brackets outside strings), without parsing it.
pub fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_str, mut esc) = (false, false);
    for &b in text {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses a request body: UTF-8, nesting limit, JSON, a top-level object.
pub fn parse_body(body: &[u8]) -> Result<PyValue, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("invalid JSON request: body is not UTF-8 ({e})")))?;
    if nesting_depth(body) > MAX_DEPTH {
        return Err(ApiError::invalid(format!(
            "invalid JSON request: nesting deeper than {MAX_DEPTH} levels"
        )));
    }
    let v = PyValue::parse(text)
        .map_err(|e| ApiError::invalid(format!("invalid JSON request: {e}")))?;
    match v {
        PyValue::Object(_) => Ok(v),
        _ => Err(ApiError::invalid(
            "invalid JSON request: the body must be a JSON object",
        )),
    }
}

/// Typed access to an object's fields; errors name the field by its path.
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    pub value: &'a PyValue,
    pub path: &'a str,
}

fn type_error(path: &str, key: &str, what: &str) -> ApiError {
    let name = if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    };
    ApiError::invalid(format!("invalid JSON request: '{name}' must be {what}"))
}

/// A number as f64 (integers and floats).
pub fn as_f64(v: &PyValue) -> Option<f64> {
    match v {
        PyValue::Int(d) => d.parse::<f64>().ok(),
        PyValue::Float(f) => Some(*f),
        _ => None,
    }
}

impl<'a> Fields<'a> {
    pub fn new(value: &'a PyValue, path: &'a str) -> Self {
        Self { value, path }
    }

    /// The field, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'a PyValue> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn present(&self, key: &str) -> bool {
        self.value.get(key).is_some()
    }

    pub fn err(&self, key: &str, what: &str) -> ApiError {
        type_error(self.path, key, what)
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(PyValue::Str(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(key, "a string")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(PyValue::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(key, "a boolean")),
        }
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_f64(v)
                .filter(|f| !f.is_nan())
                .map(Some)
                .ok_or_else(|| self.err(key, "a number")),
        }
    }

    /// A number clamped to `[0, i32::MAX]` and truncated (ds4 parses
    /// integers as doubles): negative values become 0.
    pub fn count(&self, key: &str) -> Result<Option<u64>, ApiError> {
        Ok(self.f64(key)?.map(|f| f.clamp(0.0, i32::MAX as f64) as u64))
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a [PyValue]>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(PyValue::Array(a)) => Ok(Some(a)),
            Some(_) => Err(self.err(key, "an array")),
        }
    }

    pub fn object(&self, key: &str) -> Result<Option<&'a PyValue>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ PyValue::Object(_)) => Ok(Some(v)),
            Some(_) => Err(self.err(key, "an object")),
        }
    }

    /// `stop`: a string or an array of strings; empty strings are dropped.
    pub fn stop_list(&self, key: &str) -> Result<Vec<String>, ApiError> {
        let list = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(PyValue::Str(s)) => vec![s.clone()],
            Some(PyValue::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.err(key, "a string or an array of strings"))?,
            Some(_) => return Err(self.err(key, "a string or an array of strings")),
        };
        Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
    }
}

/// Conversion into a response value (see [`obj!`]).
pub trait IntoPy {
    fn into_py(self) -> PyValue;
}

impl IntoPy for PyValue {
    fn into_py(self) -> PyValue {
        self
    }
}

impl IntoPy for &str {
    fn into_py(self) -> PyValue {
        PyValue::Str(self.to_owned())
    }
}

impl IntoPy for String {
    fn into_py(self) -> PyValue {
        PyValue::Str(self)
    }
}

impl IntoPy for &String {
    fn into_py(self) -> PyValue {
        PyValue::Str(self.clone())
    }
}

impl IntoPy for bool {
    fn into_py(self) -> PyValue {
        PyValue::Bool(self)
    }
}

macro_rules! int_into_py {
    ($($t:ty),*) => {$(
        impl IntoPy for $t {
            fn into_py(self) -> PyValue {
                PyValue::Int(self.to_string())
            }
        }
    )*};
}
int_into_py!(u8, u32, u64, usize, i64);

impl<T: IntoPy> IntoPy for Option<T> {
    fn into_py(self) -> PyValue {
        self.map_or(PyValue::Null, IntoPy::into_py)
    }
}

impl<T: IntoPy> IntoPy for Vec<T> {
    fn into_py(self) -> PyValue {
        PyValue::Array(self.into_iter().map(IntoPy::into_py).collect())
    }
}

/// An ordered JSON object: `obj! { "id" => id, "object" => "model" }`.
#[macro_export]
macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => {
        ::ds4_text::pyjson::PyValue::Object(vec![
            $(($k.to_string(), $crate::json::IntoPy::into_py($v))),*
        ])
    };
}

/// Appends a field to an object value (no-op on other values).
pub fn push_field(v: &mut PyValue, key: &str, value: impl IntoPy) {
    if let PyValue::Object(entries) = v {
        entries.push((key.to_owned(), value.into_py()));
    }
}

/// Compact JSON text of a response value.
pub fn to_text(v: &PyValue) -> String {
    v.dumps_compact()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        "[".repeat(n) + &"]".repeat(n)
    }

    #[test]
    fn json_skip_has_nesting_limit() {
        // SERVING.md §9 item 71.
        let ok = format!("{{\"x\":{}}}", nested(255));
        assert!(parse_body(ok.as_bytes()).is_ok());
        let bad = format!("{{\"x\":{}}}", nested(256));
        let e = parse_body(bad.as_bytes()).unwrap_err();
        assert!(e.message.contains("nesting"), "{}", e.message);
        assert_eq!(nesting_depth(b"{\"a\":\"[[[[\"}"), 1);
    }

    #[test]
    fn field_errors_name_the_field() {
        let v = parse_body(br#"{"max_tokens":"x","stop":[1],"n":-5,"t":1.5}"#).unwrap();
        let f = Fields::new(&v, "");
        assert!(f
            .count("max_tokens")
            .unwrap_err()
            .message
            .contains("'max_tokens'"));
        assert!(f.stop_list("stop").unwrap_err().message.contains("'stop'"));
        assert_eq!(f.count("n").unwrap(), Some(0));
        assert_eq!(f.count("t").unwrap(), Some(1));
        assert_eq!(f.count("missing").unwrap(), None);
        assert!(parse_body(b"[1]").is_err());
        assert!(parse_body(b"{").is_err());
        assert!(parse_body(b"\xff").is_err());
    }

    #[test]
    fn stop_list_drops_empty() {
        let v = parse_body(br#"{"stop":["END","","STOP"],"s":"x"}"#).unwrap();
        let f = Fields::new(&v, "");
        assert_eq!(f.stop_list("stop").unwrap(), vec!["END", "STOP"]);
        assert_eq!(f.stop_list("s").unwrap(), vec!["x"]);
    }

    #[test]
    fn objects_keep_order() {
        let v = obj! { "type" => "x", "sequence_number" => 3u64, "a" => Some("b"), "n" => None::<String> };
        assert_eq!(
            to_text(&v),
            r#"{"type":"x","sequence_number":3,"a":"b","n":null}"#
        );
    }
}
