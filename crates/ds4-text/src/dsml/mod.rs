//! DSML: the tool-call markup of DeepSeek V4 (SERVING.md §2.4, §3).
//!
//! * [`parse_completion`] — the official `parse_message_from_completion_text`: strict, returns
//!   the Python exception type on malformed input (fixture parity).
//! * [`parse_generated`] — the serving parser (ds4 `parse_generated_message_ex`, §3.2): accepts
//!   the three marker syntaxes and a few drift shapes, and never fails: malformed tool markup
//!   comes back as plain content with [`ParsedTurn::error`] saying why.
//! * [`DsmlProjector`] — incremental projection of a generation into reasoning / content /
//!   tool-call events (§3.6). Its [`StreamOutcome::turn`] is [`parse_generated`] of the whole
//!   text.
//! * [`canonical_official`] / [`canonical_ds4`] — JSON tool calls back to DSML.

mod official;
mod parse;
mod stream;

pub use official::{parse_completion, OfficialMessage, OfficialToolCall, ParseError};
pub use parse::parse_generated;
pub use stream::{coalesce, DsmlProjector, ProjectorOptions, StreamEvent, StreamOutcome};

use crate::chat::{RenderError, RenderedPrompt};
use crate::pyjson::PyValue;

/// Tag spellings of one marker syntax (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syntax {
    pub calls_open: &'static str,
    pub calls_close: &'static str,
    pub invoke_open: &'static str,
    pub invoke_close: &'static str,
    pub param_open: &'static str,
    pub param_close: &'static str,
}

pub const FULL: Syntax = Syntax {
    calls_open: "<｜DSML｜tool_calls>",
    calls_close: "</｜DSML｜tool_calls>",
    invoke_open: "<｜DSML｜invoke",
    invoke_close: "</｜DSML｜invoke>",
    param_open: "<｜DSML｜parameter",
    param_close: "</｜DSML｜parameter>",
};

/// The first `｜` dropped.
pub const SHORT: Syntax = Syntax {
    calls_open: "<DSML｜tool_calls>",
    calls_close: "</DSML｜tool_calls>",
    invoke_open: "<DSML｜invoke",
    invoke_close: "</DSML｜invoke>",
    param_open: "<DSML｜parameter",
    param_close: "</DSML｜parameter>",
};

pub const XML: Syntax = Syntax {
    calls_open: "<tool_calls>",
    calls_close: "</tool_calls>",
    invoke_open: "<invoke",
    invoke_close: "</invoke>",
    param_open: "<parameter",
    param_close: "</parameter>",
};

pub const SYNTAXES: [Syntax; 3] = [FULL, SHORT, XML];

/// A parameter value as generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsmlValue {
    /// `string="true"` (or no `string` attribute): entity-unescaped text.
    String(String),
    /// Any other `string` value: raw JSON text with whitespace outside strings removed (not
    /// validated; empty becomes `null`).
    Json(String),
    /// Loose nested parameters without a `string` attribute (drift recovery, §3.2).
    Object(Vec<DsmlParam>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsmlParam {
    pub name: String,
    pub value: DsmlValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToolCall {
    pub name: String,
    pub params: Vec<DsmlParam>,
    /// `{` + `"key": value` pairs joined by `", "` + `}` (§3.2 step 5).
    pub arguments: String,
}

impl ParsedToolCall {
    pub(crate) fn new(name: String, params: Vec<DsmlParam>) -> Self {
        let arguments = args_string(&params, ", ", ": ");
        ParsedToolCall {
            name,
            params,
            arguments,
        }
    }

    /// The arguments as sent on the wire (§3.3): compact, keys in generation order; `{}` when a
    /// non-string value is not valid JSON.
    pub fn wire_arguments(&self) -> String {
        if self.params.iter().all(param_is_valid_json) {
            args_string(&self.params, ",", ":")
        } else {
            "{}".to_owned()
        }
    }
}

fn param_is_valid_json(p: &DsmlParam) -> bool {
    match &p.value {
        DsmlValue::String(_) => true,
        DsmlValue::Json(raw) => serde_json::from_str::<serde::de::IgnoredAny>(raw).is_ok(),
        DsmlValue::Object(inner) => inner.iter().all(param_is_valid_json),
    }
}

fn args_string(params: &[DsmlParam], item_sep: &str, key_sep: &str) -> String {
    let mut out = String::from("{");
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.push_str(item_sep);
        }
        json_escape_into(&mut out, &p.name);
        out.push_str(key_sep);
        match &p.value {
            DsmlValue::String(s) => json_escape_into(&mut out, s),
            DsmlValue::Json(raw) => out.push_str(raw),
            // ds4 minifies the nested object it builds, whatever the outer separators.
            DsmlValue::Object(inner) => out.push_str(&args_string(inner, ",", ":")),
        }
    }
    out.push('}');
    out
}

/// The result of [`parse_generated`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedTurn {
    /// Text before `</think>` (without a leading `<think>`); `None` when there is no `</think>`
    /// in the content part.
    pub reasoning: Option<String>,
    pub content: String,
    pub tool_calls: Vec<ParsedToolCall>,
    /// The exact tool-call block, from its start (including a leading `"\n\n"` when matched with
    /// it) through its close tag; replayed verbatim by the renderer (`Message::raw_dsml`).
    pub raw_dsml: Option<String>,
    /// Set when a tool block was found but could not be parsed; the whole text is then
    /// returned as `content` with no reasoning and no calls.
    pub error: Option<String>,
}

/// ASCII whitespace as C `isspace` sees it (ds4 skips these between DSML elements).
#[inline]
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

pub(crate) fn skip_ws(s: &str, mut i: usize) -> usize {
    let b = s.as_bytes();
    while i < b.len() && is_c_space(b[i]) {
        i += 1;
    }
    i
}

pub(crate) fn trim_end_ws(s: &str) -> &str {
    s.trim_end_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
}

const ENTITIES: [(&str, char); 5] = [
    ("&amp;", '&'),
    ("&lt;", '<'),
    ("&gt;", '>'),
    ("&quot;", '"'),
    ("&apos;", '\''),
];

/// Undoes exactly the five XML entities; any other `&` stays.
pub fn unescape_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match ENTITIES.iter().find(|(e, _)| rest.starts_with(e)) {
            Some((e, c)) => {
                out.push(*c);
                rest = &rest[e.len()..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Start of a trailing partial entity (`&`, `&am`, ...) that more bytes could complete.
pub(crate) fn partial_entity_start(s: &str) -> Option<usize> {
    let i = s.rfind('&')?;
    let tail = &s[i..];
    ENTITIES
        .iter()
        .any(|(e, _)| e.len() > tail.len() && e.starts_with(tail))
        .then_some(i)
}

/// Start of a trailing proper prefix of `tag` (which has one `<`, at its start).
pub(crate) fn partial_tag_start(s: &str, tag: &str) -> Option<usize> {
    let i = s.rfind('<')?;
    let tail = &s[i..];
    (tail.len() < tag.len() && tag.starts_with(tail)).then_some(i)
}

/// ds4's JSON string escaping: `"` `\` and `\n \r \t` short, other controls `\u00XX`, the rest
/// (including `/` and non-ASCII) raw. Appends the quoted string.
pub fn json_escape_into(out: &mut String, s: &str) {
    out.push('"');
    json_escape_fragment_into(out, s);
    out.push('"');
}

/// [`json_escape_into`] without the quotes (a piece of a JSON string).
pub fn json_escape_fragment_into(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(esc);
        }
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// Removes whitespace outside JSON string literals; escapes inside strings are kept verbatim.
pub fn minify_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_str = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !(c.is_ascii() && is_c_space(c as u8)) {
            out.push(c);
        }
    }
    out
}

/// `dsml_attr`: the value of `key="..."` inside a tag (first occurrence, up to the next `"`),
/// entity-unescaped.
pub(crate) fn tag_attr(tag: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=\"");
    let start = tag.find(&pat)? + pat.len();
    let len = tag[start..].find('"')?;
    Some(unescape_entities(&tag[start..start + len]))
}

/// A tool call in the JSON form clients send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonToolCall<'a> {
    pub name: &'a str,
    /// The arguments JSON text as the client sent it.
    pub arguments: &'a str,
}

/// The block the official encoder (and so [`crate::chat::render`]) renders for these calls,
/// including the leading `"\n\n"`. This is the canonical text a server must compare against
/// when it canonicalizes a live session (§3.9), since it is what the next request renders.
pub fn canonical_official(calls: &[JsonToolCall<'_>]) -> Result<String, RenderError> {
    if calls.is_empty() {
        return Ok(String::new());
    }
    let mut out = RenderedPrompt::new();
    out.push_template("\n\n<｜DSML｜tool_calls>\n");
    for (i, c) in calls.iter().enumerate() {
        if i > 0 {
            out.push_template("\n");
        }
        crate::chat::render_invoke(&mut out, c.name, c.arguments)?;
    }
    out.push_template("\n</｜DSML｜tool_calls>");
    Ok(out.into_text())
}

fn esc_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// ds4's canonical form (`canonical_dsml`, §2.2): minified raw values in client order, attribute
/// escaping, escaped closing tags, no blank line in an empty invoke.
pub fn canonical_ds4(calls: &[JsonToolCall<'_>]) -> String {
    const CLOSE: &str = "</｜DSML｜parameter>";
    let mut out = String::from("\n\n<｜DSML｜tool_calls>\n");
    for c in calls {
        out.push_str("<｜DSML｜invoke name=\"");
        out.push_str(&esc_attr(c.name));
        out.push_str("\">\n");
        let param = |out: &mut String, key: &str, string: bool, value: &str| {
            out.push_str("<｜DSML｜parameter name=\"");
            out.push_str(&esc_attr(key));
            out.push_str(if string {
                "\" string=\"true\">"
            } else {
                "\" string=\"false\">"
            });
            out.push_str(value);
            out.push_str(CLOSE);
            out.push('\n');
        };
        match PyValue::parse_object_members(c.arguments) {
            Some(members) => {
                for m in members {
                    match &m.value {
                        PyValue::Str(s) => param(
                            &mut out,
                            &m.key,
                            true,
                            &s.replace(CLOSE, "&lt;/｜DSML｜parameter>"),
                        ),
                        _ => param(
                            &mut out,
                            &m.key,
                            false,
                            &minify_json(&c.arguments[m.raw.clone()])
                                .replace(CLOSE, "\\u003c/｜DSML｜parameter>"),
                        ),
                    }
                }
            }
            None => param(
                &mut out,
                "arguments",
                true,
                &c.arguments.replace(CLOSE, "&lt;/｜DSML｜parameter>"),
            ),
        }
        out.push_str("</｜DSML｜invoke>\n");
    }
    out.push_str("</｜DSML｜tool_calls>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(
            unescape_entities("a&amp;lt;&lt;&x&quot;&apos;&gt"),
            "a&lt;<&x\"'&gt"
        );
        assert_eq!(partial_entity_start("ab&am"), Some(2));
        assert_eq!(partial_entity_start("ab&amp;"), None);
        assert_eq!(partial_entity_start("ab&x"), None);
        assert_eq!(
            minify_json("{ \"a b\" : [1, 2],\n\"c\":\"\\\" x\" }"),
            "{\"a b\":[1,2],\"c\":\"\\\" x\"}"
        );
        let mut s = String::new();
        json_escape_into(&mut s, "a\"\\\n\u{8}/é");
        assert_eq!(s, "\"a\\\"\\\\\\n\\u0008/é\"");
        assert_eq!(
            tag_attr("<x name=\"a&amp;b\" string=\"true\">", "name").as_deref(),
            Some("a&b")
        );
        assert_eq!(tag_attr("<x name=\"a>", "string"), None);
    }

    #[test]
    fn canonical_forms() {
        let calls = [
            JsonToolCall {
                name: "bash",
                arguments: "{\"command\":\"ls /tmp\",\"timeout\":10}",
            },
            JsonToolCall {
                name: "x",
                arguments: "{}",
            },
        ];
        assert_eq!(
            canonical_ds4(&calls),
            "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n\
             <｜DSML｜parameter name=\"command\" string=\"true\">ls /tmp</｜DSML｜parameter>\n\
             <｜DSML｜parameter name=\"timeout\" string=\"false\">10</｜DSML｜parameter>\n\
             </｜DSML｜invoke>\n<｜DSML｜invoke name=\"x\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
        );
        assert_eq!(
            canonical_official(&calls).unwrap(),
            "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n\
             <｜DSML｜parameter name=\"command\" string=\"true\">ls /tmp</｜DSML｜parameter>\n\
             <｜DSML｜parameter name=\"timeout\" string=\"false\">10</｜DSML｜parameter>\n\
             </｜DSML｜invoke>\n<｜DSML｜invoke name=\"x\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
        );
    }
}
