"""Read a label out of a free-text answer, and soft labels out of token log-probabilities.

The rules, in order: case, width, hyphens and underscores are ignored; a label counts only as a whole word
(or phrase), or as one of its configured synonyms; a label right after "not" / "n't" / "never" / "neither"
/ "nor" does not count; when the answer has an explicit ``answer:`` / ``label:`` marker, the text after the
last one is read first; otherwise the first label mentioned wins, unless it is offered as an alternative
("positive or negative", "positive/negative"), which is ambiguous. An answer naming no label, or an
ambiguous one, is *unparseable*: it is counted and reported, never guessed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from distill.teachers.blackbox.backend import TokenChoice

_STRIP = " \t\r\n.,;:!?\"'`*()[]{}<>#/|"
# "not positive", "isn't really positive": one optional degree word between the negation and the label
_NEGATED = re.compile(
    r"(?:\b(?:not|never|neither|nor)|n't)\W+(?:(?:very|really|quite|entirely|particularly|overly|so|too|that|"
    r"strictly|clearly|necessarily)\W+)?$"
)
# what may stand between two labels offered as alternatives: separators and "or"/"and"/"vs"
_ALTERNATION = re.compile(r"[\s,/|&;+()\[\]\"'*]*"
                          r"(?:(?:or|and|and/or|vs\.?|versus|nor)\b[\s,/|&;+()\[\]\"'*.]*)?")
_MARKER = re.compile(r"\b(?:answer|label|category|class|classification|sentiment|topic)"
                     r"[\"']?\s*(?:is\s*)?[:=]")


def normalise(text: str) -> str:
    """Case-folded, NFKC, typographic apostrophes made plain, hyphens/underscores as spaces, spaces
    collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    text = re.sub(r"[_\-\u2010\u2013\u2014]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class ParseResult:
    """``label`` is the label index, or None with ``reason`` saying why the answer is unparseable."""

    label: int | None
    reason: str = "ok"

    @property
    def ok(self) -> bool:
        return self.label is not None


class LabelParser:
    """Parse answers against ``labels`` (names in id order) and optional ``synonyms`` (label -> words)."""

    def __init__(self, labels: Sequence[str], synonyms: dict[str, list[str]] | None = None):
        self.labels = list(labels)
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels: each label must appear once, got {self.labels}")
        owner: dict[str, int] = {}
        for idx, label in enumerate(self.labels):
            self._add(owner, label, idx, f"label {label!r}")
        for label, words in (synonyms or {}).items():
            if label not in self.labels:
                raise ValueError(f"{label!r} is not a label; the labels are {self.labels}")
            for word in words:
                self._add(owner, word, self.labels.index(label), f"synonym {word!r} of {label!r}")
        self._owner = owner
        # longest names first, so "very positive" wins over "positive" at the same position
        names = sorted(owner, key=len, reverse=True)
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in names) + r")(?!\w)")

    def _add(self, owner: dict[str, int], word: str, idx: int, what: str) -> None:
        name = normalise(word)
        if not name.strip(_STRIP):
            raise ValueError(f"{what} is empty once punctuation and case are ignored")
        if owner.get(name, idx) != idx:
            raise ValueError(f"{what} also names the label {self.labels[owner[name]]!r}; "
                             "a word may name one label")
        owner[name] = idx

    # -- hard labels ------------------------------------------------------------------------------------
    def parse(self, answer: str) -> ParseResult:
        text = normalise(answer or "")
        if not text.strip(_STRIP):
            return ParseResult(None, "empty answer")
        markers = list(_MARKER.finditer(text))
        if markers:
            result = self._decide(text[markers[-1].end():])
            if result.ok or result.reason.startswith("ambiguous"):
                return result
        return self._decide(text)

    def _decide(self, text: str) -> ParseResult:
        mentions = [(m.start(), m.end(), self._owner[m.group()]) for m in self._pattern.finditer(text)]
        kept = [m for m in mentions if not _NEGATED.search(text[max(0, m[0] - 40):m[0]])]
        if not kept:
            return ParseResult(None, "only negated labels" if mentions else "no label named")
        _, end, label = kept[0]
        other = next((m for m in kept[1:] if m[2] != label), None)
        if other is not None and _ALTERNATION.fullmatch(text[end:other[0]]):
            return ParseResult(None, f"ambiguous: {self.labels[label]!r} or {self.labels[other[2]]!r}")
        return ParseResult(label)

    # -- soft labels ------------------------------------------------------------------------------------
    def token_label(self, token: str) -> int | None:
        """The label a single answer token starts: an exact name, else the one label whose name begins with
        it."""
        piece = normalise(token).strip(_STRIP)
        if not piece:
            return None
        hits = {idx for name, idx in self._owner.items() if name == piece}
        if not hits:
            hits = {idx for name, idx in self._owner.items() if name.startswith(piece)}
        return hits.pop() if len(hits) == 1 else None

    def soft_labels(self, tokens: Sequence[TokenChoice] | None, label: int | None) -> list[float] | None:
        """A distribution over the labels from the first non-blank answer token's alternatives (their
        probabilities summed per label and renormalised over the tokens that name a label).

        None unless that token itself starts the parsed ``label``: when the answer opens with other words
        ("The sentiment is ..."), its first-token alternatives say nothing about the label.
        """
        if not tokens or label is None:
            return None
        first = next((t for t in tokens if normalise(t.token).strip(_STRIP)), None)
        if first is None or self.token_label(first.token) != label:
            return None
        mass = [0.0] * len(self.labels)
        seen: set[str] = set()
        for token, logprob in ((first.token, first.logprob), *first.top):
            if token in seen:  # the chosen token is usually also listed among the alternatives
                continue
            seen.add(token)
            idx = self.token_label(token)
            if idx is not None and math.isfinite(logprob):
                mass[idx] += math.exp(logprob)
        total = sum(mass)
        return [m / total for m in mass] if total > 0 else None
