"""OpenAI chat completions and completions through the official `openai` SDK."""

import json

import openai
import pytest

from conftest import BASH_TOOL, CTX, READ_TOOL

NO_THINK = {"thinking": {"type": "disabled"}}


def user(text):
    return [{"role": "user", "content": text}]


def collect(stream):
    """Reassembles a chat stream: role, reasoning, content, tool calls by index, finish, usage."""
    out = {"role": None, "reasoning": "", "content": "", "calls": {}, "finish": None, "usage": None, "chunks": 0}
    for chunk in stream:
        out["chunks"] += 1
        assert chunk.object == "chat.completion.chunk"
        assert chunk.id.startswith("chatcmpl-")
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        d = c.delta
        if d.role:
            assert out["role"] is None, "role sent twice"
            out["role"] = d.role
        extra = d.model_extra or {}
        if extra.get("reasoning_content"):
            assert not out["content"], "reasoning after content"
            out["reasoning"] += extra["reasoning_content"]
        if d.content:
            out["content"] += d.content
        for tc in d.tool_calls or []:
            slot = out["calls"].setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert slot["id"] is None, "a call id was sent twice"
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
        if c.finish_reason:
            assert out["finish"] is None
            out["finish"] = c.finish_reason
    assert out["role"] == "assistant"
    return out


def test_non_stream_plain(oai):
    r = oai.chat.completions.create(model="deepseek-v4-flash", messages=user("SCRIPT:hello"), extra_body=NO_THINK)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "deepseek-v4-flash"
    m = r.choices[0].message
    assert m.role == "assistant"
    assert m.content == "Hello there, friend."
    assert not (m.model_extra or {}).get("reasoning_content")
    assert m.tool_calls is None
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    d = u.prompt_tokens_details
    assert d.cached_tokens + d.to_dict()["cache_write_tokens"] == u.prompt_tokens


def test_stream_plain_with_usage(oai):
    s = oai.chat.completions.create(
        model="my-alias", messages=user("SCRIPT:hello stream"), stream=True,
        stream_options={"include_usage": True}, extra_body=NO_THINK,
    )
    out = collect(s)
    assert out["content"] == "Hello there, friend."
    assert out["reasoning"] == ""
    assert out["finish"] == "stop"
    assert out["usage"] is not None and out["usage"].completion_tokens > 0
    assert out["usage"].total_tokens == out["usage"].prompt_tokens + out["usage"].completion_tokens


def test_thinking_on_non_stream(oai):
    r = oai.chat.completions.create(model="deepseek-v4-flash", messages=user("SCRIPT:think"))
    m = r.choices[0].message
    assert m.model_extra["reasoning_content"] == "I should greet the user."
    assert m.content == "Hello from thinking."
    assert r.choices[0].finish_reason == "stop"


def test_thinking_on_stream(oai):
    out = collect(oai.chat.completions.create(model="deepseek-reasoner", messages=user("SCRIPT:think stream"), stream=True))
    assert out["reasoning"] == "I should greet the user."
    assert out["content"] == "Hello from thinking."
    for text in (out["reasoning"], out["content"]):
        assert "<think>" not in text and "</think>" not in text


@pytest.mark.parametrize("how", [
    {"model": "deepseek-chat"},
    {"extra_body": {"thinking": False}},
    {"extra_body": {"think": False}},
    {"reasoning_effort": "none"},
])
def test_thinking_off_controls(oai, how):
    kw = {"model": "deepseek-v4-flash", **how}
    r = oai.chat.completions.create(messages=user("SCRIPT:hello"), **kw)
    assert r.choices[0].message.content == "Hello there, friend."
    assert not (r.choices[0].message.model_extra or {}).get("reasoning_content")


def test_tools_non_stream(oai):
    r = oai.chat.completions.create(model="deepseek-v4-flash", messages=user("SCRIPT:tool-think"), tools=[BASH_TOOL])
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content == "Let me look."
    assert c.message.model_extra["reasoning_content"] == "I need a tool to list files."
    (call,) = c.message.tool_calls
    assert call.type == "function"
    assert call.id.startswith("call_") and len(call.id) == 5 + 32
    assert call.function.name == "bash"
    assert json.loads(call.function.arguments) == {"command": 'echo "a&b" && ls -la /tmp 🚀', "timeout": 10}
    # Keys in generation order, compact.
    assert call.function.arguments.startswith('{"command":')


def test_tools_stream_reassembles(oai):
    out = collect(oai.chat.completions.create(
        model="deepseek-v4-flash", messages=user("SCRIPT:tool-think stream"), tools=[BASH_TOOL], stream=True))
    assert out["finish"] == "tool_calls"
    assert out["content"] == "Let me look."
    assert "DSML" not in out["content"] and "DSML" not in out["reasoning"]
    assert list(out["calls"]) == [0]
    call = out["calls"][0]
    assert call["id"].startswith("call_") and call["name"] == "bash"
    assert json.loads(call["arguments"]) == {"command": 'echo "a&b" && ls -la /tmp 🚀', "timeout": 10}


def test_two_tools_stream(oai):
    out = collect(oai.chat.completions.create(
        model="deepseek-v4-flash", messages=user("SCRIPT:two-tools"), tools=[READ_TOOL, BASH_TOOL], stream=True))
    assert out["finish"] == "tool_calls"
    assert [out["calls"][i]["name"] for i in sorted(out["calls"])] == ["read", "bash"]
    ids = {c["id"] for c in out["calls"].values()}
    assert len(ids) == 2
    assert json.loads(out["calls"][0]["arguments"]) == {"path": "/etc/hostname"}
    assert json.loads(out["calls"][1]["arguments"]) == {"command": "pwd", "opts": {"a": [1, 2, 3], "b": "x y"}}


def test_tool_choice_none_returns_text(oai):
    r = oai.chat.completions.create(
        model="deepseek-chat", messages=user("SCRIPT:hello"), tools=[BASH_TOOL], tool_choice="none")
    assert r.choices[0].message.content == "Hello there, friend."
    assert r.choices[0].message.tool_calls is None


def test_tool_round_trip_reuses_prefix(oai, server):
    msgs = user("SCRIPT:tool-plain please list")
    r1 = oai.chat.completions.create(model="deepseek-chat", messages=msgs, tools=[BASH_TOOL])
    call = r1.choices[0].message.tool_calls[0]
    # Clients re-serialize arguments; the server replays the sampled DSML by id.
    args = json.dumps(json.loads(call.function.arguments), indent=2, sort_keys=True)
    msgs = msgs + [
        {"role": "assistant", "content": r1.choices[0].message.content,
         "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "bash", "arguments": args}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "a\nb\nc\nSCRIPT:after-tool"},
    ]
    r2 = oai.chat.completions.create(model="deepseek-chat", messages=msgs, tools=[BASH_TOOL])
    assert r2.choices[0].finish_reason == "stop"
    assert "The directory has 3 files." in r2.choices[0].message.content
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens + r1.usage.completion_tokens, (cached, r1.usage)
    last = server.stats()["last"]
    assert last["prefilled_tokens"] == r2.usage.prompt_tokens - cached


def test_stop_sequences(oai):
    r = oai.chat.completions.create(model="deepseek-chat", messages=user("SCRIPT:stop"), stop=["STOP", "zzz"])
    assert r.choices[0].message.content == "alpha beta "
    assert r.choices[0].finish_reason == "stop"
    out = collect(oai.chat.completions.create(model="deepseek-chat", messages=user("SCRIPT:stop s"), stop="STOP", stream=True))
    assert out["content"] == "alpha beta "


def test_sampled_output_hits_length(oai):
    r = oai.chat.completions.create(
        model="deepseek-chat", messages=user("Tell me a story."), max_tokens=6, temperature=0.7, seed=42)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6


def test_max_completion_tokens_zero(oai):
    r = oai.chat.completions.create(model="deepseek-chat", messages=user("SCRIPT:hello"), max_completion_tokens=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 0


def test_unterminated_tool_call_is_error(oai):
    r = oai.chat.completions.create(model="deepseek-v4-flash", messages=user("SCRIPT:unterminated"), tools=[BASH_TOOL])
    assert r.choices[0].finish_reason == "error"


def test_malformed_tool_call_returned_as_text(oai):
    r = oai.chat.completions.create(model="deepseek-v4-flash", messages=user("SCRIPT:malformed"), tools=[BASH_TOOL])
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert c.message.tool_calls is None
    assert "Trying." in c.message.content


def test_streamed_utf8_is_whole(oai):
    out = collect(oai.chat.completions.create(model="deepseek-chat", messages=user("SCRIPT:utf8"), stream=True))
    assert out["content"] == "emoji 🚀 and 中文 done"
    assert "\ufffd" not in out["content"]


def test_completions_endpoint(oai):
    r = oai.completions.create(model="deepseek-v4-flash", prompt="SCRIPT:hello", max_tokens=50, extra_body={"think": False})
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.choices[0].text == "Hello there, friend."
    assert r.choices[0].finish_reason == "stop"
    chunks = list(oai.completions.create(model="x", prompt="SCRIPT:hello", max_tokens=50, stream=True, extra_body={"think": False}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello there, friend."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_clamped_to_context(oai):
    r = oai.chat.completions.create(model="deepseek-chat", messages=user("SCRIPT:hello"), max_tokens=10_000_000)
    assert r.choices[0].finish_reason == "stop"


def test_models(oai):
    models = oai.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["deepseek-v4-flash"]
    m = oai.models.retrieve("deepseek-v4-flash")
    assert m.model_extra["context_length"] == CTX
    assert m.model_extra["top_provider"]["max_completion_tokens"] == CTX
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-17")
