"""A real HTTP server on 127.0.0.1 speaking the chat-completions wire format, with fault injection.

Faults are queued (``server.faults.extend(["500", "timeout"])``) and consumed one per request, in order;
``server.fail_prompts`` answers 500 to every request whose text contains one of its words. Per-prompt
request and answer counters let tests check that nothing is asked twice.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

POSITIVE = {"good", "great", "fine", "lovely", "superb", "fun", "moving", "smart"}
NEGATIVE = {"bad", "awful", "dull", "boring", "weak", "messy", "flat", "tired"}
SECRET = "sk-test-5ecr3t-DO-NOT-LEAK-0123456789"
FAULTS = ("500", "429", "503-echo", "timeout", "malformed", "truncated", "no-choices")


def input_text(prompt: str) -> str:
    """The input text inside the default prompt (the whole prompt when the template differs)."""
    m = re.search(r"Text: (.*)\nLabel:", prompt, flags=re.DOTALL)
    return m.group(1) if m else prompt


def rule_answer(prompt: str) -> str:
    """A deterministic teacher: the majority of sentiment words decides, phrased like a chatty model."""
    words = input_text(prompt).lower().split()
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return "Positive." if score >= 0 else "negative"


def chat_body(content: str, logprobs: bool, prompt_tokens: int = 10,
              completion_tokens: int = 2) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}
    if logprobs:
        first = content.split()[0].strip(".") if content.split() else ""
        other = "Negative" if first.lower().startswith("pos") else "Positive"
        # the chosen first token at -0.2, the other label at -1.8, a non-label token at -3
        choice["logprobs"] = {"content": [
            {"token": first, "logprob": -0.2, "bytes": list(first.encode()),
             "top_logprobs": [{"token": first, "logprob": -0.2}, {"token": other, "logprob": -1.8},
                              {"token": "The", "logprob": -3.0}]},
            {"token": ".", "logprob": -0.01, "top_logprobs": [{"token": ".", "logprob": -0.01}]},
        ]}
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
            "model": "fake-llm", "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_POST(self) -> None:  # http.server's naming
        fake: FakeChatServer = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        prompt = body["messages"][-1]["content"]
        auth = self.headers.get("Authorization")
        with fake.lock:
            fake.requests[prompt] += 1
            fake.bodies.append(body)
            fault = fake.faults.popleft() if fake.faults else None
        if fake.api_key is not None and auth != f"Bearer {fake.api_key}":
            # echo the header back, as some proxies do: the client must scrub it from its error
            return self._send(401, json.dumps({"error": f"invalid key, got header {auth}"}).encode())
        if fault is None and any(w in input_text(prompt) for w in fake.fail_prompts):
            fault = "500"
        if fault == "500":
            return self._send(500, b'{"error": {"message": "internal error"}}')
        if fault == "429":
            return self._send(429, b'{"error": {"message": "rate limited"}}',
                              {"Retry-After": fake.retry_after})
        if fault == "503-echo":
            return self._send(503, json.dumps({"error": f"overloaded; your header was {auth}"}).encode())
        if fault == "timeout":
            time.sleep(fake.hang)  # past the client's timeout; the client is gone when we write
        elif fault == "malformed":
            return self._send(200, b'{"choices": [{"message": {"content": "Posi')
        elif fault == "no-choices":
            return self._send(200, b'{"object": "chat.completion", "choices": []}')
        time.sleep(fake.delay)
        payload = json.dumps(chat_body(fake.answer(prompt), bool(body.get("logprobs")))).encode()
        try:
            if fault == "truncated":  # promise more bytes than are sent, then hang up
                self._send(200, payload[: len(payload) // 2], length=len(payload))
                self.close_connection = True
                return
            self._send(200, payload)
        except (BrokenPipeError, ConnectionResetError):
            return
        if fault is None:
            with fake.lock:
                fake.answered[prompt] += 1


class FakeChatServer:
    """``with FakeChatServer() as server: ChatClient(server.url, "fake-llm")``."""

    def __init__(self, answer: Callable[[str], str] = rule_answer, api_key: str | None = None,
                 delay: float = 0.0, hang: float = 1.0, retry_after: str = "1"):
        self.answer = answer
        self.api_key = api_key
        self.delay = delay
        self.hang = hang
        self.retry_after = retry_after
        self.faults: collections.deque[str] = collections.deque()
        self.fail_prompts: set[str] = set()
        self.requests: collections.Counter[str] = collections.Counter()
        self.answered: collections.Counter[str] = collections.Counter()
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)  # port 0: a free port
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.answered.clear()
            self.bodies.clear()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# shared by the client and labeler tests (import them into a test module to use them)
@pytest.fixture()
def server():
    with FakeChatServer() as srv:
        yield srv


@pytest.fixture()
def keyed_server():
    with FakeChatServer(api_key=SECRET) as srv:
        yield srv
