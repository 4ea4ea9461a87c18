"""Anthropic Messages API through the official `anthropic` SDK."""

import anthropic
import pytest

BASH = {
    "name": "bash",
    "description": "Run a shell command",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}}},
}
ARGS = {"command": 'echo "a&b" && ls -la /tmp 🚀', "timeout": 10}


def test_non_stream_thinking_and_tool_use(claude):
    m = claude.messages.create(
        model="deepseek-v4-flash", max_tokens=500, tools=[BASH],
        system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "SCRIPT:tool-think"}],
    )
    assert m.type == "message" and m.role == "assistant"
    assert [b.type for b in m.content] == ["thinking", "text", "tool_use"]
    assert m.content[0].thinking == "I need a tool to list files."
    assert m.content[0].signature == m.id
    assert m.content[1].text == "Let me look."
    tu = m.content[2]
    assert tu.id.startswith("toolu_") and tu.name == "bash"
    assert tu.input == ARGS
    assert list(tu.input) == ["command", "timeout"]
    assert m.stop_reason == "tool_use" and m.stop_sequence is None
    assert m.usage.output_tokens > 0
    assert m.usage.cache_read_input_tokens + m.usage.cache_creation_input_tokens > 0


def test_stream_helper_events_and_final_message(claude):
    seen = []
    with claude.messages.stream(
        model="deepseek-v4-flash", max_tokens=500, tools=[BASH],
        messages=[{"role": "user", "content": "SCRIPT:tool-think stream"}],
    ) as s:
        for ev in s:
            seen.append(ev.type)
        final = s.get_final_message()
    assert seen[0] == "message_start"
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "I need a tool to list files."
    assert final.content[0].signature == final.id
    assert final.content[1].text == "Let me look."
    assert final.content[2].input == ARGS
    assert final.stop_reason == "tool_use"
    assert "DSML" not in final.content[1].text


def test_raw_stream_order(claude):
    stream = claude.messages.create(
        model="deepseek-v4-flash", max_tokens=500, tools=[BASH], stream=True,
        messages=[{"role": "user", "content": "SCRIPT:tool-think raw"}],
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types[-2] == "message_delta"
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    sig = deltas.index("signature_delta")
    assert "thinking_delta" in deltas[:sig]
    assert "text_delta" in deltas[sig:]
    assert deltas.index("input_json_delta") > deltas.index("text_delta")
    starts = [e for e in events if e.type == "content_block_start"]
    assert [e.index for e in starts] == list(range(len(starts)))
    assert events[-2].delta.stop_reason == "tool_use"


def test_thinking_disabled(claude):
    m = claude.messages.create(
        model="deepseek-v4-flash", max_tokens=100, thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "SCRIPT:hello"}],
    )
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "Hello there, friend."
    assert m.stop_reason == "end_turn"


def test_thinking_only_gets_empty_text_block(claude):
    m = claude.messages.create(
        model="deepseek-v4-flash", max_tokens=100, thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "SCRIPT:hello thinking"}],
    )
    # The scripted text never closes </think>: all of it is thinking.
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[1].text == ""


def test_tool_result_round_trip(claude):
    first = claude.messages.create(
        model="deepseek-v4-flash", max_tokens=500, tools=[BASH],
        messages=[{"role": "user", "content": "SCRIPT:tool-think rt"}],
    )
    tu = first.content[-1]
    msgs = [
        {"role": "user", "content": "SCRIPT:tool-think rt"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tu.id, "content": [{"type": "text", "text": "a b c SCRIPT:after-tool"}]},
        ]},
    ]
    second = claude.messages.create(model="deepseek-v4-flash", max_tokens=500, tools=[BASH], messages=msgs)
    assert second.content[-1].text == "The directory has 3 files."
    assert second.usage.cache_read_input_tokens > 0


def test_unknown_tool_use_id_rejected(claude):
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(
            model="deepseek-v4-flash", max_tokens=50,
            messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "x"}]}],
        )
    assert "Anthropic continuation state is not available for tool_use_id toolu_x" in str(e.value)


def test_stop_sequences(claude):
    m = claude.messages.create(
        model="deepseek-v4-flash", max_tokens=100, thinking={"type": "disabled"}, stop_sequences=["STOP"],
        messages=[{"role": "user", "content": "SCRIPT:stop"}],
    )
    assert m.content[0].text == "alpha beta "
    assert m.stop_reason == "end_turn"


def test_max_tokens_stop_reason(claude):
    m = claude.messages.create(
        model="deepseek-v4-flash", max_tokens=5, thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "SCRIPT:long"}],
    )
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 5
