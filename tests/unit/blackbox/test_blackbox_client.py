"""The HTTP client against a real server on 127.0.0.1: wire format, retries on every injected fault, no
guessing from broken answers, and the API key kept out of every message."""

from __future__ import annotations

import pytest
from _chat_server import FAULTS, SECRET, FakeChatServer, keyed_server, server  # noqa: F401, F811 (fixtures)

from distill.teachers.blackbox import BackendError, ChatClient, FatalBackendError
from distill.teachers.blackbox.client import chat_url, parse_retry_after

MESSAGES = [{"role": "user", "content": "Text: a good and lovely film\nLabel:"}]


def client(url, **kw):
    sleeps: list[float] = []
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 2.0)
    c = ChatClient(url, "fake-llm", sleep=sleeps.append, **kw)
    return c, sleeps


def test_request_and_answer_follow_the_wire_format(keyed_server):  # noqa: F811 (fixture imported from _chat_server)
    c, _ = client(keyed_server.url, api_key=SECRET, logprobs=True, top_logprobs=3, max_tokens=7)
    response = c.complete(MESSAGES)
    body = keyed_server.bodies[0]
    assert body == {"model": "fake-llm", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 7,
                    "logprobs": True, "top_logprobs": 3}
    assert response.text == "Positive."
    assert (response.prompt_tokens, response.completion_tokens) == (10, 2)
    assert response.tokens[0].token == "Positive" and response.tokens[0].top[1] == ("Negative", -1.8)
    assert c.counters() == {"requests": 1, "retries": 0}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_retried_then_answered(server, fault):  # noqa: F811 (fixture imported from _chat_server)
    server.hang = 0.6
    server.faults.append(fault)
    c, sleeps = client(server.url, timeout=0.3 if fault == "timeout" else 2.0)
    # the real answer, never something read from the broken one
    assert c.complete(MESSAGES).text == "Positive."
    assert sum(server.requests.values()) == 2 and c.retries == 1
    if fault == "429":
        assert sleeps == [pytest.approx(1.0, abs=0.05)]  # Retry-After: 1 honoured
    else:
        assert len(sleeps) == 1 and 0.005 <= sleeps[0] <= 0.01  # backoff 0.01 * 2**0, jittered down to 50 %


def test_backoff_grows_exponentially_with_jitter(server):  # noqa: F811 (fixture imported from _chat_server)
    server.faults.extend(["500"] * 4)
    c, sleeps = client(server.url, backoff=0.1, max_backoff=0.5)
    assert c.complete(MESSAGES).text == "Positive."
    for attempt, delay in enumerate(sleeps):
        cap = min(0.5, 0.1 * 2**attempt)
        assert cap / 2 <= delay <= cap


def test_gives_up_after_max_retries_and_says_why(server):  # noqa: F811 (fixture imported from _chat_server)
    server.faults.extend(["malformed"] * 3)
    c, _ = client(server.url, max_retries=2)
    with pytest.raises(BackendError, match="gave up after 3 attempts; last: malformed JSON") as info:
        c.complete(MESSAGES)
    assert not isinstance(info.value, FatalBackendError)
    assert sum(server.requests.values()) == 3  # bounded


def test_refused_key_fails_at_once_and_is_redacted(keyed_server):  # noqa: F811 (fixture imported from _chat_server)
    c, sleeps = client(keyed_server.url, api_key=SECRET + "-wrong", api_key_source="the key in $MY_KEY")
    with pytest.raises(FatalBackendError) as info:
        c.complete(MESSAGES)
    message = str(info.value)
    assert "HTTP 401" in message and "$MY_KEY" in message and "***" in message  # the server echoed the key
    assert SECRET not in message
    assert sum(keyed_server.requests.values()) == 1 and sleeps == []


def test_key_echoed_in_a_retried_error_is_redacted(keyed_server):  # noqa: F811 (fixture imported from _chat_server)
    keyed_server.faults.extend(["503-echo"] * 2)
    c, _ = client(keyed_server.url, api_key=SECRET, max_retries=1)
    with pytest.raises(BackendError) as info:
        c.complete(MESSAGES)
    assert "HTTP 503" in str(info.value) and SECRET not in str(info.value)
    assert SECRET not in repr(c) and "***" in repr(c)


def test_connection_refused_is_retried_then_reported():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c, sleeps = client(f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(BackendError, match="cannot connect"):
        c.complete(MESSAGES)
    assert len(sleeps) == 1


def test_url_and_retry_after_helpers():
    assert chat_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert chat_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    assert (parse_retry_after("2") == 2.0 and parse_retry_after(None) is None
            and parse_retry_after("soon") is None)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
