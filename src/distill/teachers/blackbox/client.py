"""An OpenAI-compatible chat-completions client on the standard library alone.

Failures that may pass (429, 408, 5xx, timeouts, dropped connections, truncated or malformed bodies) are
retried with exponential backoff and jitter, honouring ``Retry-After``; a ``Retry-After`` pushes back every
thread sharing the client, not only the one that got it. Failures that will not pass (401, 403, 404, 400)
raise :class:`FatalBackendError` at once. Nothing is ever guessed from a broken answer.

The API key lives only in a private attribute and the Authorization header: ``repr`` hides it, and every
error message and answer text is scrubbed of it, in case an endpoint echoes request headers back.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import math
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from distill.teachers.blackbox.backend import (
    Backend,
    BackendError,
    ChatResponse,
    FatalBackendError,
    Message,
    TokenChoice,
)

REDACTED = "***"
_ERROR_BODY_CHARS = 300  # enough of an error body to explain it, not a whole HTML page


class _Retryable(Exception):
    """A failure worth another try; ``retry_after`` is the server's requested wait in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def chat_url(base_url: str) -> str:
    """``<base_url>/chat/completions``; a base URL that already ends with it is taken as is."""
    url = base_url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def _is_loopback(host: str | None) -> bool:
    if host in (None, ""):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    # a proxy set in the environment must not capture requests to a server on this very machine
    if _is_loopback(urlparse(url).hostname):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None when absent or
    invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _tokens(logprobs: Any) -> tuple[TokenChoice, ...] | None:
    """Read ``choices[0].logprobs.content``; anything malformed means 'no log-probabilities', never a
    guess."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    out = []
    for item in content:
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            return None
        try:
            top = tuple((str(t["token"]), float(t["logprob"])) for t in item.get("top_logprobs") or [])
            out.append(TokenChoice(item["token"], float(item["logprob"]), top))
        except (KeyError, TypeError, ValueError):
            return None
    return tuple(out)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_response(raw: bytes) -> ChatResponse:
    """Decode a chat-completions body; a body that is not one raises a retryable failure."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Retryable(f"malformed JSON in a {len(raw)}-byte answer ({exc})") from None
    if not isinstance(data, dict):
        raise _Retryable("the answer is JSON but not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        error = data.get("error")
        hint = f": {str(error)[:_ERROR_BODY_CHARS]}" if error else ""
        raise _Retryable(f"the answer has no choices{hint}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if content is None and isinstance(message, dict):
        content = ""  # a refusal or an empty answer: a real answer, which the parser will not understand
    if not isinstance(content, str):
        raise _Retryable("choices[0].message.content is missing or not text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ChatResponse(
        text=content,
        tokens=_tokens(choices[0].get("logprobs")),
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
    )


class ChatClient(Backend):
    """POST ``{model, messages, temperature, max_tokens[, logprobs, top_logprobs]}`` to
    ``<base_url>/chat/completions``.

    ``api_key_source`` only words error messages ("the key from $OPENAI_API_KEY"); ``sleep`` and ``rng`` are
    injectable so tests need not wait.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_source: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        temperature: float = 0.0,
        max_tokens: int = 16,
        logprobs: bool = False,
        top_logprobs: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_retry_after: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.url = chat_url(base_url)
        self.model = model
        self._api_key = api_key or None
        self._key_source = api_key_source or "the configured API key"
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self._rng = rng or random.Random()
        self._opener = _opener(self.url)
        self._lock = threading.Lock()
        self._not_before = 0.0  # monotonic time before which no thread sends (set by Retry-After)
        self.requests = 0  # HTTP requests sent, retries included
        self.retries = 0

    def __repr__(self) -> str:
        key = REDACTED if self._api_key else None
        return f"ChatClient(url={self.url!r}, model={self.model!r}, api_key={key!r})"

    @property
    def identity(self) -> str:
        return f"chat-completions:{self.model}"

    @property
    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "logprobs": self.logprobs,
                "top_logprobs": self.top_logprobs if self.logprobs else None}

    def counters(self) -> dict[str, int]:
        return {"requests": self.requests, "retries": self.retries}

    def payload(self, messages: list[Message]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature,
                                "max_tokens": self.max_tokens}
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, REDACTED) if self._api_key and text else text

    # -- one request ------------------------------------------------------------------------------------
    def _post(self, body: bytes) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "distill"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._lock:
            self.requests += 1
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.read()  # a body shorter than its Content-Length raises IncompleteRead
        except urllib.error.HTTPError as exc:  # before URLError: it is a subclass
            detail = self._error_body(exc)
            if exc.code in (408, 429) or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}{detail}",
                                 parse_retry_after(exc.headers.get("Retry-After"))) from None
            raise FatalBackendError(self.redact(self._explain(exc.code, detail))) from None
        except TimeoutError:
            raise _Retryable(f"no answer within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"no answer within {self.timeout:g} s") from None
            raise _Retryable(f"cannot connect to {self.url}: {exc.reason}") from None
        except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, RemoteDisconnected, resets
            raise _Retryable(f"broken answer ({type(exc).__name__}: {exc})") from None

    @staticmethod
    def _error_body(exc: urllib.error.HTTPError) -> str:
        try:
            text = exc.read(_ERROR_BODY_CHARS).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException):
            text = ""
        return f": {text}" if text else ""

    def _explain(self, code: int, detail: str) -> str:
        if code in (401, 403):
            return (f"HTTP {code}: the endpoint {self.url} refused {self._key_source}{detail}; check the key "
                    "and that it may use this model")
        if code == 404:
            return (f"HTTP 404 from {self.url}{detail}; check teacher.blackbox.base_url "
                    f"(usually ends in /v1) and teacher.blackbox.model ({self.model!r})")
        hint = "; if it is about logprobs, set teacher.blackbox.soft_labels: false" if self.logprobs else ""
        return f"HTTP {code}: the endpoint rejected the request{detail}{hint}"

    # -- retries ----------------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        # exponential, capped, with jitter in [50%, 100%] so parallel threads do not retry in lock-step
        return min(self.max_backoff, self.backoff * 2.0**attempt) * (0.5 + 0.5 * self._rng.random())

    def _wait_turn(self) -> None:
        with self._lock:
            wait = self._not_before - time.monotonic()
        if wait > 0:
            self.sleep(wait)

    def complete(self, messages: list[Message]) -> ChatResponse:
        body = json.dumps(self.payload(messages), ensure_ascii=False).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            self._wait_turn()
            try:
                response = parse_response(self._post(body))
            except _Retryable as exc:
                last = str(exc)
                if attempt == self.max_retries:
                    break
                with self._lock:
                    self.retries += 1
                if exc.retry_after is not None:
                    delay = min(exc.retry_after, self.max_retry_after)
                    with self._lock:  # every thread waits (in _wait_turn), not only this one
                        self._not_before = max(self._not_before, time.monotonic() + delay)
                else:
                    self.sleep(self._backoff(attempt))
                continue
            if self._api_key and self._api_key in response.text:
                response = ChatResponse(self.redact(response.text), response.tokens, response.prompt_tokens,
                                        response.completion_tokens)
            return response
        raise BackendError(self.redact(f"gave up after {self.max_retries + 1} attempts; last: {last}"))
