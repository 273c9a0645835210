"""Hand-computed reference for the registered cross-tokenizer loss ``alm``, in plain Python ``math``.

Nothing here imports torch or distill: the formula of ``ALMLoss``'s docstring written out with loops over
nested lists (logits ``[b][position][vocab]``, labels ``[b][position]`` with -100 for untrained positions),
so ``test_cross_tokenizer.py`` compares two independent implementations.
"""

from __future__ import annotations

import math

GOLDEN_LOSSES = ("alm",)  # checked by test_cross_tokenizer.py


def log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    lse = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - lse for x in row]


def bernoulli_kl(c_t: float, c_s: float, tau: float) -> float:
    a, b = math.exp(min(c_t, 0.0) / tau), math.exp(min(c_s, 0.0) / tau)
    out = a * math.log(a / b)
    if a < 1.0:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def observed(logits: list[list[list[float]]], labels: list[list[int]]) -> list[list[float | None]]:
    return [[log_softmax(logits[b][t])[y] if y >= 0 else None for t, y in enumerate(labels[b])]
            for b in range(len(labels))]


def alm_same_tokenizer(student_logits, teacher_logits, labels, tau: float = 1.0) -> float:
    """Every trained position is a group of one token."""
    s, t = observed(student_logits, labels), observed(teacher_logits, labels)
    total, n = 0.0, 0
    for b in range(len(labels)):
        for k in range(len(labels[b])):
            if s[b][k] is not None:
                total += bernoulli_kl(t[b][k], s[b][k], tau)
                n += 1
    return total / max(n, 1)


def alm_groups(student_logits, labels, student_chunks, teacher_chunk_ll, teacher_valid,
               tau: float = 1.0) -> float:
    """Student positions grouped by ``student_chunks`` (-1: none); a group counts when the teacher marks it
    valid and at least one trained student position belongs to it."""
    s = observed(student_logits, labels)
    total, n = 0.0, 0
    for b in range(len(labels)):
        c_s: dict[int, float] = {}
        for k, g in enumerate(student_chunks[b]):
            if s[b][k] is None:
                continue
            n += 1
            if g >= 0:
                c_s[g] = c_s.get(g, 0.0) + s[b][k]
        for g, value in c_s.items():
            if teacher_valid[b][g]:
                total += bernoulli_kl(teacher_chunk_ll[b][g], value, tau)
    return total / max(n, 1)
