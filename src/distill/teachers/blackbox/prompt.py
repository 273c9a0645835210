"""Turn one input text and the label set into chat messages."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass

from distill.config import DEFAULT_BLACKBOX_PROMPT
from distill.teachers.blackbox.backend import Message

PLACEHOLDERS = frozenset({"text", "text_pair", "labels"})


def _fields(template: str) -> set[str]:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"prompt template: {exc}; write a literal brace as {{{{ or }}}}") from None
    unknown = sorted(names - PLACEHOLDERS)
    if unknown:
        # only bare names: "{text.__class__}" or "{0}" would reach into Python objects or positional args
        raise ValueError(f"prompt template: unknown placeholder {{{unknown[0]}}}; use {sorted(PLACEHOLDERS)}")
    return names


@dataclass(frozen=True)
class PromptTemplate:
    """A user message (and optional system message) with ``{text}``, ``{text_pair}`` and ``{labels}``."""

    user: str = DEFAULT_BLACKBOX_PROMPT
    system: str | None = None

    def __post_init__(self) -> None:
        if "text" not in _fields(self.user):
            raise ValueError("prompt template: the user message needs a {text} placeholder")
        if self.system:
            _fields(self.system)

    @property
    def fingerprint(self) -> str:
        """Identifies the template in the response-store key."""
        return hashlib.sha256(json.dumps([self.system, self.user]).encode("utf-8")).hexdigest()[:16]

    def render(self, text: str, labels: list[str], text_pair: str | None = None,
               shots: Sequence[tuple[str, str | None, int]] = ()) -> list[Message]:
        """The messages for one text; ``shots`` (text, text_pair, label index) come first, as turns the
        assistant answered with the label."""
        values = {"text": text, "labels": ", ".join(labels), "text_pair": text_pair or ""}
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system.format(**values)})
        for shot_text, shot_pair, shot_label in shots:
            shown = {**values, "text": shot_text, "text_pair": shot_pair or ""}
            messages.append({"role": "user", "content": self.user.format(**shown)})
            messages.append({"role": "assistant", "content": labels[shot_label]})
        messages.append({"role": "user", "content": self.user.format(**values)})
        return messages
