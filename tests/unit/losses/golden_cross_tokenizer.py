"""Hand-computed reference for the registered cross-tokenizer loss ``alm``, in plain Python ``math``.

Nothing here imports torch or distill: the formula of ``ALMLoss``'s docstring written out with loops over
nested lists (logits ``[b][position][vocab]``, labels ``[b][position]`` with -100 for untrained positions),
so ``test_cross_tokenizer.py`` compares two independent implementations.
"""

from __future__ import annotations

import math

GOLDEN_LOSSES = ("alm", "hybrid_kl")  # checked by test_cross_tokenizer.py


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


def generalised_kl(p: float, logp: float, logq: float) -> float:
    return (p * (logp - logq) if p > 0 else 0.0) - p + math.exp(logq)


def hybrid_same_tokenizer(student_logits, teacher_logits, labels) -> float:
    """Every trained position is a group and every token is shared: the forward KL of the distributions."""
    total, n = 0.0, 0
    for b in range(len(labels)):
        for k, y in enumerate(labels[b]):
            if y < 0:
                continue
            n += 1
            lp, lq = log_softmax(teacher_logits[b][k]), log_softmax(student_logits[b][k])
            total += sum(generalised_kl(math.exp(a), a, c) for a, c in zip(lp, lq))
    return total / max(n, 1)


def hybrid_groups(student_logits, labels, student_chunks, topk_ids, topk_logp, valid, shared_vocab,
                  unshared_weight: float = 1.0) -> float:
    """The group path written out: the student's merged distribution of group g is the sum of its earlier
    positions' observed log-probabilities plus the log-softmax at its last position."""
    obs = observed(student_logits, labels)
    total, n = 0.0, 0
    for b in range(len(labels)):
        n += sum(1 for y in labels[b] if y >= 0)
        for g in range(len(topk_ids[b])):
            positions = [t for t, c in enumerate(student_chunks[b]) if c == g and labels[b][t] >= 0]
            if not valid[b][g] or not positions:
                continue
            last = max(positions)
            prefix = sum(obs[b][t] for t in positions if t != last)
            merged = [prefix + v for v in log_softmax(student_logits[b][last])]
            kl = 0.0
            p_u = []
            for tid, lp in zip(topk_ids[b][g], topk_logp[b][g]):
                if tid >= 0:
                    kl += generalised_kl(math.exp(lp), lp, merged[tid])
                    p_u.append(0.0)
                else:
                    p_u.append(math.exp(lp))
            k = len(p_u)
            q_u = sorted((math.exp(v) for y, v in enumerate(merged) if not shared_vocab[y]), reverse=True)[:k]
            p_s = sorted(p_u, reverse=True)
            width = max(len(p_s), len(q_u))
            p_s += [0.0] * (width - len(p_s))
            q_u += [0.0] * (width - len(q_u))
            uld = sum(abs(a - c) for a, c in zip(p_s, q_u))
            total += kl + unshared_weight * uld
    return total / max(n, 1)
