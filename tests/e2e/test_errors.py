"""Error shapes, limits and the API key, over raw HTTP and through the SDKs."""

import json

import anthropic
import openai
import pytest

from conftest import API_KEY, CTX, raw_request


def err(body):
    return json.loads(body)


def test_bad_json_openai_shape(server):
    status, h, body = raw_request(server, "POST", "/v1/chat/completions", b'{"messages": [')
    assert status == 400
    assert h["content-type"] == "application/json"
    e = err(body)["error"]
    assert e["type"] == "invalid_request_error"
    assert "invalid JSON request" in e["message"]


def test_bad_json_anthropic_shape(server):
    status, _, body = raw_request(server, "POST", "/v1/messages", b"not json")
    assert status == 400
    e = err(body)
    assert e["type"] == "error" and e["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path,body,field", [
    ("/v1/chat/completions", {"messages": [], "max_tokens": "ten"}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [], "stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": 5}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [], "stop": [1]}, "stop"),
    ("/v1/chat/completions", {"messages": [], "reasoning_effort": "banana"}, "reasoning_effort"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
    ("/v1/responses", {"input": 5}, "input"),
    ("/v1/responses", {"input": [{"type": "message", "role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content"),
    ("/v1/messages", {"messages": [], "max_tokens": [1]}, "max_tokens"),
])
def test_wrong_types_name_the_field(server, path, body, field):
    status, _, data = raw_request(server, "POST", path, body)
    assert status == 400, data
    text = data.decode()
    assert f"'{field}'" in text, text


@pytest.mark.parametrize("path,body,message", [
    ("/v1/chat/completions", {}, "missing messages"),
    ("/v1/messages", {"max_tokens": 5}, "missing messages"),
    ("/v1/responses", {}, "missing input"),
    ("/v1/completions", {}, "missing prompt"),
])
def test_missing_required_fields(server, path, body, message):
    status, _, data = raw_request(server, "POST", path, body)
    assert status == 400 and message in data.decode()


def test_non_object_body_and_deep_nesting(server):
    status, _, _ = raw_request(server, "POST", "/v1/chat/completions", b"[1,2]")
    assert status == 400
    deep = '{"messages":[],"x":' + "[" * 300 + "]" * 300 + "}"
    status, _, data = raw_request(server, "POST", "/v1/chat/completions", deep)
    assert status == 400 and b"nesting" in data


def test_unknown_endpoint(server):
    status, _, data = raw_request(server, "GET", "/v1/nothing")
    assert status == 404 and err(data)["error"]["message"] == "unknown endpoint"
    status, _, _ = raw_request(server, "POST", "/v1/models")
    assert status in (404, 405)


def test_unknown_model(oai):
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


def test_too_long_prompt_openai(oai):
    text = "hello " * (CTX + 100)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="deepseek-v4-flash", messages=[{"role": "user", "content": text}])
    body = e.value.body
    assert body["code"] == "context_length_exceeded"
    assert body["param"] == "messages"
    assert body["n_ctx"] == CTX and body["n_prompt_tokens"] >= CTX
    assert f"configured context size is {CTX} tokens" in body["message"]


def test_too_long_prompt_responses_and_completions(server):
    text = "hello " * (CTX + 100)
    status, _, data = raw_request(server, "POST", "/v1/responses", {"input": text})
    assert status == 400 and err(data)["error"]["param"] == "input"
    status, _, data = raw_request(server, "POST", "/v1/completions", {"prompt": text})
    assert status == 400 and err(data)["error"]["param"] == "prompt"


def test_too_long_prompt_anthropic(claude):
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="deepseek-v4-flash", max_tokens=10,
                               messages=[{"role": "user", "content": "hello " * (CTX + 100)}])
    body = e.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["n_ctx"] == CTX


def test_missing_api_key(server):
    status, _, data = raw_request(server, "GET", "/v1/models", headers={})
    assert status == 401
    assert err(data)["error"]["code"] == "invalid_api_key"
    status, _, data = raw_request(server, "POST", "/v1/messages", {"messages": []}, headers={"x-api-key": "wrong"})
    assert status == 401
    assert err(data)["error"]["type"] == "authentication_error"
    status, _, _ = raw_request(server, "GET", "/v1/models", headers={"x-api-key": API_KEY})
    assert status == 200


def test_wrong_api_key_through_sdks(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    bad = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])


def test_cors_is_opt_in(server):
    status, h, _ = raw_request(server, "GET", "/v1/models")
    assert status == 200 and not any(k.startswith("access-control") for k in h)
    status, h, data = raw_request(server, "OPTIONS", "/v1/chat/completions", headers={})
    assert status == 204 and data == b"" and "content-type" not in h


def test_server_survives_garbage(server, oai):
    lim = b'"max_tokens":2,"max_output_tokens":2,'
    bodies = [b"", b"{", b"null", b"\xff\xfe", b'{' + lim + b'"messages":[null]}',
              b'{' + lim + b'"messages":[{"content":{"a":1}}]}',
              b'{' + lim + b'"messages":[{"role":"assistant","tool_calls":[{"function":{"name":"x","arguments":{"a":1}}}]}]}',
              b'{' + lim + b'"messages":[{"role":"wizard","content":"x"}]}', b'{' + lim + b'"input":[{"type":"weird"}]}']
    for b in bodies:
        for path in ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/completions"):
            status, _, _ = raw_request(server, "POST", path, b)
            assert status < 500 or status == 503, (path, b, status)
    r = oai.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "SCRIPT:hello"}])
    assert r.choices[0].message.content == "Hello there, friend."
