"""Server lifecycle: CORS, the trace file, and a clean shutdown in the middle of a stream."""

import threading
import time

import openai

from conftest import API_KEY, raw_request


def test_shutdown_mid_stream_ends_cleanly(make_server, tmp_path):
    trace = tmp_path / "trace.txt"
    s = make_server("lifecycle", ["--cors", "--trace", str(trace)]).start()

    status, h, _ = raw_request(s, "GET", "/v1/models")
    assert status == 200 and h["access-control-allow-origin"] == "*"

    c = openai.OpenAI(base_url=s.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    stream = c.chat.completions.create(
        model="deepseek-chat", stream=True, max_tokens=3000,
        messages=[{"role": "user", "content": "SCRIPT:long until shutdown"}],
    )
    got = {"chunks": 0, "finish": None, "ended": False}

    def read():
        for chunk in stream:
            got["chunks"] += 1
            for ch in chunk.choices:
                got["finish"] = ch.finish_reason or got["finish"]
        got["ended"] = True

    t = threading.Thread(target=read)
    t.start()
    deadline = time.time() + 30
    while got["chunks"] < 5 and time.time() < deadline:
        time.sleep(0.02)
    assert got["chunks"] >= 5
    assert s.stop() == 0
    t.join(timeout=30)
    assert got["ended"], "the stream ended with the server"
    assert got["finish"] == "error"
    log = s.log_path.read_text()
    assert "shutdown requested" in log
    text = trace.read_text()
    assert "===== request 1 " in text and "===== end request 1 =====" in text
    assert "SCRIPT:long until shutdown" in text
