"""Many streaming clients at once, and a client that goes away mid-stream."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from conftest import API_KEY

CLIENTS = 50


def one_stream(url, i):
    c = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)
    s = c.chat.completions.create(
        model="deepseek-chat", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"Client {i} says SCRIPT:hello"}],
    )
    role, content, finish, usage, ids = None, "", None, None, set()
    for chunk in s:
        ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                assert role is None
                role = ch.delta.role
            content += ch.delta.content or ""
            if ch.finish_reason:
                finish = ch.finish_reason
    return role, content, finish, usage, ids


def test_fifty_concurrent_streams(server):
    server.wait_idle()
    t0 = time.time()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda i: one_stream(server.url, i), range(CLIENTS)))
    elapsed = time.time() - t0
    all_ids = set()
    for role, content, finish, usage, ids in results:
        assert role == "assistant"
        assert content == "Hello there, friend."
        assert finish == "stop"
        assert usage is not None and usage.completion_tokens > 0
        assert len(ids) == 1
        all_ids |= ids
    assert len(all_ids) == CLIENTS, "every request has its own id"
    assert elapsed < 240
    s = server.wait_idle()
    assert s["queued"] == 0 and not s["busy"]


def read_events(sock, n, timeout=30):
    """Reads from a raw SSE response until `n` data events arrived; returns the text."""
    sock.settimeout(timeout)
    buf = b""
    while buf.count(b"\ndata: ") + buf.startswith(b"data: ") < n:
        chunk = sock.recv(4096)
        assert chunk, "server closed the stream early"
        buf += chunk
    return buf.decode(errors="replace")


def test_disconnect_frees_the_worker(server, oai):
    server.wait_idle()
    before = server.stats()
    body = json.dumps({
        "model": "deepseek-chat", "stream": True, "max_tokens": 3000,
        "messages": [{"role": "user", "content": "SCRIPT:long disconnect"}],
    }).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    text = read_events(sock, 6)
    assert "HTTP/1.1 200" in text and "text/event-stream" in text
    received = text.count('"content"')
    sock.close()
    t_close = time.time()
    s = server.wait_idle(timeout=10)
    freed_after = time.time() - t_close
    # 20 ms per scripted token: the worker stops within a couple of tokens of the close.
    assert freed_after < 2.0, freed_after
    assert s["jobs_cancelled"] == before["jobs_cancelled"] + 1
    last = s["last"]
    assert last["finish"] == "error"
    # From the client's close being seen to the worker stopping: at most one token.
    print("disconnect:", last, "received", received, "freed after", freed_after)
    assert last["cancel_latency_ms"] is not None and last["cancel_latency_ms"] < 100, last
    # Within one token: at most one token more than the client had received.
    assert last["generated_tokens"] <= received + 1, (last, received)
    # The worker is free: the next request is served at once.
    t0 = time.time()
    r = oai.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "SCRIPT:hello"}])
    assert r.choices[0].message.content == "Hello there, friend."
    assert time.time() - t0 < 10
