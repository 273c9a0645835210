"""Demonstrations for a black-box teacher: a few human-labelled rows shown before each text.

The examples become earlier turns of the chat (the prompt filled with the example's text, answered by its
label name), so they are part of the messages and therefore of each answer's response-store key: a change of
examples is a new question, an unchanged one is read back for free. The pick depends only on the seed, the
labelled pool and the text itself (never on the order or the batch the text arrives in), so a rerun renders
the same prompts. A text is never its own example.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Shot = tuple[str, str | None, int]  # (text, text_pair, label index)
Embed = Callable[[list[str]], np.ndarray]


def _text_seed(seed: int, text: str, pair: str | None) -> list[int]:
    digest = hashlib.sha256(f"{text}\x00{pair or ''}".encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


@dataclass
class Demonstrations:
    """Picks ``k`` examples per text from a labelled pool (``texts``, ``pairs``, ``labels``)."""

    texts: list[str]
    labels: list[int]
    k: int
    selection: Literal["balanced", "random", "nearest"] = "balanced"
    seed: int = 0
    pairs: list[str] | None = None
    embed: Embed | None = None
    """``nearest``: texts -> (N, D) embeddings (any local sentence encoder)."""

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ValueError("demonstrations: k must be positive")
        if not self.texts:
            raise ValueError("demonstrations: the labelled pool is empty")
        if self.selection == "nearest" and self.embed is None:
            raise ValueError("demonstrations: nearest needs an encoder")
        self._keys = [(t, None if self.pairs is None else self.pairs[i]) for i, t in enumerate(self.texts)]
        self._index: dict[tuple[str, str | None], set[int]] = {}  # a text asked about -> its pool rows
        for i, key in enumerate(self._keys):
            self._index.setdefault(key, set()).add(i)
        self._all = list(range(len(self._keys)))
        self._by_class: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            self._by_class.setdefault(int(label), []).append(i)
        self._members = {c: set(rows) for c, rows in self._by_class.items()}
        self._pool_emb: np.ndarray | None = None

    def _shot(self, i: int) -> Shot:
        return self._keys[i][0], self._keys[i][1], int(self.labels[i])

    def pick(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[list[Shot]]:
        """The examples for every text, in input order."""
        keys = [(t, None if pairs is None else pairs[i]) for i, t in enumerate(texts)]
        if self.selection == "nearest":
            return self._nearest(keys)
        return [self._drawn(text, pair) for text, pair in keys]

    def _drawn(self, text: str, pair: str | None) -> list[Shot]:
        rng = np.random.default_rng(_text_seed(self.seed, text, pair))
        own = self._index.get((text, pair), set())
        if self.selection == "random":
            return [self._shot(i) for i in _distinct(rng, self._all, self.k, own)]
        classes = sorted(self._by_class)
        order = [classes[j] for j in rng.permutation(len(classes))]
        want = dict.fromkeys(classes, 0)
        left = {c: len(self._by_class[c]) - len(own & self._members[c]) for c in classes}
        total = 0
        while total < min(self.k, sum(left.values())):  # cycle through the classes, skipping exhausted ones
            for c in order:
                if total < self.k and want[c] < left[c]:
                    want[c] += 1
                    total += 1
        picked = {c: _distinct(rng, self._by_class[c], want[c], own) for c in classes}
        return [self._shot(picked[c][round_]) for round_ in range(max(want.values(), default=0))
                for c in order if round_ < want[c]]

    def _nearest(self, keys: list[tuple[str, str | None]]) -> list[list[Shot]]:
        assert self.embed is not None

        def joined(key: tuple[str, str | None]) -> str:
            return key[0] if key[1] is None else f"{key[0]} {key[1]}"

        if self._pool_emb is None:
            self._pool_emb = _unit(self.embed([joined(k) for k in self._keys]))
        queries = _unit(self.embed([joined(k) for k in keys]))
        sims = queries @ self._pool_emb.T  # (Q, P)
        out = []
        for q, key in enumerate(keys):
            order = np.lexsort((np.arange(sims.shape[1]), -sims[q]))  # most similar first, ties by index
            chosen = [int(i) for i in order if self._keys[i] != key][: self.k]
            out.append([self._shot(i) for i in reversed(chosen)])  # the most similar ends next to the text
        return out


def _distinct(rng: np.random.Generator, rows: list[int], m: int, exclude: set[int]) -> list[int]:
    """``m`` distinct entries of ``rows`` outside ``exclude``, in draw order: O(m) draws for a large pool
    (rejection), one permutation for a small one."""
    if len(rows) <= 64 or (m + len(exclude)) * 4 > len(rows):
        return [r for r in (rows[j] for j in rng.permutation(len(rows))) if r not in exclude][:m]
    out: list[int] = []
    seen = set()
    while len(out) < m:
        r = rows[int(rng.integers(len(rows)))]
        if r not in exclude and r not in seen:
            seen.add(r)
            out.append(r)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def local_encoder(name: str) -> Embed:
    """A sentence encoder run here (``packaged:NAME``, a local directory or a hub id) as texts -> vectors."""
    import torch

    from distill.evaluation.embedding import encode
    from distill.models import load_tokenizer
    from distill.sentence_encoder import describe, load_encoder, resolve_encoder_dir

    where = resolve_encoder_dir(name)
    model = load_encoder(where)
    tokenizer = load_tokenizer(describe(where)["backbone"])

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return encode(model, tokenizer, list(texts), max_length=128)

    return embed
