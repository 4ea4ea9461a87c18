//! The serving parser (SERVING.md §3.2).

use super::{
    minify_json, skip_ws, tag_attr, trim_end_ws, unescape_entities, DsmlParam, DsmlValue,
    ParsedToolCall, ParsedTurn, Syntax, FULL, SHORT, XML,
};
use crate::tokenizer::{THINK_END, THINK_START};

/// Block starts in search order: the first pattern found anywhere wins.
const STARTS: [(&str, Syntax); 6] = [
    ("\n\n<｜DSML｜tool_calls>", FULL),
    ("<｜DSML｜tool_calls>", FULL),
    ("\n\n<DSML｜tool_calls>", SHORT),
    ("<DSML｜tool_calls>", SHORT),
    ("\n\n<tool_calls>", XML),
    ("<tool_calls>", XML),
];

/// Splits `<think>reasoning</think>content` (step 6).
pub(crate) fn split_reasoning(text: &str) -> (Option<String>, String) {
    let body = text.strip_prefix(THINK_START).unwrap_or(text);
    match body.find(THINK_END) {
        Some(i) => (
            Some(body[..i].to_owned()),
            body[i + THINK_END.len()..].to_owned(),
        ),
        None => (None, text.to_owned()),
    }
}

/// Parses one finished assistant generation (without the final EOS). With
/// `require_thinking_closed` (thinking mode), tool calls are only looked for after the last
/// `</think>`, and a turn without any `</think>` is returned whole as content.
pub fn parse_generated(text: &str, require_thinking_closed: bool) -> ParsedTurn {
    let mut search_from = 0;
    if require_thinking_closed {
        match text.rfind(THINK_END) {
            Some(i) => search_from = i + THINK_END.len(),
            None => {
                return ParsedTurn {
                    content: text.to_owned(),
                    ..ParsedTurn::default()
                }
            }
        }
    }
    let found = STARTS.iter().find_map(|(pat, syntax)| {
        text[search_from..]
            .find(pat)
            .map(|i| (search_from + i, *pat, *syntax))
    });
    let Some((start, pat, syntax)) = found else {
        let (reasoning, content) = split_reasoning(text);
        return ParsedTurn {
            reasoning,
            content,
            ..ParsedTurn::default()
        };
    };
    let content_end = trim_end_ws(&text[..start]).len();
    match parse_block(text, start + pat.len(), syntax) {
        Ok((calls, end)) => {
            let (reasoning, content) = split_reasoning(&text[..content_end]);
            ParsedTurn {
                reasoning,
                content,
                tool_calls: calls,
                raw_dsml: Some(text[start..end].to_owned()),
                error: None,
            }
        }
        Err(reason) => ParsedTurn {
            content: text.to_owned(),
            error: Some(reason),
            ..ParsedTurn::default()
        },
    }
}

type PResult<T> = Result<T, String>;

/// Parses after the open tag; returns the calls and the end of the close tag.
fn parse_block(text: &str, mut p: usize, sx: Syntax) -> PResult<(Vec<ParsedToolCall>, usize)> {
    let mut calls = Vec::new();
    loop {
        p = skip_ws(text, p);
        let rest = &text[p..];
        if rest.starts_with(sx.calls_close) {
            return Ok((calls, p + sx.calls_close.len()));
        }
        if !rest.starts_with(sx.invoke_open) {
            return Err(if rest.is_empty() {
                "unterminated tool call".to_owned()
            } else {
                format!("unexpected text in tool-call block at byte {p}")
            });
        }
        let tag_end = p + rest.find('>').ok_or("unterminated invoke tag")?;
        let name = tag_attr(&text[p..=tag_end], "name").ok_or("invoke without name")?;
        p = tag_end + 1;
        let mut params = Vec::new();
        loop {
            p = skip_ws(text, p);
            let rest = &text[p..];
            if rest.starts_with(sx.invoke_close) {
                p += sx.invoke_close.len();
                break;
            }
            if !rest.starts_with(sx.param_open) {
                return Err(format!("unexpected text in invoke at byte {p}"));
            }
            let tag_end = p + rest.find('>').ok_or("unterminated parameter tag")?;
            let tag = &text[p..=tag_end];
            let pname = tag_attr(tag, "name").ok_or("parameter without name")?;
            let string_attr = tag_attr(tag, "string");
            let value_start = tag_end + 1;
            if string_attr.is_none()
                && text[skip_ws(text, value_start)..].starts_with(sx.param_open)
            {
                let (inner, after) = parse_nested(text, value_start, sx)?;
                params.push(DsmlParam {
                    name: pname,
                    value: DsmlValue::Object(inner),
                });
                p = skip_ws(text, after);
                if text[p..].starts_with(sx.param_close) {
                    p += sx.param_close.len();
                }
                continue;
            }
            let (value, after) = leaf_value(text, value_start, string_attr.as_deref(), sx)?;
            params.push(DsmlParam { name: pname, value });
            p = after;
        }
        calls.push(ParsedToolCall::new(name, params));
    }
}

/// The value of a parameter whose tag ended at `value_start`; returns it and the position after
/// its close tag.
fn leaf_value(
    text: &str,
    value_start: usize,
    string_attr: Option<&str>,
    sx: Syntax,
) -> PResult<(DsmlValue, usize)> {
    let len = text[value_start..]
        .find(sx.param_close)
        .ok_or("unterminated parameter value")?;
    let raw = &text[value_start..value_start + len];
    let value = if string_attr.is_none_or(|s| s == "true") {
        DsmlValue::String(unescape_entities(raw))
    } else {
        let min = minify_json(raw);
        DsmlValue::Json(if min.is_empty() { "null".into() } else { min })
    };
    Ok((value, value_start + len + sx.param_close.len()))
}

/// Consecutive leaf parameters (loose nested object); returns them and the position after the
/// last one's trailing whitespace.
fn parse_nested(text: &str, mut p: usize, sx: Syntax) -> PResult<(Vec<DsmlParam>, usize)> {
    let mut inner = Vec::new();
    loop {
        p = skip_ws(text, p);
        let rest = &text[p..];
        if !rest.starts_with(sx.param_open) {
            return Ok((inner, p));
        }
        let tag_end = p + rest.find('>').ok_or("unterminated parameter tag")?;
        let tag = &text[p..=tag_end];
        let name = tag_attr(tag, "name").ok_or("parameter without name")?;
        let (value, after) = leaf_value(text, tag_end + 1, tag_attr(tag, "string").as_deref(), sx)?;
        inner.push(DsmlParam { name, value });
        p = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_recovery() {
        let t = "I will look.\n\n\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">ls &amp;&amp; pwd</｜DSML｜parameter>\n<｜DSML｜parameter name=\"t\" string=\"false\">{ \"a\": [1, 2] }</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
        let p = parse_generated(t, false);
        assert_eq!(p.content, "I will look.");
        assert_eq!(p.reasoning, None);
        assert_eq!(p.error, None);
        assert_eq!(p.tool_calls.len(), 1);
        assert_eq!(
            p.tool_calls[0].arguments,
            "{\"command\": \"ls && pwd\", \"t\": {\"a\":[1,2]}}"
        );
        assert_eq!(
            p.tool_calls[0].wire_arguments(),
            "{\"command\":\"ls && pwd\",\"t\":{\"a\":[1,2]}}"
        );
        assert!(p
            .raw_dsml
            .as_deref()
            .unwrap()
            .starts_with("\n\n<｜DSML｜tool_calls>"));

        let nested = "<think>r</think>\n\n<tool_calls>\n<invoke name=\"edit\">\n<parameter name=\"edits\">\n<parameter name=\"oldText\">a</parameter>\n<parameter name=\"n\" string=\"false\"></parameter>\n</parameter>\n</invoke>\n</tool_calls>";
        let p = parse_generated(nested, true);
        assert_eq!(p.reasoning.as_deref(), Some("r"));
        assert_eq!(
            p.tool_calls[0].arguments,
            "{\"edits\": {\"oldText\":\"a\",\"n\":null}}"
        );

        let bad = "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"a\">\n<｜DSML｜parameter name=\"c\" string=\"true\">v";
        let p = parse_generated(bad, false);
        assert_eq!(p.content, bad);
        assert!(p.error.is_some());
        assert!(p.tool_calls.is_empty());

        let unclosed = "thinking forever <｜DSML｜tool_calls>";
        let p = parse_generated(unclosed, true);
        assert_eq!((p.reasoning, p.content.as_str()), (None, unclosed));
    }
}
