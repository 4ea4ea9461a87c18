//! Property tests: tokenizer round trips, incremental detokenization, render → tokenize →
//! detokenize, and streaming DSML projection versus the one-shot parse.

mod common;

use common::tokenizer;
use ds4_text::chat::{
    render, ChatRequest, Message, ReasoningEffort, RenderOptions, Role, ThinkingMode, ToolCall,
};
use ds4_text::dsml::{
    coalesce, minify_json, parse_generated, DsmlProjector, ProjectorOptions, StreamEvent, Syntax,
    SYNTAXES,
};
use ds4_text::pyjson::PyValue;
use ds4_text::tokenizer::pretok;
use ds4_text::EncodeMode;
use proptest::prelude::*;

/// Text mixing the things tokenizers and parsers trip over.
fn messy_text() -> impl Strategy<Value = String> {
    let frag = prop_oneof![
        "[a-zA-Z]{1,6}",
        "[ \t\n\r]{1,4}",
        "[0-9]{1,5}",
        "[.,;:!?<>&\"'/\\\\(){}\\[\\]=+-]{1,3}",
        "[\u{a0}\u{3000}\u{2028}\u{85}\u{b}\u{c}]",
        "[é漢字かなカナ・ー🚀👍🏽\u{301}\u{200d}]{1,3}",
        "\\PC{1,3}",
        Just("<｜begin▁of▁sentence｜>".to_owned()),
        Just("<｜end▁of▁sentence｜>".to_owned()),
        Just("<｜User｜>".to_owned()),
        Just("<｜Assistant｜>".to_owned()),
        Just("<think>".to_owned()),
        Just("</think>".to_owned()),
        Just("｜DSML｜".to_owned()),
        Just("<｜latest_reminder｜>".to_owned()),
        Just("<｜place▁holder▁no▁7｜>".to_owned()),
        Just("<|EOT|>".to_owned()),
        Just("ĠĊ".to_owned()),
    ];
    prop::collection::vec(frag, 0..12).prop_map(|v| v.concat())
}

fn char_cuts(text: &str, cuts: &[usize]) -> Vec<usize> {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let mut c: Vec<usize> = cuts.iter().map(|&x| bounds[x % bounds.len()]).collect();
    c.sort_unstable();
    c.dedup();
    c
}

fn chunks<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts {
        out.push(&text[last..c]);
        last = c;
    }
    out.push(&text[last..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pretokenizer_matches_reference(text in messy_text()) {
        prop_assert_eq!(pretok::split_vec(&text), pretok::reference_split(&text));
    }

    #[test]
    fn encode_decode_roundtrip(text in messy_text()) {
        let tok = tokenizer();
        for mode in [EncodeMode::Hf, EncodeMode::Plain, EncodeMode::Ds4] {
            prop_assert_eq!(tok.decode(&tok.encode_with(&text, mode)), text.as_bytes());
        }
    }

    #[test]
    fn incremental_detokenizer(ids in prop::collection::vec(
        prop_oneof![0u32..129_280, 0u32..256, 128_000u32..129_280], 0..40)) {
        let tok = tokenizer();
        let mut d = tok.detokenizer();
        let mut out = String::new();
        for &id in &ids {
            let piece = d.push(id);
            // Emitted text is final: it must be a prefix of the lossy decode of everything.
            out.push_str(&piece);
            prop_assert!(d.pending().len() < 4);
        }
        out.push_str(&d.finish());
        prop_assert_eq!(out, tok.decode_lossy(&ids));
    }

    #[test]
    fn incremental_detokenizer_prefix_property(ids in prop::collection::vec(0u32..129_280, 1..30)) {
        // What has been emitted never changes: it is a prefix of the lossy decode of every
        // continuation, in particular of the whole sequence.
        let tok = tokenizer();
        let whole = tok.decode_lossy(&ids);
        let mut d = tok.detokenizer();
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&d.push(id));
            prop_assert!(whole.starts_with(&out));
        }
    }
}

fn msg_strategy() -> impl Strategy<Value = Message> {
    let role = prop_oneof![
        Just(Role::System),
        Just(Role::User),
        Just(Role::User),
        Just(Role::Assistant),
        Just(Role::Assistant),
        Just(Role::Tool),
        Just(Role::Developer),
        Just(Role::LatestReminder),
    ];
    let args = prop_oneof![
        Just("{\"a\": 1, \"b\": \"x<y>&z\"}".to_owned()),
        Just("{\"f\": 1e-7, \"n\": null, \"l\": [1, {\"k\": \"é\"}]}".to_owned()),
        Just("not json".to_owned()),
        Just("{}".to_owned()),
        messy_text().prop_map(|t| format!("{{\"cmd\": {}}}", serde_json::to_string(&t).unwrap())),
    ];
    let call = (
        prop_oneof![Just("bash".to_owned()), messy_text()],
        args,
        prop::option::of(0u8..4),
    )
        .prop_map(|(name, arguments, id)| ToolCall {
            id: id.map(|i| format!("c{i}")),
            name,
            arguments,
        });
    (
        role,
        prop::option::of(messy_text()),
        prop::option::of(messy_text()),
        prop::collection::vec(call, 0..3),
        prop::option::of(0u8..4),
    )
        .prop_map(|(role, content, reasoning, calls, tid)| {
            let mut m = Message::new(role.clone(), content.as_deref());
            if role == Role::Developer && m.content.is_none() {
                m = Message::new(role.clone(), Some("dev"));
            }
            if role == Role::Assistant {
                m.reasoning_content = reasoning;
                m.tool_calls = calls;
            }
            if role == Role::Tool {
                m.tool_call_id = tid.map(|i| format!("c{i}"));
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn render_tokenize_detokenize(
        messages in prop::collection::vec(msg_strategy(), 0..7),
        thinking in any::<bool>(),
        max in any::<bool>(),
        drop in any::<bool>(),
        tools in any::<bool>(),
    ) {
        let tok = tokenizer();
        let tool = PyValue::parse(r#"{"type": "function", "function": {"name": "bash", "description": "Run <cmd> & co", "parameters": {"type": "object"}}}"#).unwrap();
        let req = ChatRequest {
            messages,
            tools: tools.then(|| vec![tool]),
            context: Vec::new(),
            options: RenderOptions {
                thinking_mode: if thinking { ThinkingMode::Thinking } else { ThinkingMode::Chat },
                reasoning_effort: max.then_some(ReasoningEffort::Max),
                drop_thinking: drop,
                ..RenderOptions::default()
            },
        };
        let Ok(prompt) = render(&req) else { return Ok(()); };
        let text = prompt.text().as_bytes();
        for mode in [EncodeMode::Hf, EncodeMode::Ds4, EncodeMode::Plain] {
            prop_assert_eq!(tok.decode(&tok.encode_with(prompt.text(), mode)), text);
            prop_assert_eq!(tok.decode(&prompt.tokenize(tok, mode)), text);
        }
        // Incremental detokenization of the prompt gives it back too.
        let mut d = tok.detokenizer();
        let mut out = String::new();
        for id in prompt.tokenize(tok, EncodeMode::Hf) {
            out.push_str(&d.push(id));
        }
        out.push_str(&d.finish());
        prop_assert_eq!(out.as_str(), prompt.text());
    }
}

// ---------------------------------------------------------------------------------------------
// DSML streaming

#[derive(Debug, Clone)]
enum GenValue {
    Str(String),
    Json(String),
    Nested(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
struct GenCall {
    name: String,
    params: Vec<(String, GenValue)>,
}

#[derive(Debug, Clone)]
struct GenTurn {
    thinking: bool,
    reasoning: String,
    content: String,
    sep: String,
    syntax: usize,
    calls: Vec<GenCall>,
    ws: Vec<String>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

fn plain_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 \t\n.,!?&\"'é漢🚀{}:]{0,20}"
}

fn gen_turn() -> impl Strategy<Value = GenTurn> {
    let json = prop_oneof![
        Just("1".to_owned()),
        Just("-2.5e3".to_owned()),
        Just("true".to_owned()),
        Just("null".to_owned()),
        Just(" [1, 2,\n 3] ".to_owned()),
        Just("{\"a\": \"b c\", \"d\": [ ]}".to_owned()),
        Just("\"quoted \\\" str\"".to_owned()),
        Just("".to_owned()),
    ];
    let value = prop_oneof![
        3 => "[a-z <>&\"'\n\té🚀/\\\\]{0,24}".prop_map(GenValue::Str),
        2 => json.prop_map(GenValue::Json),
        1 => prop::collection::vec(("[a-zA-Z]{1,6}", "[a-z <>&\"\n]{0,10}"), 1..3).prop_map(GenValue::Nested),
    ];
    let call = (
        "[a-z_]{1,8}",
        prop::collection::vec(("[a-zA-Z_\"é]{1,6}", value), 0..4),
    )
        .prop_map(|(name, params)| GenCall { name, params });
    (
        any::<bool>(),
        plain_text(),
        plain_text(),
        prop_oneof![
            Just("\n\n".to_owned()),
            Just(String::new()),
            Just(" \n ".to_owned())
        ],
        0usize..3,
        prop::collection::vec(call, 0..3),
        prop::collection::vec(
            prop_oneof![
                Just("\n".to_owned()),
                Just(String::new()),
                Just(" \n\t".to_owned())
            ],
            8,
        ),
    )
        .prop_map(
            |(thinking, reasoning, content, sep, syntax, calls, ws)| GenTurn {
                thinking,
                reasoning,
                content,
                sep,
                syntax,
                calls,
                ws,
            },
        )
}

impl GenTurn {
    fn text(&self) -> String {
        let sx: Syntax = SYNTAXES[self.syntax];
        let w = |i: usize| self.ws[i % self.ws.len()].as_str();
        let mut t = String::new();
        if self.thinking {
            t.push_str(&self.reasoning);
            t.push_str("</think>");
        }
        t.push_str(&self.content);
        if self.calls.is_empty() {
            return t;
        }
        t.push_str(&self.sep);
        t.push_str(sx.calls_open);
        t.push_str(w(0));
        for (ci, c) in self.calls.iter().enumerate() {
            t.push_str(&format!("{} name=\"{}\">", sx.invoke_open, esc(&c.name)));
            t.push_str(w(ci + 1));
            for (pi, (k, v)) in c.params.iter().enumerate() {
                match v {
                    GenValue::Str(s) => t.push_str(&format!(
                        "{} name=\"{}\" string=\"true\">{}{}",
                        sx.param_open,
                        esc(k),
                        esc(s),
                        sx.param_close
                    )),
                    GenValue::Json(j) => t.push_str(&format!(
                        "{} name=\"{}\" string=\"false\">{}{}",
                        sx.param_open,
                        esc(k),
                        j,
                        sx.param_close
                    )),
                    GenValue::Nested(leaves) => {
                        t.push_str(&format!("{} name=\"{}\">", sx.param_open, esc(k)));
                        for (lk, lv) in leaves {
                            t.push_str(w(pi + 2));
                            t.push_str(&format!(
                                "{} name=\"{}\">{}{}",
                                sx.param_open,
                                esc(lk),
                                esc(lv),
                                sx.param_close
                            ));
                        }
                        t.push_str(w(pi + 3));
                        t.push_str(sx.param_close);
                    }
                }
                t.push_str(w(ci + pi + 4));
            }
            t.push_str(sx.invoke_close);
            t.push_str(w(ci + 5));
        }
        t.push_str(sx.calls_close);
        t
    }

    fn expected_args(c: &GenCall) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in c.params.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k).unwrap());
            out.push(':');
            match v {
                GenValue::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
                GenValue::Json(j) if minify_json(j).is_empty() => out.push_str("null"),
                GenValue::Json(j) => out.push_str(&minify_json(j)),
                GenValue::Nested(leaves) => {
                    out.push('{');
                    for (i, (lk, lv)) in leaves.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&serde_json::to_string(lk).unwrap());
                        out.push(':');
                        out.push_str(&serde_json::to_string(lv).unwrap());
                    }
                    out.push('}');
                }
            }
        }
        out.push('}');
        out
    }
}

fn project(
    text: &str,
    chunks: &[&str],
    opts: ProjectorOptions,
) -> (Vec<StreamEvent>, ds4_text::dsml::StreamOutcome) {
    let mut p = DsmlProjector::new(opts);
    let mut events = Vec::new();
    for c in chunks {
        events.extend(p.push(c));
    }
    assert_eq!(p.text(), text);
    let outcome = p.finish();
    events.extend(outcome.events.clone());
    (coalesce(events), outcome)
}

/// Checks one chunking against the single-chunk reference and the one-shot parse.
fn check_split(text: &str, pieces: &[&str], opts: ProjectorOptions) -> Result<(), TestCaseError> {
    let (reference, _) = project(text, &[text], opts);
    let (events, outcome) = project(text, pieces, opts);
    prop_assert_eq!(&events, &reference, "chunks {:?}", pieces);
    prop_assert_eq!(outcome.turn, parse_generated(text, opts.thinking));
    Ok(())
}

/// Streamed text per kind, and per call (name, concatenated argument deltas).
fn collect(events: &[StreamEvent]) -> (String, String, Vec<(String, String)>) {
    let (mut r, mut c, mut calls) = (String::new(), String::new(), Vec::<(String, String)>::new());
    for e in events {
        match e {
            StreamEvent::Reasoning(s) => r.push_str(s),
            StreamEvent::Content(s) => c.push_str(s),
            StreamEvent::ToolCallStart { index, name, .. } => {
                assert_eq!(*index, calls.len());
                calls.push((name.clone(), String::new()));
            }
            StreamEvent::ToolCallArguments { index, delta } => calls[*index].1.push_str(delta),
            StreamEvent::ToolCallEnd { .. } => {}
        }
    }
    (r, c, calls)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stream_well_formed_turns(turn in gen_turn(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let text = turn.text();
        let opts = ProjectorOptions { thinking: turn.thinking, tools: true };
        let cuts = char_cuts(&text, &cuts);
        check_split(&text, &chunks(&text, &cuts), opts)?;

        // The one-shot parse recovers what was generated ...
        let parsed = parse_generated(&text, turn.thinking);
        prop_assert_eq!(parsed.error.as_deref(), None, "{:?}", text);
        let content = if turn.calls.is_empty() {
            turn.content.as_str()
        } else {
            turn.content.trim_end_matches([' ', '\t', '\n'])
        };
        prop_assert_eq!(parsed.content.as_str(), content);
        if turn.thinking {
            prop_assert_eq!(parsed.reasoning.as_deref(), Some(turn.reasoning.as_str()));
        }
        prop_assert_eq!(parsed.tool_calls.len(), turn.calls.len());
        for (p, g) in parsed.tool_calls.iter().zip(&turn.calls) {
            prop_assert_eq!(&p.name, &g.name);
            prop_assert_eq!(p.wire_arguments(), GenTurn::expected_args(g));
        }
        // ... and the stream agrees with it.
        let (events, outcome) = project(&text, &chunks(&text, &cuts), opts);
        let (r, c, calls) = collect(&events);
        if turn.thinking {
            prop_assert_eq!(r, turn.reasoning.clone());
        }
        prop_assert_eq!(c.as_str(), content);
        prop_assert_eq!(calls.len(), parsed.tool_calls.len());
        prop_assert_eq!(outcome.streamed_calls, parsed.tool_calls.len());
        prop_assert_eq!(outcome.closed_calls, parsed.tool_calls.len());
        prop_assert_eq!(outcome.call_ids.len(), parsed.tool_calls.len());
        for ((name, args), p) in calls.iter().zip(&parsed.tool_calls) {
            prop_assert_eq!(name, &p.name);
            prop_assert_eq!(minify_json(args), p.wire_arguments());
        }
    }

    #[test]
    fn stream_arbitrary_text(
        frags in prop::collection::vec(prop_oneof![
            messy_text(),
            Just("<｜DSML｜tool_calls>".to_owned()),
            Just("<DSML｜tool_calls>".to_owned()),
            Just("<tool_calls>".to_owned()),
            Just("</｜DSML｜tool_calls>".to_owned()),
            Just("<｜DSML｜invoke name=\"a\">".to_owned()),
            Just("<invoke name=\"b&amp;\">".to_owned()),
            Just("</｜DSML｜invoke>".to_owned()),
            Just("</invoke>".to_owned()),
            Just("<｜DSML｜parameter name=\"k\" string=\"true\">".to_owned()),
            Just("<parameter name=\"k\" string=\"false\">".to_owned()),
            Just("<parameter name=\"n\">".to_owned()),
            Just("</｜DSML｜parameter>".to_owned()),
            Just("</parameter>".to_owned()),
            Just("&amp;&lt;&quot;&".to_owned()),
            Just("\n\n".to_owned()),
            Just("<".to_owned()),
        ], 0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
        thinking in any::<bool>(),
        tools in any::<bool>(),
    ) {
        let text = frags.concat();
        let cuts = char_cuts(&text, &cuts);
        check_split(&text, &chunks(&text, &cuts), ProjectorOptions { thinking, tools })?;
    }
}

/// Every single cut and every pair of cuts, and byte-by-byte feeding, on representative turns.
#[test]
fn stream_exhaustive_small_splits() {
    let texts = [
        (
            "<think>Plan: ls.</think>Ok.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"cmd\" string=\"true\">a&amp;b &lt;/｜DSML｜parameter></｜DSML｜parameter>\n<｜DSML｜parameter name=\"n\" string=\"false\">[1, 2]</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
            true,
        ),
        (
            "x<y & z\n\n<tool_calls><invoke name=\"e\"><parameter name=\"edits\"> <parameter name=\"a\">1</parameter></parameter></invoke></tool_calls>",
            false,
        ),
        ("no tools here < not a tag &amp;  ", false),
        ("<think>r</think>\n\n<DSML｜tool_calls>\n<DSML｜invoke name=\"f\">\n</DSML｜invoke>", true),
    ];
    for (text, thinking) in texts {
        let opts = ProjectorOptions {
            thinking,
            tools: true,
        };
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        let bytes: Vec<&str> = text
            .char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect();
        check_split(text, &bytes, opts).unwrap();
        for (ai, &a) in bounds.iter().enumerate() {
            check_split(text, &chunks(text, &[a]), opts).unwrap();
            for &b in &bounds[ai + 1..] {
                check_split(text, &chunks(text, &[a, b]), opts).unwrap();
            }
        }
    }
}

/// A turn whose block is cut off: the stream reports it unterminated and the parse falls back to
/// plain content with a reason.
#[test]
fn unterminated_block_is_reported() {
    let text = "Sure.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"c\" string=\"true\">ls";
    let mut p = DsmlProjector::new(ProjectorOptions {
        thinking: false,
        tools: true,
    });
    let events = p.push(text);
    assert!(p.in_tool_block());
    let out = p.finish();
    assert!(out.unterminated);
    assert_eq!(out.streamed_calls, 1);
    assert_eq!(out.turn.content, text);
    assert!(out.turn.error.is_some());
    assert_eq!(
        coalesce(events),
        vec![
            StreamEvent::Content("Sure.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_0".into(),
                name: "bash".into()
            },
            StreamEvent::ToolCallArguments {
                index: 0,
                delta: "{\"c\":\"ls".into()
            },
        ]
    );
}
