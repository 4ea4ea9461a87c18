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
