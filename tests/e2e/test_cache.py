"""KV reuse: a resent conversation prefills only its new suffix, in memory and, after a
restart, from the disk cache."""

import openai

from conftest import API_KEY


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def two_turns(c, first, thinking):
    extra = {} if thinking else {"thinking": {"type": "disabled"}}
    msgs = [{"role": "system", "content": "You are a careful assistant. " * 8},
            {"role": "user", "content": first}]
    r1 = c.chat.completions.create(model="deepseek-v4-flash", messages=msgs, extra_body=extra)
    m = r1.choices[0].message
    msgs = msgs + [{"role": "assistant", "content": m.content},
                   {"role": "user", "content": "SCRIPT:hello and one more thing"}]
    r2 = c.chat.completions.create(model="deepseek-v4-flash", messages=msgs, extra_body=extra, max_tokens=8)
    return r1, r2


def test_resent_conversation_prefills_only_the_suffix(server, oai):
    server.wait_idle()
    r1, r2 = two_turns(oai, "SCRIPT:reuse first question", thinking=False)
    assert r1.choices[0].message.content == "Sure, here it is."
    cached = r2.usage.prompt_tokens_details.cached_tokens
    # Everything turn 1 left in the KV cache is reused: its prompt and its answer.
    assert cached == r1.usage.prompt_tokens + r1.usage.completion_tokens, (cached, r1.usage, r2.usage)
    last = server.stats()["last"]
    assert last["source"] in ("memory-token", "memory-text")
    assert last["prefilled_tokens"] == r2.usage.prompt_tokens - cached
    assert last["prefilled_tokens"] < 20


def test_thinking_turn_reuses_hidden_reasoning(server, oai):
    server.wait_idle()
    r1, r2 = two_turns(oai, "SCRIPT:think about it", thinking=True)
    assert r1.choices[0].message.model_extra["reasoning_content"] == "I should greet the user."
    cached = r2.usage.prompt_tokens_details.cached_tokens
    # The next prompt drops the old reasoning, but the live KV keeps it (thinking-visible).
    assert cached == r1.usage.prompt_tokens + r1.usage.completion_tokens, (cached, r1.usage, r2.usage)
    assert server.stats()["last"]["source"] == "thinking-visible"


def test_restart_resumes_from_disk(make_server, tmp_path):
    kv = tmp_path / "kv"
    flags = ["--kv-disk-dir", str(kv), "--kv-cache-min-tokens", "16", "--kv-cache-boundary-align-tokens", "16"]
    a = make_server("disk-a", flags).start()
    c = client(a)
    msgs = [{"role": "system", "content": "You are a careful assistant. " * 8},
            {"role": "user", "content": "SCRIPT:reuse from disk"}]
    extra = {"thinking": {"type": "disabled"}}
    r1 = c.chat.completions.create(model="deepseek-v4-flash", messages=msgs, extra_body=extra)
    assert r1.usage.prompt_tokens_details.cached_tokens == 0
    assert a.stop() == 0
    assert "shutdown checkpoint" in a.log_path.read_text()
    assert list(kv.glob("*.kv")), "no checkpoint written"

    b = make_server("disk-b", flags).start()
    c = client(b)
    msgs = msgs + [{"role": "assistant", "content": r1.choices[0].message.content},
                   {"role": "user", "content": "SCRIPT:hello again"}]
    r2 = c.chat.completions.create(model="deepseek-v4-flash", messages=msgs, extra_body=extra)
    assert r2.choices[0].message.content == "Hello there, friend."
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached == r1.usage.prompt_tokens + r1.usage.completion_tokens, (cached, r1.usage)
    stats = b.stats()
    assert stats["disk_hits"] == 1 and stats["last"]["source"] == "disk-text"
    assert stats["last"]["prefilled_tokens"] == r2.usage.prompt_tokens - cached
    assert b.stop() == 0


def test_restart_resumes_hidden_reasoning_from_disk(make_server, tmp_path):
    # SERVING.md 6.4: the shutdown checkpoint of a thinking turn is keyed by the visible
    # transcript (what the next request renders, without the reasoning) and holds the live
    # KV with the reasoning, so after a restart the whole turn is reused.
    kv = tmp_path / "kv"
    flags = ["--kv-disk-dir", str(kv), "--kv-cache-min-tokens", "16", "--kv-cache-boundary-align-tokens", "16"]
    msgs = [{"role": "system", "content": "You are a careful assistant. " * 8},
            {"role": "user", "content": "SCRIPT:think about it after a restart"}]
    a = make_server("disk-think-a", flags).start()
    r1 = client(a).chat.completions.create(model="deepseek-v4-flash", messages=msgs)
    assert r1.choices[0].message.model_extra["reasoning_content"] == "I should greet the user."
    assert a.stop() == 0

    b = make_server("disk-think-b", flags).start()
    msgs = msgs + [{"role": "assistant", "content": r1.choices[0].message.content},
                   {"role": "user", "content": "SCRIPT:hello and one more thing"}]
    r2 = client(b).chat.completions.create(model="deepseek-v4-flash", messages=msgs, max_tokens=8)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached == r1.usage.prompt_tokens + r1.usage.completion_tokens, (cached, r1.usage, r2.usage)
    assert b.stats()["last"]["source"] == "disk-text"
    assert b.stop() == 0


def test_restart_replays_tool_calls_from_the_disk_map(make_server, tmp_path):
    # SERVING.md 3.8: the shutdown checkpoint carries the call id -> sampled DSML map, so a
    # fresh server renders the client's re-serialized call as the sampled bytes and reuses
    # the whole checkpoint (a canonical rendering would follow the client's key order).
    import json

    from conftest import BASH_TOOL

    kv = tmp_path / "kv"
    flags = ["--kv-disk-dir", str(kv), "--kv-cache-min-tokens", "16", "--kv-cache-boundary-align-tokens", "16"]
    extra = {"thinking": {"type": "disabled"}}
    a = make_server("disk-tools-a", flags).start()
    c = client(a)
    msgs = [{"role": "system", "content": "You are a careful assistant. " * 8},
            {"role": "user", "content": "SCRIPT:tool-plain from disk"}]
    r1 = c.chat.completions.create(model="deepseek-v4-flash", messages=msgs, tools=[BASH_TOOL], extra_body=extra)
    call = r1.choices[0].message.tool_calls[0]
    assert a.stop() == 0

    b = make_server("disk-tools-b", flags).start()
    c = client(b)
    args = json.loads(call.function.arguments)
    assert list(args) == ["command", "timeout"]
    reserialized = json.dumps(dict(reversed(list(args.items()))), indent=1)
    msgs = msgs + [
        {"role": "assistant", "content": r1.choices[0].message.content,
         "tool_calls": [{"id": call.id, "type": "function",
                         "function": {"name": call.function.name, "arguments": reserialized}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "x y z SCRIPT:hello"},
    ]
    r2 = c.chat.completions.create(model="deepseek-v4-flash", messages=msgs, tools=[BASH_TOOL], extra_body=extra)
    assert r2.choices[0].message.content == "Hello there, friend."
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached == r1.usage.prompt_tokens + r1.usage.completion_tokens, (cached, r1.usage, r2.usage)
    assert b.stats()["last"]["source"] == "disk-text"
    assert b.stop() == 0


def test_tool_turn_without_echoed_reasoning_reuses_the_kv(server, oai):
    from conftest import BASH_TOOL

    server.wait_idle()
    msgs = [{"role": "user", "content": "SCRIPT:tool-think cache"}]
    r1 = oai.chat.completions.create(model="deepseek-v4-flash", messages=msgs, tools=[BASH_TOOL])
    call = r1.choices[0].message.tool_calls[0]
    # The client drops reasoning_content and re-serializes the arguments.
    msgs = msgs + [
        {"role": "assistant", "content": r1.choices[0].message.content,
         "tool_calls": [{"id": call.id, "type": "function",
                         "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "x y z SCRIPT:after-tool"},
    ]
    r2 = oai.chat.completions.create(model="deepseek-v4-flash", messages=msgs, tools=[BASH_TOOL])
    assert r2.choices[0].message.content == "The directory has 3 files."
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached == r1.usage.prompt_tokens + r1.usage.completion_tokens, (cached, r1.usage, r2.usage)
    assert server.stats()["last"]["source"] == "tools-visible"


def test_responses_tool_turn_reuses_the_kv(server, oai):
    from test_responses import FLAT_BASH

    server.wait_idle()
    r1 = oai.responses.create(model="deepseek-v4-flash", input="SCRIPT:tool-think responses cache", tools=[FLAT_BASH])
    fc = r1.output[-1]
    items = [
        {"type": "message", "role": "user", "content": "SCRIPT:tool-think responses cache"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": r1.output[0].content[0].text}]},
        {"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
        {"type": "function_call_output", "call_id": fc.call_id, "output": "a b SCRIPT:after-tool"},
    ]
    r2 = oai.responses.create(model="deepseek-v4-flash", input=items, tools=[FLAT_BASH])
    assert r2.output_text == "The directory has 3 files."
    cached = r2.usage.input_tokens_details.cached_tokens
    assert cached == r1.usage.input_tokens + r1.usage.output_tokens, (cached, r1.usage, r2.usage)
