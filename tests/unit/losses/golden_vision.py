"""Hand-computed golden values for the image losses (``fitnet``, ``at``, ``dkd``), in plain ``math``.

Written from the docstrings of ``distill.losses.feature`` without importing it, so a bug there cannot leak
into the expected values. ``test_golden_vision.py`` runs every case of :func:`cases` through ``distill``.

A case: ``loss``, ``params``, ``student`` / ``teacher`` (dicts of ModelOutputs fields: ``feature_maps`` as
{name: nested list (B, C, H, W)} or ``logits`` as (B, C) rows), optional ``labels``, optional ``state``
(projector weights, loaded after a first call has built the projectors) and ``expected``.

    python tests/unit/losses/golden_vision.py    # prints every case
"""

from __future__ import annotations

import math
from typing import Any

GOLDEN_LOSSES = ("fitnet", "at", "dkd")
"""The registered losses this module holds golden values for (read by test_golden.py's coverage check)."""

Map = list[list[list[list[float]]]]  # (B, C, H, W)


def flat(x: Any) -> list[float]:
    return [v for item in x for v in flat(item)] if isinstance(x, list) else [float(x)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def avg_pool_half(m: Map) -> Map:
    """2x2 average pooling (what adaptive pooling from 4x4 to 2x2 does)."""
    return [[[[mean([ch[2 * i][2 * j], ch[2 * i][2 * j + 1], ch[2 * i + 1][2 * j], ch[2 * i + 1][2 * j + 1]])
               for j in range(len(ch[0]) // 2)] for i in range(len(ch) // 2)] for ch in ex] for ex in m]


def conv1x1(m: Map, weight: list[list[float]], bias: list[float]) -> Map:
    """1x1 convolution: out[o] = sum_c weight[o][c] * in[c] + bias[o] at every position."""
    out = []
    for ex in m:
        h, w = len(ex[0]), len(ex[0][0])
        out.append([[[sum(weight[o][c] * ex[c][i][j] for c in range(len(ex))) + bias[o] for j in range(w)]
                     for i in range(h)] for o in range(len(weight))])
    return out


def fitnet_pair(s: Map, t: Map, kind: str = "mse") -> float:
    d = [a - b for a, b in zip(flat(s), flat(t))]
    return mean([x * x for x in d]) if kind == "mse" else mean([abs(x) for x in d])


def attention(m: Map, p: float) -> list[list[float]]:
    """Per example: mean over channels of |F|^p, flattened, divided by its L2 norm."""
    rows = []
    for ex in m:
        h, w = len(ex[0]), len(ex[0][0])
        a = [mean([abs(ch[i][j]) ** p for ch in ex]) for i in range(h) for j in range(w)]
        n = math.sqrt(sum(x * x for x in a))
        rows.append([x / n for x in a])
    return rows


def at_pair(s: Map, t: Map, p: float = 2.0) -> float:
    a_s, a_t = attention(s, p), attention(t, p)
    return mean([(x - y) ** 2 for rs, rt in zip(a_s, a_t) for x, y in zip(rs, rt)])


def softmax(row: list[float], temperature: float) -> list[float]:
    top = max(row)
    e = [math.exp((x - top) / temperature) for x in row]
    z = sum(e)
    return [x / z for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def dkd(student: list[list[float]], teacher: list[list[float]], labels: list[int], temperature: float,
        alpha: float, beta: float) -> float:
    tck, nck = [], []
    for zs, zt, y in zip(student, teacher, labels):
        if y == -100:
            continue
        p, q = softmax(zt, temperature), softmax(zs, temperature)
        tck.append(kl([p[y], 1 - p[y]], [q[y], 1 - q[y]]))
        p_hat = [v / (1 - p[y]) for j, v in enumerate(p) if j != y]
        q_hat = [v / (1 - q[y]) for j, v in enumerate(q) if j != y]
        nck.append(kl(p_hat, q_hat))
    return temperature**2 * (alpha * mean(tck) + beta * mean(nck))


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------

S2: Map = [[[[0.5, -1.0], [2.0, 0.0]], [[1.0, 1.5], [-0.5, 0.25]]]]  # (1, 2, 2, 2)
T2: Map = [[[[0.0, -0.5], [1.0, 1.0]], [[2.0, 0.5], [0.5, -1.0]]]]  # (1, 2, 2, 2)
S1: Map = [[[[1.0, -2.0], [0.5, 3.0]]], [[[0.0, 1.0], [-1.0, 2.0]]]]  # (2, 1, 2, 2)
T2B: Map = [[[[1.0, 0.0], [0.5, 2.0]], [[-1.0, 1.0], [0.0, 0.5]]],
            [[[0.5, 0.5], [1.0, -1.0]], [[2.0, 0.0], [1.5, 1.0]]]]  # (2, 2, 2, 2)
T4: Map = [[[[1.0, 2.0, 0.0, -1.0], [3.0, 0.0, 1.0, 1.0], [0.5, 0.5, 2.0, -2.0],
             [1.0, 1.5, 0.0, 4.0]]]]  # (1,1,4,4)
S1X: Map = [[[[0.5, 1.0], [-1.0, 2.0]]]]  # (1, 1, 2, 2)
W = [[0.5], [-1.0]]  # 1x1 conv weight (out 2, in 1)
BIAS = [0.1, -0.2]
Z_S = [[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 1.5, -0.5], [0.0, 0.0, 0.0, 0.0]]
Z_T = [[2.0, -1.0, 0.0, 1.0], [0.0, 1.0, 3.0, 0.0], [1.0, 2.0, 0.0, 0.0]]
LABELS = [0, 2, -100]


def cases() -> list[dict[str, Any]]:
    return [
        {"id": "fitnet-mse-same-channels", "loss": "fitnet", "params": {},
         "student": {"feature_maps": {"a": S2}}, "teacher": {"feature_maps": {"b": T2}},
         "expected": fitnet_pair(S2, T2)},
        {"id": "fitnet-l1-projector", "loss": "fitnet", "params": {"layer_map": [["x", "y"]], "loss": "l1"},
         "student": {"feature_maps": {"x": S1}}, "teacher": {"feature_maps": {"y": T2B}},
         "state": {"projectors.0.weight": [[[[w[0]]]] for w in W], "projectors.0.bias": BIAS},
         "expected": fitnet_pair(conv1x1(S1, W, BIAS), T2B, "l1")},
        {"id": "fitnet-pooled-two-pairs", "loss": "fitnet",
         "params": {"layer_map": {"s1": "t1", "s2": "t2"}, "projector": "none"},
         "student": {"feature_maps": {"s1": S1X, "s2": S2}},
         "teacher": {"feature_maps": {"t1": T4, "t2": T2}},
         "expected": (fitnet_pair(S1X, avg_pool_half(T4)) + fitnet_pair(S2, T2)) / 2},
        {"id": "at-p2", "loss": "at", "params": {},
         "student": {"feature_maps": {"a": S2}}, "teacher": {"feature_maps": {"b": T2}},
         "expected": at_pair(S2, T2)},
        {"id": "at-p1-pooled-and-batch", "loss": "at", "params": {"layer_map": [[0, 0], [1, -1]], "p": 1.0},
         "student": {"feature_maps": {"s": S1X, "u": S1}}, "teacher": {"feature_maps": {"t": T4, "v": T2B}},
         "expected": (at_pair(S1X, avg_pool_half(T4), 1.0) + at_pair(S1, T2B, 1.0)) / 2},
        {"id": "dkd-paper", "loss": "dkd", "params": {},
         "student": {"logits": Z_S}, "teacher": {"logits": Z_T}, "labels": LABELS,
         "expected": dkd(Z_S, Z_T, LABELS, 4.0, 1.0, 8.0)},
        {"id": "dkd-T2-a0.5-b2", "loss": "dkd", "params": {"temperature": 2.0, "alpha": 0.5, "beta": 2.0},
         "student": {"logits": Z_S}, "teacher": {"logits": Z_T}, "labels": LABELS,
         "expected": dkd(Z_S, Z_T, LABELS, 2.0, 0.5, 2.0)},
        {"id": "dkd-is-kd-at-alpha1-beta1-minus-py", "loss": "dkd",
         "params": {"temperature": 1.0, "alpha": 1.0, "beta": 1.0},
         "student": {"logits": [[0.3, -0.2, 1.0]]}, "teacher": {"logits": [[1.0, 0.5, -1.0]]}, "labels": [1],
         "expected": dkd([[0.3, -0.2, 1.0]], [[1.0, 0.5, -1.0]], [1], 1.0, 1.0, 1.0)},
    ]


if __name__ == "__main__":
    for c in cases():
        print(f"{c['id']:40s} {c['expected']:.10f}")
