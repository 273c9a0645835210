"""Hand-computed reference values for the attention and relation losses, in plain Python ``math``.

Nothing here imports torch or distill: each function is the loss's docstring formula written out with loops
over lists, so ``test_golden_relations.py`` compares two independent implementations. Shapes use nested lists:
q/k/v ``[b][head][token][dim]``, hidden states ``[b][token][dim]``, masks ``[b][token]`` of 0/1.
"""

from __future__ import annotations

import math
import random

GOLDEN_LOSSES = ("attention_mse", "minilm", "minilm_v2", "trg")  # checked by test_golden_relations.py
# (the PKD form of ``hidden`` is checked there too; ``hidden`` itself has cases in golden_reference.py)

Matrix = list[list[float]]


# ---------------------------------------------------------------------------------------------- primitives
def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def norm(a: list[float]) -> list[float]:
    n = math.sqrt(dot(a, a))
    return [x / max(n, 1e-12) for x in a]


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(x - top) for x in row]
    s = sum(e)
    return [x / s for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def real_tokens(mask: list[int]) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


def relation_rows(x: Matrix, y: Matrix, real: list[int]) -> dict[int, list[float]]:
    """softmax_j(x_i . y_j / sqrt(d)) over real j, for every real i."""
    d = len(x[0])
    return {i: softmax([dot(x[i], y[j]) / math.sqrt(d) for j in real]) for i in real}


def random_tensor(rng: random.Random, *dims: int) -> list:
    if len(dims) == 1:
        return [round(rng.uniform(-2, 2), 3) for _ in range(dims[0])]
    return [random_tensor(rng, *dims[1:]) for _ in range(dims[0])]


# --------------------------------------------------------------------------------------------------- MiniLM
def minilm_relation(xt, yt, xs, ys, mask) -> float:
    """mean over examples of 1/(A |x|) sum_a sum_t KL(R^T_{a,t} || R^S_{a,t}); x*/y* [b][a][t][d]."""
    per_example = []
    for b in range(len(mask)):
        real = real_tokens(mask[b])
        if not real:
            continue
        heads = len(xt[b])
        total = 0.0
        for a in range(heads):
            rt = relation_rows(xt[b][a], yt[b][a], real)
            rs = relation_rows(xs[b][a], ys[b][a], real)
            total += sum(kl(rt[i], rs[i]) for i in real)
        per_example.append(total / (heads * len(real)))
    return sum(per_example) / len(per_example)


def minilm_v1(s_qkv, t_qkv, mask) -> dict[str, float]:
    (qs, ks, vs), (qt, kt, vt) = s_qkv, t_qkv
    return {"attention": minilm_relation(qt, kt, qs, ks, mask),
            "value": minilm_relation(vt, vt, vs, vs, mask)}


def to_relation_heads(x, heads: int):
    """[b][a][t][d] -> concatenate the heads per token, re-split into ``heads`` pieces: [b][r][t][d_r]."""
    out = []
    for xb in x:
        tokens = len(xb[0])
        concat = [[v for a in range(len(xb)) for v in xb[a][t]] for t in range(tokens)]
        width = len(concat[0]) // heads
        out.append([[concat[t][r * width:(r + 1) * width] for t in range(tokens)] for r in range(heads)])
    return out


def minilm_v2(s_qkv, t_qkv, mask, relation_heads: int, relations=("qq", "kk", "vv")) -> dict[str, float]:
    idx = {"q": 0, "k": 1, "v": 2}
    s = [to_relation_heads(x, relation_heads) for x in s_qkv]
    t = [to_relation_heads(x, relation_heads) for x in t_qkv]
    return {rel: minilm_relation(t[idx[rel[0]]], t[idx[rel[1]]], s[idx[rel[0]]], s[idx[rel[1]]], mask)
            / len(relations) for rel in relations}


# -------------------------------------------------------------------------------------------- attention MSE
def attention_mse(s_pairs, t_pairs, mask, on: str = "scores", head_mean: bool = False) -> float:
    """mean over layer pairs of the mean squared difference over heads and real (query, key) pairs.
    ``s_pairs`` / ``t_pairs``: one (q, k) per pair, each [b][a][t][d]."""
    values = []
    for (qs, ks), (qt, kt) in zip(s_pairs, t_pairs):
        sq, count = 0.0, 0
        for b in range(len(mask)):
            real = real_tokens(mask[b])

            def maps(q, k, b=b, real=real):
                out = []
                for a in range(len(q[b])):
                    d = len(q[b][a][0])
                    rows = {i: [dot(q[b][a][i], k[b][a][j]) / math.sqrt(d) for j in real] for i in real}
                    if on == "probs":
                        rows = {i: softmax(r) for i, r in rows.items()}
                    out.append(rows)
                if head_mean:
                    out = [{i: [sum(h[i][j] for h in out) / len(out) for j in range(len(real))]
                            for i in real}]
                return out

            ms, mt = maps(qs, ks), maps(qt, kt)
            for hs, ht in zip(ms, mt):
                for i in real:
                    for j in range(len(real)):
                        sq += (hs[i][j] - ht[i][j]) ** 2
                        count += 1
        values.append(sq / count)
    return sum(values) / len(values)


# --------------------------------------------------------------------------------------------------- hidden
def pkd_hidden(hs_pairs, ht_pairs, mask) -> float:
    """PKD: mean over pairs of mean_{b, h} (s/||s|| - t/||t||)^2 of each example's first real token."""
    values = []
    for hs, ht in zip(hs_pairs, ht_pairs):
        total = 0.0
        for b in range(len(mask)):
            first = real_tokens(mask[b])[0]
            s, t = norm(hs[b][first]), norm(ht[b][first])
            total += sum((x - y) ** 2 for x, y in zip(s, t)) / len(s)
        values.append(total / len(mask))
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------------------ TRG
def trg_inner(hs, ht, mask) -> float:
    per_example = []
    for b in range(len(mask)):
        real = real_tokens(mask[b])
        if not real:
            continue
        cs = relation_rows(hs[b], hs[b], real)
        ct = relation_rows(ht[b], ht[b], real)
        sq = sum((cs[i][j] - ct[i][j]) ** 2 for i in real for j in range(len(real)))
        per_example.append(sq / len(real) ** 2)
    return sum(per_example) / len(per_example)


def trg_nodes(h, mask) -> list[list[float]]:
    return [h[b][i] for b in range(len(mask)) for i in real_tokens(mask[b])]


def trg_local(hs, ht, mask, k: int, sigma: float) -> float:
    s = [norm(x) for x in trg_nodes(hs, mask)]
    t = [norm(x) for x in trg_nodes(ht, mask)]
    n = len(t)
    k = min(k, n - 1)

    def sqdist(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b))

    total = 0.0
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: sqdist(t[i], t[j]))[:k]
        p = softmax([-sqdist(t[i], t[j]) / (2 * sigma) for j in others])
        q = softmax([-sqdist(s[i], s[j]) / (2 * sigma) for j in others])
        total += kl(p, q)
    return total / n


def trg_global(hs, ht, mask, tau: float) -> float:
    """InfoNCE with an identity projector (equal widths): the same node of the teacher is the positive."""
    s = [norm(x) for x in trg_nodes(hs, mask)]
    t = [norm(x) for x in trg_nodes(ht, mask)]
    total = 0.0
    for i in range(len(s)):
        logits = [dot(s[i], t[j]) / tau for j in range(len(t))]
        top = max(logits)
        total += -(logits[i] - top - math.log(sum(math.exp(x - top) for x in logits)))
    return total / len(s)
