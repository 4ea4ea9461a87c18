"""End-to-end tests of `ds4 serve` through the official OpenAI and Anthropic SDKs.

The suite starts its own servers (loopback only, free ports) from a `ds4` binary built
with the `test-script` feature and a tiny synthesized model:

    DS4_BIN=target/e2e/debug/ds4 DS4_MODEL=target/e2e/tiny.gguf pytest tests/e2e

`scripts/e2e_server.sh` builds both and runs this. The random-weight model never writes
tool calls or thinking blocks on purpose, so `script.json` scripts the generated text for
prompts that carry a `SCRIPT:<name>` marker; prompts without a marker are sampled.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
API_KEY = "e2e-secret-key"
CTX = 4096


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `ds4 serve` process on 127.0.0.1."""

    def __init__(self, name, extra=(), api_key=API_KEY, log_dir=None):
        self.bin = os.environ.get("DS4_BIN")
        self.model = os.environ.get("DS4_MODEL")
        if not self.bin or not self.model:
            pytest.fail("set DS4_BIN and DS4_MODEL (scripts/e2e_server.sh does)")
        self.name = name
        self.extra = list(extra)
        self.api_key = api_key
        self.log_dir = Path(log_dir or os.environ.get("DS4_E2E_LOGS", "/tmp"))
        self.proc = None
        self.port = None
        self.log_path = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=60):
        self.port = _free_port()
        args = [
            self.bin, "serve", "-m", self.model,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--ctx", str(CTX), "--threads", "2",
            "--test-script", str(HERE / "script.json"),
        ] + self.extra
        if self.api_key:
            args += ["--api-key", self.api_key]
        self.log_path = self.log_dir / f"ds4-e2e-{self.name}-{self.port}.log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ds4 serve exited with {self.proc.returncode}: {self.log()}")
            try:
                self.get("/v1/models")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.kill()
        pytest.fail(f"ds4 serve did not come up in {timeout}s: {self.log()}")

    def log(self):
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def headers(self):
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def get(self, path):
        req = urllib.request.Request(self.url + path, headers=self.headers())
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self):
        return self.get("/ds4/stats")

    def wait_idle(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.stats()
            if not s["busy"] and s["queued"] == 0:
                return s
            time.sleep(0.02)
        raise AssertionError("worker still busy")

    def stop(self, timeout=30):
        """SIGTERM (graceful: shutdown checkpoints) and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ds4 serve did not stop on SIGTERM: {self.log()}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def server():
    s = Server("main").start()
    yield s
    code = s.stop()
    assert code == 0, f"ds4 serve exited with {code}: {s.log()}"


@pytest.fixture(scope="session")
def make_server():
    started = []

    def make(name, extra=(), **kw):
        s = Server(name, extra, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


@pytest.fixture(scope="session")
def oai(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def claude(server):
    import anthropic

    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)


BASH_TOOL = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a shell command",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}},
            "required": ["command"],
        },
    },
}

READ_TOOL = {
    "type": "function",
    "function": {
        "name": "read",
        "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}


def raw_request(server, method, path, body=None, headers=None, timeout=60):
    """A request without any SDK: returns (status, headers, body bytes)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    h = dict(server.headers() if headers is None else headers)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data
