//! SSE shapes of each protocol for scripted turns (§5.8, §9 items 25-38).

use serde_json::Value;

use crate::job::Usage;
use crate::protocol::anthropic::{body as anthropic_body, AnthropicStream};
use crate::protocol::chat::{body as chat_body, ChatStream};
use crate::protocol::responses::ResponsesStream;
use crate::protocol::Meta;
use crate::testutil::{data_lines, run_turn, sse, Turn};

const TOOL_TURN: &str = "need a tool</think>Hello.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">echo partial done</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

fn meta() -> Meta {
    Meta {
        id: "chatcmpl-7".into(),
        created: 1,
        model: "deepseek-v4-flash".into(),
    }
}

fn usage() -> Usage {
    Usage {
        prompt: 10,
        cached: 7,
        completion: 2,
    }
}

fn tool_turn(prefix: &'static str) -> Turn<'static> {
    Turn {
        thinking: true,
        tools: true,
        prefix,
        ..Turn::new(TOOL_TURN)
    }
}

fn pos(hay: &str, needle: &str) -> usize {
    hay.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in stream:\n{hay}"))
}

#[test]
fn openai_tool_stream_sends_incremental_text() {
    // §9 item 28 (and 32: one id per call, arguments streamed in pieces).
    let (events, r) = run_turn(&tool_turn("call_"));
    let s = sse(ChatStream::new(meta(), true), usage(), events);
    let order = [
        "\"role\":\"assistant\"",
        "\"reasoning_content\":\"need",
        "\"content\":\"Hello",
        "\"tool_calls\"",
        "\"finish_reason\":\"tool_calls\"",
        "data: [DONE]",
    ];
    let at: Vec<usize> = order.iter().map(|n| pos(&s, n)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{s}");
    assert!(!s.contains("<think>") && !s.contains("</think>") && !s.contains("DSML"));
    assert_eq!(s.matches("\"id\":\"call_").count(), 1);
    // The argument deltas reassemble to the compact object.
    let args: String = data_lines(&s)
        .iter()
        .filter_map(|v| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(args, r#"{"command":"echo partial done"}"#);
    assert!(
        s.matches("\"arguments\":").count() > 3,
        "arguments are streamed in pieces"
    );
    assert_eq!(r.calls[0].id.len(), 5 + 32);
}

#[test]
fn openai_stream_usage_reports_cache_details() {
    // §9 item 29.
    let (events, _) = run_turn(&Turn::new("hi"));
    let s = sse(ChatStream::new(meta(), true), usage(), events);
    let lines = data_lines(&s);
    let u = &lines.last().unwrap()["usage"];
    assert_eq!(u["prompt_tokens"], 10);
    assert_eq!(u["completion_tokens"], 2);
    assert_eq!(u["total_tokens"], 12);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 7);
    assert_eq!(u["prompt_tokens_details"]["cache_write_tokens"], 3);
    assert!(s.trim_end().ends_with("data: [DONE]"));
    assert!(lines.last().unwrap()["choices"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn openai_chat_stream_splits_reasoning_without_tools() {
    // §9 item 31: no `</think>` on the wire, reasoning then content.
    let (events, _) = run_turn(&Turn {
        thinking: true,
        ..Turn::new("We need to generate a title</think>Free disk space check")
    });
    let s = sse(ChatStream::new(meta(), false), usage(), events);
    let mut reasoning = String::new();
    let mut content = String::new();
    for v in data_lines(&s) {
        let d = &v["choices"][0]["delta"];
        reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        content.push_str(d["content"].as_str().unwrap_or(""));
    }
    assert_eq!(reasoning, "We need to generate a title");
    assert_eq!(content, "Free disk space check");
    assert!(!s.contains("think>"));
    assert!(!s.contains("\"usage\""), "usage only when asked for");
}

#[test]
fn openai_tool_stream_holds_partial_dsml_entities_and_utf8() {
    // §9 items 35, 36: no `&amp` and no U+FFFD on the wire.
    let text = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">echo &amp; 🚀 done</｜DSML｜parameter>\n<｜DSML｜parameter name=\"edits\" string=\"false\">[1, 2, 3]</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let (events, r) = run_turn(&Turn {
        tools: true,
        ..Turn::new(text)
    });
    let s = sse(ChatStream::new(meta(), false), usage(), events);
    assert!(!s.contains("&amp") && !s.contains('\u{FFFD}'));
    let args: String = data_lines(&s)
        .iter()
        .filter_map(|v| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(args, r#"{"command":"echo & 🚀 done","edits":[1, 2, 3]}"#);
    assert_eq!(
        r.calls[0].arguments,
        r#"{"command":"echo & 🚀 done","edits":[1,2,3]}"#
    );
}

#[test]
fn openai_tool_stream_handles_multiple_calls() {
    // §9 item 37.
    let text = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"read\">\n<｜DSML｜parameter name=\"path\" string=\"true\">/a</｜DSML｜parameter>\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">ls</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let (events, r) = run_turn(&Turn {
        tools: true,
        ..Turn::new(text)
    });
    let s = sse(ChatStream::new(meta(), false), usage(), events);
    assert_eq!(s.matches("\"id\":\"call_").count(), 2);
    assert!(pos(&s, "\"name\":\"read\"") < pos(&s, "\"name\":\"bash\""));
    assert_eq!(r.calls.len(), 2);
    let body = chat_body(&meta(), &r);
    let text = crate::json::to_text(&body);
    assert!(
        text.contains(r#""arguments":"{\"path\":\"/a\"}""#),
        "{text}"
    );
}

#[test]
fn anthropic_live_stream_sends_incremental_blocks() {
    // §9 items 25, 27.
    let (events, r) = run_turn(&tool_turn("toolu_"));
    let s = sse(AnthropicStream::new(meta()), usage(), events);
    let order = [
        "event: message_start",
        "\"thinking\":\"need",
        "\"signature_delta\"",
        "\"text\":\"Hello",
        "\"type\":\"tool_use\"",
        "\"partial_json\":\"{\"",
        "event: message_stop",
    ];
    let at: Vec<usize> = order.iter().map(|n| pos(&s, n)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{s}");
    assert!(!s.contains("DSML") && !s.contains("think>"));
    assert_eq!(s.matches("\"type\":\"tool_use\"").count(), 1);
    assert!(s.contains(&format!("\"id\":\"{}\"", r.calls[0].id)));
    assert!(r.calls[0].id.starts_with("toolu_"));
    let partial: String = data_lines(&s)
        .iter()
        .filter_map(|v| v["delta"]["partial_json"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(partial, r#"{"command":"echo partial done"}"#);
    // Block indices count up from 0.
    let idx: Vec<i64> = data_lines(&s)
        .iter()
        .filter(|v| v["type"] == "content_block_start")
        .map(|v| v["index"].as_i64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2]);
    let stop = data_lines(&s)
        .into_iter()
        .find(|v| v["type"] == "message_delta")
        .unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");
}

#[test]
fn anthropic_usage_reports_cache_details() {
    // §9 item 26.
    let (events, r) = run_turn(&Turn::new("hi"));
    let s = sse(AnthropicStream::new(meta()), usage(), events);
    let start = &data_lines(&s)[0];
    let u = &start["message"]["usage"];
    assert_eq!(u["input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], 7);
    assert_eq!(u["cache_creation_input_tokens"], 3);
    let body: Value =
        serde_json::from_str(&crate::json::to_text(&anthropic_body(&meta(), &r))).unwrap();
    assert_eq!(body["usage"]["output_tokens"], 2);
    assert_eq!(body["usage"]["cache_read_input_tokens"], 7);
    assert_eq!(body["usage"]["cache_creation_input_tokens"], 3);
}

#[test]
fn anthropic_thinking_and_tool_args_preserve_call_order() {
    // §9 item 20.
    let text = "plan</think>Sure.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"description\" string=\"true\">list</｜DSML｜parameter>\n<｜DSML｜parameter name=\"command\" string=\"true\">ls</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let (_, r) = run_turn(&Turn {
        thinking: true,
        tools: true,
        prefix: "toolu_",
        ..Turn::new(text)
    });
    let t = crate::json::to_text(&anthropic_body(&meta(), &r));
    assert!(pos(&t, "\"type\":\"thinking\"") < pos(&t, "\"type\":\"text\""));
    assert!(pos(&t, "\"type\":\"text\"") < pos(&t, "\"type\":\"tool_use\""));
    assert!(
        t.contains(r#""input":{"description":"list","command":"ls"}"#),
        "{t}"
    );
    assert!(t.contains(r#""signature":"chatcmpl-7""#));
}

#[test]
fn responses_usage_and_lifecycle() {
    // §9 item 30 and the §5.8.3 lifecycle.
    let (events, _) = run_turn(&tool_turn("call_"));
    let s = sse(
        ResponsesStream::new(meta(), false, Vec::new()),
        usage(),
        events,
    );
    assert!(
        !s.contains("event:"),
        "Responses events have no event lines"
    );
    assert!(!s.contains("[DONE]"));
    let lines = data_lines(&s);
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["sequence_number"], i as u64);
    }
    assert!(s.starts_with("data: {\"type\":\"response.created\",\"sequence_number\":0"));
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    let u = &last["response"]["usage"];
    assert_eq!(u["input_tokens"], 10);
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 7);
    assert_eq!(u["input_tokens_details"]["cache_write_tokens"], 3);
    assert_eq!(u["output_tokens"], 2);
    assert_eq!(u["total_tokens"], 12);
    let kinds: Vec<&str> = last["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["message", "function_call"]);
    assert!(!s.contains("reasoning_summary"), "summary not asked for");
}

#[test]
fn responses_namespace_tool_restores_wire_namespace() {
    // §9 item 13.
    use crate::protocol::responses::Namespaced;
    let text = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"mcp__perplexity__perplexity_search\">\n<｜DSML｜parameter name=\"query\" string=\"true\">x</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let (events, _) = run_turn(&Turn {
        tools: true,
        ..Turn::new(text)
    });
    let ns = vec![Namespaced {
        joined: "mcp__perplexity__perplexity_search".into(),
        namespace: "mcp__perplexity__".into(),
        name: "perplexity_search".into(),
    }];
    let s = sse(ResponsesStream::new(meta(), true, ns), usage(), events);
    assert!(
        s.contains(r#""name":"perplexity_search","namespace":"mcp__perplexity__""#),
        "{s}"
    );
    assert!(!s.contains("\"name\":\"mcp__perplexity__perplexity_search\""));
}
