//! The official `parse_message_from_completion_text`.

use crate::chat::ThinkingMode;
use crate::pyjson::push_py_str;
use crate::tokenizer::{BOS, DSML, EOS, THINK_END, THINK_START};

const CALLS_START: &str = "\n\n<｜DSML｜tool_calls";
const CALLS_END: &str = "</｜DSML｜tool_calls>";
const INVOKE: &str = "<｜DSML｜invoke";
const INVOKE_END: &str = "</｜DSML｜invoke";
const PARAM: &str = "<｜DSML｜parameter";
const PARAM_END: &str = "/｜DSML｜parameter";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("AssertionError: {0}")]
    Assertion(String),
    #[error("ValueError: {0}")]
    Value(String),
}

impl ParseError {
    pub fn python_type(&self) -> &'static str {
        match self {
            ParseError::Assertion(_) => "AssertionError",
            ParseError::Value(_) => "ValueError",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfficialToolCall {
    pub name: String,
    /// `{"key": value, ...}`: string values `json.dumps`-ed, others inserted raw.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OfficialMessage {
    pub content: String,
    pub reasoning_content: String,
    pub tool_calls: Vec<OfficialToolCall>,
}

/// `_read_until_stop`: the earliest stop (the first listed wins a tie).
fn read_until<'t>(
    index: usize,
    text: &'t str,
    stops: &[&'static str],
) -> (usize, &'t str, Option<&'static str>) {
    let mut best: Option<(usize, &'static str)> = None;
    for &s in stops {
        if let Some(p) = text[index..].find(s) {
            if best.is_none_or(|(b, _)| index + p < b) {
                best = Some((index + p, s));
            }
        }
    }
    match best {
        Some((pos, s)) => (pos + s.len(), &text[index..pos], Some(s)),
        None => (text.len(), &text[index..], None),
    }
}

/// Python's `str.isspace` (Unicode White_Space plus the four ASCII separators 0x1C-0x1F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `re.findall(r'^\s*name="(.*?)">\n$', s, re.DOTALL)` with exactly one match.
fn match_invoke_name(s: &str) -> Option<&str> {
    let rest = s.trim_start_matches(py_space).strip_prefix("name=\"")?;
    // `$` also matches before one final newline; the two endings exclude each other.
    rest.strip_suffix("\">\n\n")
        .or_else(|| rest.strip_suffix("\">\n"))
}

/// `re.findall(r'^ name="(.*?)" string="(true|false)">(.*?)<$', s, re.DOTALL)`.
fn match_param(s: &str) -> Option<(&str, &'static str, &str)> {
    let rest = s.strip_prefix(" name=\"")?;
    let value_end = if rest.ends_with("<\n") {
        rest.len() - 2
    } else if rest.ends_with('<') {
        rest.len() - 1
    } else {
        return None;
    };
    // The lazy name takes the first `" string="true|false">` that leaves room for the value.
    let mut from = 0;
    while let Some(k) = rest[from..].find("\" string=\"") {
        let k = from + k;
        let after = &rest[k + "\" string=\"".len()..];
        for flag in ["true", "false"] {
            if let Some(v) = after.strip_prefix(flag).and_then(|a| a.strip_prefix("\">")) {
                let vstart = rest.len() - v.len();
                if vstart <= value_end {
                    return Some((&rest[..k], flag, &rest[vstart..value_end]));
                }
            }
        }
        from = k + 1;
    }
    None
}

fn parse_tool_calls(
    mut index: usize,
    text: &str,
) -> Result<(usize, Option<&'static str>, Vec<OfficialToolCall>), ParseError> {
    let mut calls = Vec::new();
    let mut stop = None;
    while index < text.len() {
        let (i, between, s) = read_until(index, text, &[INVOKE, CALLS_END]);
        index = i;
        stop = s;
        if between != ">\n" {
            return Err(ParseError::Value(format!(
                "Tool call format error: expected '>\\n' but got '{between}'"
            )));
        }
        if stop == Some(CALLS_END) {
            break;
        }
        if stop.is_none() {
            return Err(ParseError::Value(
                "Missing special token in tool calls".into(),
            ));
        }
        let (i, name_part, s) = read_until(index, text, &[PARAM, INVOKE_END]);
        index = i;
        stop = s;
        let name = match_invoke_name(name_part)
            .ok_or_else(|| ParseError::Value(format!("Tool name format error: '{name_part}'")))?;
        let mut args: Vec<(&str, &str, &str)> = Vec::new();
        while stop == Some(PARAM) {
            let (i, param_part, _) = read_until(index, text, &[PARAM_END]);
            index = i;
            let (key, flag, value) = match_param(param_part).ok_or_else(|| {
                ParseError::Value(format!("Parameter format error: '{param_part}'"))
            })?;
            if args.iter().any(|(k, _, _)| *k == key) {
                return Err(ParseError::Value(format!(
                    "Duplicate parameter name: '{key}'"
                )));
            }
            args.push((key, flag, value));
            let (i, between, s) = read_until(index, text, &[PARAM, INVOKE_END]);
            index = i;
            stop = s;
            if between != ">\n" {
                return Err(ParseError::Value(format!(
                    "Parameter format error: expected '>\\n' but got '{between}'"
                )));
            }
        }
        let mut arguments = String::from("{");
        for (i, (k, flag, v)) in args.iter().enumerate() {
            if i > 0 {
                arguments.push_str(", ");
            }
            push_py_str(&mut arguments, k);
            arguments.push_str(": ");
            if *flag == "true" {
                push_py_str(&mut arguments, v);
            } else {
                arguments.push_str(v);
            }
        }
        arguments.push('}');
        calls.push(OfficialToolCall {
            name: name.to_owned(),
            arguments,
        });
    }
    Ok((index, stop, calls))
}

fn assertion(msg: &str) -> ParseError {
    ParseError::Assertion(msg.to_owned())
}

/// `parse_message_from_completion_text(text, thinking_mode)`; `text` includes the final EOS.
pub fn parse_completion(text: &str, mode: ThinkingMode) -> Result<OfficialMessage, ParseError> {
    let mut index = 0;
    let mut reasoning = "";
    if mode == ThinkingMode::Thinking {
        let (i, r, stop) = read_until(index, text, &[THINK_END, CALLS_START]);
        if stop != Some(THINK_END) {
            return Err(assertion("Invalid thinking format: missing </think>"));
        }
        index = i;
        reasoning = r;
    }
    let (i, content, mut stop) = read_until(index, text, &[EOS, CALLS_START]);
    index = i;
    let mut tool_calls = Vec::new();
    if stop == Some(CALLS_START) {
        let (i, _, calls) = parse_tool_calls(index, text)?;
        tool_calls = calls;
        let (i, tail, s) = read_until(i, text, &[EOS]);
        index = i;
        stop = s;
        if !tail.is_empty() {
            return Err(assertion("Unexpected content after tool calls"));
        }
    } else if stop != Some(EOS) {
        return Err(assertion("Invalid format: missing EOS token"));
    }
    if index != text.len() || !(stop == Some(EOS) || stop.is_none()) {
        return Err(assertion("Unexpected content at end"));
    }
    for sp in [BOS, EOS, THINK_START, THINK_END, DSML] {
        if content.contains(sp) || reasoning.contains(sp) {
            return Err(ParseError::Assertion(format!(
                "Unexpected special token '{sp}' in content"
            )));
        }
    }
    Ok(OfficialMessage {
        content: content.to_owned(),
        reasoning_content: reasoning.to_owned(),
        tool_calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_ports() {
        assert_eq!(match_invoke_name(" name=\"x\">\n"), Some("x"));
        assert_eq!(match_invoke_name(" name=\"x\">\n\n"), Some("x"));
        assert_eq!(match_invoke_name(" name=\"x\">\n\n\n"), None);
        assert_eq!(
            match_invoke_name("\u{3000}name=\"a\">\n\">\n"),
            Some("a\">\n")
        );
        assert_eq!(
            match_param(" name=\"k\" string=\"true\">v<"),
            Some(("k", "true", "v"))
        );
        assert_eq!(
            match_param(" name=\"k\" string=\"x\" string=\"false\">a\" string=\"true\">b<\n"),
            Some(("k\" string=\"x", "false", "a\" string=\"true\">b"))
        );
        assert_eq!(match_param(" name=\"k\" string=\"true\">"), None);
    }
}
