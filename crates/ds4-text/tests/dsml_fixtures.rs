//! Parse cases of fixtures/chat/dev_cases.jsonl (official `parse_message_from_completion_text`),
//! and the serving parser / projector on the same texts.

mod common;

use common::jsonl;
use ds4_text::chat::ThinkingMode;
use ds4_text::dsml::{parse_completion, parse_generated, DsmlProjector, ProjectorOptions};
use ds4_text::tokenizer::EOS;

#[test]
fn parse_cases() {
    let cases: Vec<_> = jsonl("dev_cases.jsonl")
        .into_iter()
        .filter(|c| c["kind"] == "parse")
        .collect();
    assert_eq!(cases.len(), 14);
    let mut errors = 0;
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let text = c["generated_text"].as_str().unwrap();
        let mode = ThinkingMode::parse(c["thinking_mode"].as_str().unwrap()).unwrap();
        let got = parse_completion(text, mode);
        if !c["error"].is_null() {
            errors += 1;
            let e = got.expect_err(name);
            assert_eq!(
                e.python_type(),
                c["error"]["type"].as_str().unwrap(),
                "{name}: {e}"
            );
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &c["parsed"];
        assert_eq!(got.content, want["content"].as_str().unwrap(), "{name}");
        assert_eq!(
            got.reasoning_content,
            want["reasoning_content"].as_str().unwrap(),
            "{name}"
        );
        let calls = want["tool_calls"].as_array().unwrap();
        assert_eq!(got.tool_calls.len(), calls.len(), "{name}");
        for (g, w) in got.tool_calls.iter().zip(calls) {
            assert_eq!(g.name, w["function"]["name"].as_str().unwrap(), "{name}");
            assert_eq!(
                g.arguments,
                w["function"]["arguments"].as_str().unwrap(),
                "{name}"
            );
        }

        // The serving parser sees the text without the EOS; on these well-formed turns it finds
        // the same calls (its arguments minify non-string values, so compare as JSON).
        let body = text.strip_suffix(EOS).unwrap();
        let thinking = mode == ThinkingMode::Thinking;
        let turn = parse_generated(body, thinking);
        assert_eq!(turn.error, None, "{name}");
        assert_eq!(turn.content, got.content, "{name}");
        if thinking {
            assert_eq!(
                turn.reasoning.as_deref(),
                Some(got.reasoning_content.as_str()),
                "{name}"
            );
        }
        assert_eq!(turn.tool_calls.len(), got.tool_calls.len(), "{name}");
        for (s, o) in turn.tool_calls.iter().zip(&got.tool_calls) {
            assert_eq!(s.name, o.name);
            let a: serde_json::Value = serde_json::from_str(&s.wire_arguments()).unwrap();
            let b: serde_json::Value = serde_json::from_str(&o.arguments).unwrap();
            assert_eq!(a, b, "{name}");
        }
        // Byte-by-byte streaming ends with the same parse.
        let mut p = DsmlProjector::new(ProjectorOptions {
            thinking,
            tools: true,
        });
        for ch in body.chars() {
            p.push(&ch.to_string());
        }
        assert_eq!(p.finish().turn, turn, "{name}");
    }
    assert_eq!(errors, 5);
}

/// Differential check against extra parse cases generated with the official encoder:
/// `DS4_TEXT_PARSE_CASES=cases.jsonl cargo test -p ds4-text -- --ignored`.
#[test]
#[ignore]
fn parse_extra_cases_from_env() {
    let Ok(path) = std::env::var("DS4_TEXT_PARSE_CASES") else {
        return;
    };
    let mut bad = Vec::new();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut n = 0;
    for line in text.lines() {
        n += 1;
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let mode = ThinkingMode::parse(c["thinking_mode"].as_str().unwrap()).unwrap();
        let got = parse_completion(c["generated_text"].as_str().unwrap(), mode);
        let ok = match (&got, c["error"]["type"].as_str()) {
            (Err(e), Some(t)) => e.python_type() == t,
            (Ok(g), None) => {
                let w = &c["parsed"];
                g.content == w["content"]
                    && g.reasoning_content == w["reasoning_content"]
                    && g.tool_calls.len() == w["tool_calls"].as_array().unwrap().len()
                    && g.tool_calls
                        .iter()
                        .zip(w["tool_calls"].as_array().unwrap())
                        .all(|(a, b)| {
                            a.name == b["function"]["name"]
                                && a.arguments == b["function"]["arguments"]
                        })
            }
            _ => false,
        };
        if !ok {
            bad.push(format!(
                "{:?}: got {got:?} want {} / {}",
                c["generated_text"], c["parsed"], c["error"]
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {n} differ:\n{}",
        bad.len(),
        bad[..bad.len().min(6)].join("\n")
    );
}
