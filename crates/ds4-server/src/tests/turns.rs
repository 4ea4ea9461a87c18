//! One generated turn: parsing, finish reasons, holds (§3.2–3.6, §5.9).

use ds4_text::dsml::StreamEvent;

use crate::job::{Event, FinishReason};
use crate::testutil::{run_turn, Turn};

fn deltas(events: &[Event]) -> Vec<StreamEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Delta(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn content_of(events: &[Event]) -> String {
    deltas(events)
        .into_iter()
        .filter_map(|d| match d {
            StreamEvent::Content(s) => Some(s),
            _ => None,
        })
        .collect()
}

const CALL: &str = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">echo partial done</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

#[test]
fn tool_separator_whitespace_is_not_content() {
    // §9 item 67.
    let text = format!("I will inspect the files.\n\n{CALL}");
    let (events, r) = run_turn(&Turn {
        tools: true,
        ..Turn::new(&text)
    });
    assert_eq!(r.content, "I will inspect the files.");
    assert_eq!(content_of(&events), "I will inspect the files.");
    assert_eq!(r.finish, FinishReason::ToolCalls);
    assert_eq!(r.calls.len(), 1);
    assert_eq!(r.calls[0].arguments, r#"{"command":"echo partial done"}"#);
    assert!(r
        .raw_dsml
        .as_deref()
        .unwrap()
        .starts_with("\n\n<｜DSML｜tool_calls>"));
}

#[test]
fn generation_stops_right_after_the_close_tag() {
    // §3.4: the close tag ends the turn; nothing after it is read.
    let text = format!("ok{CALL}<｜end▁of▁sentence｜>more text");
    let (_, r) = run_turn(&Turn {
        tools: true,
        ..Turn::new(&text)
    });
    assert_eq!(r.finish, FinishReason::ToolCalls);
    assert!(r.text.ends_with("</｜DSML｜tool_calls>"), "{}", r.text);
}

#[test]
fn tool_parse_failure_returns_recoverable_finish() {
    // §9 item 41.
    let text = "Trying.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let (_, r) = run_turn(&Turn {
        tools: true,
        ..Turn::new(text)
    });
    assert!(r.recovered);
    assert_eq!(r.finish, FinishReason::Stop);
    assert_eq!(r.content, text);
    assert!(r.calls.is_empty() && r.reasoning.is_none());
    assert!(r.error.as_deref().unwrap().contains("invalid tool call"));
}

#[test]
fn unterminated_tool_call_is_an_error() {
    let text = "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n";
    let (_, r) = run_turn(&Turn {
        tools: true,
        ..Turn::new(text)
    });
    assert_eq!(r.finish, FinishReason::Error);
    assert_eq!(r.error.as_deref(), Some("unterminated tool call"));
}

#[test]
fn thinking_dsml_is_not_executable_before_think_close() {
    // §9 item 42.
    let text = format!("maybe {CALL} no</think>Final answer.");
    let (events, r) = run_turn(&Turn {
        thinking: true,
        tools: true,
        ..Turn::new(&text)
    });
    assert_eq!(r.content, "Final answer.");
    assert!(r.calls.is_empty());
    assert_eq!(r.finish, FinishReason::Stop);
    assert!(r.reasoning.unwrap().contains("DSML"));
    assert_eq!(content_of(&events), "Final answer.");
}

#[test]
fn thinking_dsml_after_think_close_is_executable() {
    // §9 item 43.
    let text = "need a tool</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">pwd</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let (_, r) = run_turn(&Turn {
        thinking: true,
        tools: true,
        ..Turn::new(text)
    });
    assert_eq!(r.reasoning.as_deref(), Some("need a tool"));
    assert_eq!(r.calls[0].arguments, r#"{"command":"pwd"}"#);
    assert!(r.thinking_closed);
}

#[test]
fn never_closed_thinking_is_reasoning() {
    let (events, r) = run_turn(&Turn {
        thinking: true,
        eos: false,
        ..Turn::new("still thinking about it")
    });
    assert_eq!(r.reasoning.as_deref(), Some("still thinking about it"));
    assert_eq!(r.content, "");
    assert_eq!(r.finish, FinishReason::Length);
    assert!(!r.thinking_closed);
    assert!(content_of(&events).is_empty());
}

#[test]
fn stop_sequences_truncate_and_hold() {
    // §9 items 69-70 at the turn level: the stop text is never streamed.
    let (events, r) = run_turn(&Turn {
        stops: vec!["STOP".into(), "</END>".into()],
        ..Turn::new("alpha beta STOP gamma")
    });
    assert_eq!(r.content, "alpha beta ");
    assert_eq!(r.finish, FinishReason::Stop);
    assert_eq!(content_of(&events), "alpha beta ");
    let (events, _) = run_turn(&Turn {
        stops: vec!["</END>".into()],
        ..Turn::new("a </EN b")
    });
    assert_eq!(content_of(&events), "a </EN b");
}

#[test]
fn streaming_holds_partial_utf8() {
    // §9 item 38: byte tokens of a 4-byte emoji are held until complete.
    let (events, r) = run_turn(&Turn::new("A 🚀 中文"));
    assert_eq!(r.content, "A 🚀 中文");
    for d in deltas(&events) {
        if let StreamEvent::Content(s) = d {
            assert!(!s.contains('\u{FFFD}'));
        }
    }
}

#[test]
fn completions_stream_raw_text() {
    let (events, r) = run_turn(&Turn {
        parse: false,
        thinking: true,
        ..Turn::new("why</think>because")
    });
    assert_eq!(r.content, "why</think>because");
    assert_eq!(content_of(&events), "why</think>because");
}

#[test]
fn inactive_tools_leave_dsml_as_text() {
    let text = format!("x{CALL}");
    let (_, r) = run_turn(&Turn::new(&text));
    assert!(r.calls.is_empty());
    assert_eq!(r.finish, FinishReason::Stop);
    assert!(r.content.contains("DSML"));
}

#[test]
fn parse_short_dsml_syntax() {
    // §9 item 39: `<DSML｜…>` drift parses; reasoning and empty content.
    let text = "need a tool</think>\n\n<DSML｜tool_calls>\n<DSML｜invoke name=\"bash\">\n<DSML｜parameter name=\"description\" string=\"true\">list</DSML｜parameter>\n<DSML｜parameter name=\"command\" string=\"true\">ls</DSML｜parameter>\n</DSML｜invoke>\n</DSML｜tool_calls>";
    let (_, r) = run_turn(&Turn {
        thinking: true,
        tools: true,
        ..Turn::new(text)
    });
    assert_eq!(r.reasoning.as_deref(), Some("need a tool"));
    assert_eq!(r.content, "");
    assert_eq!(r.finish, FinishReason::ToolCalls);
    assert_eq!(
        r.calls[0].arguments,
        r#"{"description":"list","command":"ls"}"#
    );
}

#[test]
fn dsml_parser_recovers_loose_nested_parameters() {
    // §9 item 40.
    let text = "review done\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"edit\">\n<｜DSML｜parameter name=\"path\" string=\"true\">/private/tmp/tetris.c</｜DSML｜parameter>\n<｜DSML｜parameter name=\"edits\">\n<｜DSML｜parameter name=\"oldText\" string=\"true\">old &lt;text></｜DSML｜parameter>\n<｜DSML｜parameter name=\"newText\" string=\"true\">new text</｜DSML｜parameter>\n</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let (_, r) = run_turn(&Turn {
        tools: true,
        ..Turn::new(text)
    });
    assert_eq!(r.content, "review done");
    assert_eq!(
        r.calls[0].arguments,
        r#"{"path":"/private/tmp/tetris.c","edits":{"oldText":"old <text>","newText":"new text"}}"#
    );
}

#[test]
fn thinking_checkpoint_remember_gate() {
    // §9 item 75.
    use crate::job::{Kind, Think};
    use crate::worker::remember_thinking;
    let (_, ok) = run_turn(&Turn {
        thinking: true,
        ..Turn::new("plan</think>answer")
    });
    assert!(remember_thinking(
        Kind::Chat,
        Think::High,
        false,
        false,
        &ok
    ));
    assert!(remember_thinking(
        Kind::Anthropic,
        Think::Max,
        false,
        false,
        &ok
    ));
    assert!(!remember_thinking(
        Kind::Completion,
        Think::High,
        false,
        false,
        &ok
    ));
    assert!(!remember_thinking(
        Kind::Chat,
        Think::None,
        false,
        false,
        &ok
    ));
    assert!(!remember_thinking(
        Kind::Chat,
        Think::High,
        true,
        false,
        &ok
    ));
    assert!(!remember_thinking(
        Kind::Chat,
        Think::High,
        false,
        true,
        &ok
    ));
    let (_, open) = run_turn(&Turn {
        thinking: true,
        ..Turn::new("still planning")
    });
    assert!(!remember_thinking(
        Kind::Chat,
        Think::High,
        false,
        false,
        &open
    ));
    let (_, length) = run_turn(&Turn {
        thinking: true,
        eos: false,
        ..Turn::new("plan</think>answer")
    });
    assert!(!remember_thinking(
        Kind::Chat,
        Think::High,
        false,
        false,
        &length
    ));
    let (_, stopped) = run_turn(&Turn {
        thinking: true,
        stops: vec!["ans".into()],
        ..Turn::new("plan</think>answer")
    });
    assert!(stopped.stop_sequence);
    assert!(!remember_thinking(
        Kind::Chat,
        Think::High,
        false,
        false,
        &stopped
    ));
}
