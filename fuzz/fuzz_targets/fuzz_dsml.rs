//! DSML invariants on arbitrary text: no parser panics, the streaming projector gives the same
//! (coalesced) events for an input-chosen chunking as for one chunk, and its final turn is the
//! one-shot parse. Canonical rendering of arbitrary JSON tool calls never panics.
#![no_main]

use ds4_text::chat::ThinkingMode;
use ds4_text::dsml::{
    canonical_ds4, canonical_official, coalesce, parse_completion, parse_generated, DsmlProjector,
    JsonToolCall, ProjectorOptions, StreamEvent,
};
use libfuzzer_sys::fuzz_target;

fn project(
    chunks: &[&str],
    opts: ProjectorOptions,
) -> (Vec<StreamEvent>, ds4_text::dsml::ParsedTurn) {
    let mut p = DsmlProjector::new(opts);
    let mut events = Vec::new();
    for c in chunks {
        events.extend(p.push(c));
    }
    let out = p.finish();
    events.extend(out.events);
    (coalesce(events), out.turn)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let text: &str = &text;
    let opts = ProjectorOptions {
        thinking: flags & 1 != 0,
        tools: flags & 2 != 0,
    };

    let _ = parse_completion(text, ThinkingMode::Chat);
    let _ = parse_completion(text, ThinkingMode::Thinking);
    let turn = parse_generated(text, opts.thinking);
    if turn.error.is_some() {
        assert_eq!(turn.content, text);
        assert!(turn.tool_calls.is_empty());
    }
    for c in &turn.tool_calls {
        let _ = c.wire_arguments();
    }

    // Chunk boundaries: every char whose index is a multiple of a stride from the flags.
    let stride = 1 + (flags >> 2) as usize;
    let mut chunks = Vec::new();
    let mut last = 0;
    for (n, (i, _)) in text.char_indices().enumerate() {
        if i > last && n % stride == 0 {
            chunks.push(&text[last..i]);
            last = i;
        }
    }
    chunks.push(&text[last..]);
    let (whole, whole_turn) = project(&[text], opts);
    let (split, split_turn) = project(&chunks, opts);
    assert_eq!(split, whole);
    assert_eq!(split_turn, turn);
    assert_eq!(whole_turn, turn);

    let (name, args) = text.split_once('\u{1}').unwrap_or(("f", text));
    let calls = [JsonToolCall {
        name,
        arguments: args,
    }];
    let _ = canonical_ds4(&calls);
    let _ = canonical_official(&calls);
});
