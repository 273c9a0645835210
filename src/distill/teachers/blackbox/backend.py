"""The contract every black-box teacher fulfils: messages in, one answer (text, optional token
log-probabilities, token usage) out. The HTTP client and the local generative model both implement it, so
the labeler, the store and the parser never know which one they talk to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


class BackendError(RuntimeError):
    """One request failed for good (after its retries): that text stays unlabelled and is reported."""


class FatalBackendError(BackendError):
    """Every request would fail the same way (refused key, unknown model, rejected request): labelling
    stops."""


@dataclass(frozen=True)
class TokenChoice:
    """One generated token, its log-probability and the most likely alternatives at that position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ChatResponse:
    """What a teacher answered. ``tokens`` is None when no log-probabilities were asked for or returned."""

    text: str
    tokens: tuple[TokenChoice, ...] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Backend(ABC):
    """A teacher that answers chat messages."""

    #: most requests worth running at once; None: whatever the caller asks for
    max_concurrency: int | None = None

    @property
    @abstractmethod
    def identity(self) -> str:
        """Names the model that answers (endpoint model name, or local weights fingerprint); part of the
        response-store key, so answers of another model are never reused."""

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Generation parameters that change the answer (temperature, max tokens, log-probabilities);
        part of the response-store key."""

    @abstractmethod
    def complete(self, messages: list[Message]) -> ChatResponse:
        """Answer one conversation; raises :class:`BackendError` when it cannot."""

    def counters(self) -> dict[str, int]:
        """Request counters for the run statistics (e.g. HTTP requests and retries)."""
        return {}
