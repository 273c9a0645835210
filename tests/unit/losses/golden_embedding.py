"""Hand-computed golden values for the embedding-level losses, in plain ``math`` (no torch, no distill).

The formulas are written straight from the docstrings of ``distill.losses.embedding`` (and METHODS.md 3.5 for
the affinity loss); nothing here imports the code under test, so a bug there cannot leak into the expected
values. ``test_golden_embedding.py`` runs every case in :func:`cases` through ``distill`` and compares.

A case is a dict: ``loss`` and ``params`` (the recipe entry), ``context`` (LossContext fields), ``student`` /
``teacher`` (names of (B, D) embedding matrices in :data:`INPUTS`), optional ``state`` (tensors loaded into
the loss before the call: projector or head weights, the CRD queue) and ``expected``.

    python tests/unit/losses/golden_embedding.py    # prints every case
"""

from __future__ import annotations

import math
from typing import Any

Vector = list[float]
Matrix = list[Vector]

GOLDEN_LOSSES = ("embedding", "affinity", "contrastive", "crd", "similarity_matrix", "similarity_ranking",
                 "neighbourhood")
"""The registered losses this module holds golden values for (read by test_golden.py's coverage check)."""


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------


def dot(a: Vector, b: Vector) -> float:
    return sum(x * y for x, y in zip(a, b))


def norm(a: Vector) -> float:
    return math.sqrt(dot(a, a))


def unit(a: Vector) -> Vector:
    n = norm(a)
    return [x / n for x in a]


def linear(vec: Vector, weight: Matrix, bias: Vector) -> Vector:
    """``W x + b`` with ``W`` given as (out, in), like ``nn.Linear.weight``."""
    return [dot(w_row, vec) + b for w_row, b in zip(weight, bias)]


def log_softmax(row: Vector) -> Vector:
    top = max(row)
    log_norm = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_norm for x in row]


def kl(log_p: Vector, log_q: Vector) -> float:
    """KL(P||Q) from log-probabilities."""
    return sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def cross_entropy_diagonal(logits: Matrix) -> float:
    """Mean over rows i of -log softmax(logits[i])[i] (row i's positive is column i)."""
    return mean([-log_softmax(row)[i] for i, row in enumerate(logits)])


# ----------------------------------------------------------------------------------------------------------
# The four losses
# ----------------------------------------------------------------------------------------------------------


def embedding_value(
    es: Matrix, et: Matrix, dist: str, projector: tuple[Matrix, Vector] | None = None
) -> float:
    """mse: mean over rows and features of (W e_s - e_t)^2; cosine: mean over rows of 1 - cos."""
    if projector is not None:
        es = [linear(row, *projector) for row in es]
    if dist == "mse":
        return mean([(x - y) ** 2 for a, b in zip(es, et) for x, y in zip(a, b)])
    return mean([1.0 - dot(a, b) / (norm(a) * norm(b)) for a, b in zip(es, et)])


def affinity_rows(e: Matrix, tau: float, include_self: bool) -> Matrix:
    """Row i: cos(e_i, e_j) / tau over j (j != i unless include_self)."""
    u = [unit(row) for row in e]
    return [[dot(u[i], u[j]) / tau for j in range(len(u)) if include_self or j != i] for i in range(len(u))]


def affinity_value(es: Matrix, et: Matrix, tau: float, include_self: bool) -> float:
    """Mean over rows of KL(softmax(A_T[i]) || softmax(A_S[i])), teacher as the target."""
    a_s, a_t = affinity_rows(es, tau, include_self), affinity_rows(et, tau, include_self)
    if not a_s[0]:
        return 0.0
    return mean([kl(log_softmax(t), log_softmax(s)) for s, t in zip(a_s, a_t)])


def contrastive_value(
    es: Matrix, et: Matrix, tau: float, projector: tuple[Matrix, Vector] | None = None
) -> float:
    """CE of the (B, B) cosine logits / tau with targets arange(B)."""
    if projector is not None:
        es = [linear(row, *projector) for row in es]
    us, ut = [unit(r) for r in es], [unit(r) for r in et]
    return cross_entropy_diagonal([[dot(a, b) / tau for b in ut] for a in us])


def cosine_matrix(e: Matrix) -> Matrix:
    u = [unit(row) for row in e]
    return [[dot(a, b) for b in u] for a in u]


def similarity_matrix_value(es: Matrix, et: Matrix, dims: list[int] | None = None) -> float:
    """Mean over d of the mean over i != j of (cos_S(i, j) on the first d student dims - cos_T(i, j))^2."""
    ct = cosine_matrix(et)
    n = len(es)
    if n < 2:
        return 0.0
    values = []
    for d in dims or [len(es[0])]:
        cs = cosine_matrix([row[:d] for row in es])
        values.append(mean([(cs[i][j] - ct[i][j]) ** 2 for i in range(n) for j in range(n) if i != j]))
    return mean(values)


def similarity_ranking_value(es: Matrix, et: Matrix, margin: float) -> float:
    """Mean over anchors i and ordered pairs j != k (both != i) whose teacher gap
    d_T = cos_T(i,j) - cos_T(i,k) is at least ``margin`` in size, of max(0, margin - sign(d_T) * d_S)."""
    cs, ct = cosine_matrix(es), cosine_matrix(et)
    n = len(es)
    terms = []
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if len({i, j, k}) < 3:
                    continue
                d_t = ct[i][j] - ct[i][k]
                if abs(d_t) < margin:
                    continue
                d_s = cs[i][j] - cs[i][k]
                terms.append(max(0.0, margin - math.copysign(1.0, d_t) * d_s))
    return mean(terms) if terms else 0.0


def crd_keys(et: Matrix, teacher_head: tuple[Matrix, Vector]) -> Matrix:
    return [unit(linear(row, *teacher_head)) for row in et]


def crd_value(
    es: Matrix,
    et: Matrix,
    tau: float,
    student_head: tuple[Matrix, Vector],
    teacher_head: tuple[Matrix, Vector],
    queued: Matrix,
) -> float:
    """CE over [in-batch teacher keys, the filled queue slots] with row i's positive at column i."""
    s = [unit(linear(row, *student_head)) for row in es]
    keys = crd_keys(et, teacher_head) + queued
    return cross_entropy_diagonal([[dot(a, k) / tau for k in keys] for a in s])


def crd_queue_after(queue: Matrix, ptr: int, new_keys: Matrix) -> tuple[Matrix, int]:
    """FIFO write of ``new_keys`` from slot ``ptr`` on, wrapping; returns the queue and the next slot."""
    out = [row[:] for row in queue]
    for key in new_keys[-len(queue):]:
        out[ptr] = key[:]
        ptr = (ptr + 1) % len(queue)
    return out, ptr


# ----------------------------------------------------------------------------------------------------------
# Inputs (written by hand)
# ----------------------------------------------------------------------------------------------------------

ES = [[0.6, -1.2], [1.5, 0.4], [-0.3, 0.9]]  # student, B=3, D=2
ET = [[0.8, -0.7], [1.1, 0.9], [-0.6, 0.5]]  # teacher, same width
ET3 = [[0.7, -0.2, 1.0], [0.3, 1.4, -0.5], [-0.9, 0.6, 0.2]]  # teacher, D=3 (needs a projector)
ES4 = [[0.2, -0.5, 1.0], [0.9, 0.3, -0.4], [-0.7, 0.8, 0.1], [0.4, 0.4, 0.6]]  # B=4, D=3
ET4 = [[0.5, -0.8], [1.0, 0.2], [-0.3, 1.1], [0.6, 0.9]]  # B=4, D=2 (widths differ: affinity needs none)
ES1 = [[0.6, -1.2]]  # B=1
ET1 = [[0.8, -0.7]]

PROJ_W = [[0.5, -0.25], [0.125, 0.75], [-1.0, 0.5]]  # (D_t=3, D_s=2)
PROJ_B = [0.1, -0.2, 0.05]
SQUARE_W = [[0.9, 0.2], [-0.1, 1.1]]  # a forced (projector: linear) square projector after some training
SQUARE_B = [0.05, -0.05]

CRD_DIM = 2
HEAD_S = ([[0.7, -0.3], [0.2, 0.9]], [0.05, -0.1])  # student head, (dim=2, D_s=2)
HEAD_T = ([[0.4, 0.6], [-0.8, 0.3]], [0.0, 0.1])  # teacher head for ET, (2, 2)
HEAD_T3 = ([[0.5, -0.2, 0.3], [0.1, 0.6, -0.4]], [0.02, 0.0])  # teacher head for ET3, (2, 3)
QUEUE = [unit([1.0, 0.5]), unit([-0.3, 1.0]), unit([0.8, -0.9]), unit([-1.0, -0.2])]  # K=4 stored keys

INPUTS: dict[str, Matrix] = {
    "es": ES, "et": ET, "et3": ET3, "es4": ES4, "et4": ET4, "es1": ES1, "et1": ET1,
}

SAME = {"student_hidden_size": 2, "teacher_hidden_size": 2}
WIDER = {"student_hidden_size": 2, "teacher_hidden_size": 3}


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------


def embedding_cases() -> list[dict[str, Any]]:
    cases = []
    for dist in ("mse", "cosine"):
        for projector in ("auto", "none"):  # equal widths: no projector either way
            cases.append({
                "id": f"embedding-{dist}-{projector}-same-width",
                "loss": "embedding", "params": {"loss": dist, "projector": projector}, "context": SAME,
                "student": "es", "teacher": "et", "expected": embedding_value(ES, ET, dist),
            })
        cases.append({
            "id": f"embedding-{dist}-auto-projected",
            "loss": "embedding", "params": {"loss": dist}, "context": WIDER,
            "student": "es", "teacher": "et3",
            "state": {"projector.weight": PROJ_W, "projector.bias": PROJ_B},
            "expected": embedding_value(ES, ET3, dist, (PROJ_W, PROJ_B)),
        })
        cases.append({
            "id": f"embedding-{dist}-linear-square",
            "loss": "embedding", "params": {"loss": dist, "projector": "linear"}, "context": SAME,
            "student": "es", "teacher": "et",
            "state": {"projector.weight": SQUARE_W, "projector.bias": SQUARE_B},
            "expected": embedding_value(ES, ET, dist, (SQUARE_W, SQUARE_B)),
        })
    return cases


def affinity_cases() -> list[dict[str, Any]]:
    cases = []
    for tau in (0.05, 0.1, 0.5):
        for include_self in (False, True):
            for s, t, es, et in (("es", "et", ES, ET), ("es4", "et4", ES4, ET4)):
                cases.append({
                    "id": f"affinity-T{tau:g}-{'self' if include_self else 'noself'}-{s}-{t}",
                    "loss": "affinity", "params": {"temperature": tau, "include_self": include_self},
                    "context": {}, "student": s, "teacher": t,
                    "expected": affinity_value(es, et, tau, include_self),
                })
    for include_self in (False, True):  # one row: nothing to compare (or a one-entry distribution)
        cases.append({
            "id": f"affinity-one-row-{'self' if include_self else 'noself'}",
            "loss": "affinity", "params": {"include_self": include_self}, "context": {},
            "student": "es1", "teacher": "et1", "expected": 0.0,
        })
    return cases


def contrastive_cases() -> list[dict[str, Any]]:
    cases = []
    for tau in (0.05, 0.5):
        cases.append({
            "id": f"contrastive-T{tau:g}-same-width",
            "loss": "contrastive", "params": {"temperature": tau}, "context": SAME,
            "student": "es", "teacher": "et", "expected": contrastive_value(ES, ET, tau),
        })
        cases.append({
            "id": f"contrastive-T{tau:g}-projected",
            "loss": "contrastive", "params": {"temperature": tau}, "context": WIDER,
            "student": "es", "teacher": "et3",
            "state": {"projector.weight": PROJ_W, "projector.bias": PROJ_B},
            "expected": contrastive_value(ES, ET3, tau, (PROJ_W, PROJ_B)),
        })
    cases.append({
        "id": "contrastive-linear-square",
        "loss": "contrastive", "params": {"temperature": 0.1, "projector": "linear"}, "context": SAME,
        "student": "es", "teacher": "et",
        "state": {"projector.weight": SQUARE_W, "projector.bias": SQUARE_B},
        "expected": contrastive_value(ES, ET, 0.1, (SQUARE_W, SQUARE_B)),
    })
    cases.append({
        "id": "contrastive-none-same-width",
        "loss": "contrastive", "params": {"temperature": 0.1, "projector": "none"}, "context": SAME,
        "student": "es", "teacher": "et", "expected": contrastive_value(ES, ET, 0.1),
    })
    cases.append({
        "id": "contrastive-one-row", "loss": "contrastive", "params": {}, "context": SAME,
        "student": "es1", "teacher": "et1", "expected": 0.0,
    })
    return cases


def _crd_state(head_t: tuple[Matrix, Vector], queue: Matrix, ptr: int, filled: int) -> dict[str, Any]:
    return {
        "student_head.weight": HEAD_S[0], "student_head.bias": HEAD_S[1],
        "teacher_head.weight": head_t[0], "teacher_head.bias": head_t[1],
        "queue": queue, "queue_ptr": ptr, "queue_len": filled,
    }


def crd_cases() -> list[dict[str, Any]]:
    """Queue states: empty, half full (slots 0-1), full (next write at slot 1), and no queue at all.

    ``queue_after`` / ``ptr_after`` / ``len_after`` are the buffers after one call in training mode.
    """
    cases = []
    zeros = [[0.0] * CRD_DIM for _ in QUEUE]
    half = [QUEUE[0], QUEUE[1], [0.0, 0.0], [0.0, 0.0]]
    for tau in (0.07, 0.5):
        for tag, ctx, t_name, et, head_t in (
            ("same-width", SAME, "et", ET, HEAD_T), ("wider-teacher", WIDER, "et3", ET3, HEAD_T3),
        ):
            keys = crd_keys(et, head_t)
            states = (("empty", zeros, 0, 0), ("half", half, 2, 2), ("full", QUEUE, 1, 4))
            for q_tag, queue, ptr, filled in states:
                after, ptr_after = crd_queue_after(queue, ptr, keys)
                cases.append({
                    "id": f"crd-T{tau:g}-{tag}-queue-{q_tag}",
                    "loss": "crd", "params": {"dim": CRD_DIM, "temperature": tau, "queue_size": len(QUEUE)},
                    "context": ctx, "student": "es", "teacher": t_name,
                    "state": _crd_state(head_t, queue, ptr, filled),
                    "expected": crd_value(ES, et, tau, HEAD_S, head_t, queue[:filled]),
                    "queue_after": after, "ptr_after": ptr_after,
                    "len_after": min(filled + len(keys), len(QUEUE)),
                })
    cases.append({
        "id": "crd-no-queue",
        "loss": "crd", "params": {"dim": CRD_DIM, "temperature": 0.07, "queue_size": 0},
        "context": SAME, "student": "es", "teacher": "et",
        "state": _crd_state(HEAD_T, [], 0, 0),
        "expected": crd_value(ES, ET, 0.07, HEAD_S, HEAD_T, []),
        "queue_after": [], "ptr_after": 0, "len_after": 0,
    })
    # a batch larger than the queue: only the newest K keys are kept (B=3 > K=2)
    two = QUEUE[:2]
    keys = crd_keys(ET, HEAD_T)
    after, ptr_after = crd_queue_after(two, 1, keys)
    cases.append({
        "id": "crd-batch-larger-than-queue",
        "loss": "crd", "params": {"dim": CRD_DIM, "temperature": 0.07, "queue_size": 2},
        "context": SAME, "student": "es", "teacher": "et",
        "state": _crd_state(HEAD_T, two, 1, 1),
        "expected": crd_value(ES, ET, 0.07, HEAD_S, HEAD_T, two[:1]),
        "queue_after": after, "ptr_after": ptr_after, "len_after": 2,
    })
    return cases


ES5 = [[0.2, -0.5, 1.0, 0.3], [0.9, 0.3, -0.4, -0.6], [-0.7, 0.8, 0.1, 0.5], [0.4, 0.4, 0.6, -0.2],
       [-0.1, -0.9, 0.3, 0.8]]  # B=5, D=4 (Matryoshka prefixes 2 and 3)
ET5 = [[0.5, -0.8, 0.2], [1.0, 0.2, -0.7], [-0.3, 1.1, 0.4], [0.6, 0.9, 0.1], [0.2, -0.6, 0.9]]  # B=5, D=3
INPUTS.update({"es5": ES5, "et5": ET5})


def structure_cases() -> list[dict[str, Any]]:
    cases = [
        {"id": "similarity_matrix-full", "loss": "similarity_matrix", "params": {}, "context": {},
         "student": "es", "teacher": "et", "expected": similarity_matrix_value(ES, ET)},
        {"id": "similarity_matrix-widths-differ", "loss": "similarity_matrix", "params": {}, "context": {},
         "student": "es5", "teacher": "et5", "expected": similarity_matrix_value(ES5, ET5)},
        {"id": "similarity_matrix-matryoshka", "loss": "similarity_matrix", "params": {"dims": [2, 3, 4]},
         "context": {}, "student": "es5", "teacher": "et5",
         "expected": similarity_matrix_value(ES5, ET5, [2, 3, 4])},
        {"id": "similarity_matrix-one-row", "loss": "similarity_matrix", "params": {}, "context": {},
         "student": "es1", "teacher": "et1", "expected": 0.0},
    ]
    for margin in (0.015, 0.2, 5.0):  # 5.0: no teacher gap reaches the margin, every triple is a tie
        for s, t, es, et in (("es4", "et4", ES4, ET4), ("es5", "et5", ES5, ET5)):
            cases.append({"id": f"similarity_ranking-m{margin:g}-{s}-{t}", "loss": "similarity_ranking",
                          "params": {"margin": margin}, "context": {}, "student": s, "teacher": t,
                          "expected": similarity_ranking_value(es, et, margin)})
    cases.append({"id": "similarity_ranking-two-rows", "loss": "similarity_ranking", "params": {},
                  "context": {}, "student": "es1", "teacher": "et1", "expected": 0.0})
    return cases


def neighbourhood_value(es: Matrix, et: Matrix, bank: Matrix, tau: float, tau_t: float,
                        own: list[int | None], projector: tuple[Matrix, Vector] | None = None) -> float:
    """Mean over rows i of KL(softmax_j cos(t_i, b_j) / tau_t || softmax_j cos(W s_i, b_j) / tau), the bank
    entry own[i] (row i's own vector, when given) dropped from both distributions."""
    if projector is not None:
        es = [linear(row, *projector) for row in es]
    ub = [unit(b) for b in bank]
    values = []
    for i, (s, t) in enumerate(zip(es, et)):
        keep = [j for j in range(len(ub)) if j != own[i]]
        lt = [dot(unit(t), ub[j]) / tau_t for j in keep]
        ls = [dot(unit(s), ub[j]) / tau for j in keep]
        values.append(kl(log_softmax(lt), log_softmax(ls)))
    return mean(values)


BANK7 = ET4 + ET  # a stored bank of 7 teacher vectors (D=2); rows 4..6 are the batch ET
INPUTS["bank7"] = BANK7


def neighbourhood_cases() -> list[dict[str, Any]]:
    """``bank: batch`` (the batch's teacher vectors, own row out) and ``bank: store`` (a fitted bank; the
    batch's ``example_index`` names each row's own entry, or, without it, nothing is left out)."""
    three = [0, 1, 2]
    cases = [
        {"id": "neighbourhood-batch-T0.5", "loss": "neighbourhood",
         "params": {"bank": "batch", "temperature": 0.5}, "context": SAME, "student": "es", "teacher": "et",
         "expected": neighbourhood_value(ES, ET, ET, 0.5, 0.5, three)},
        {"id": "neighbourhood-batch-default-T", "loss": "neighbourhood", "params": {"bank": "batch"},
         "context": SAME, "student": "es", "teacher": "et",
         "expected": neighbourhood_value(ES, ET, ET, 0.05, 0.05, three)},
        {"id": "neighbourhood-batch-projector", "loss": "neighbourhood",
         "params": {"bank": "batch", "temperature": 0.3, "teacher_temperature": 0.2},
         "context": {"student_hidden_size": 2, "teacher_hidden_size": 3}, "student": "es", "teacher": "et3",
         "state": {"projector.weight": PROJ_W, "projector.bias": PROJ_B},
         "expected": neighbourhood_value(ES, ET3, ET3, 0.3, 0.2, three, (PROJ_W, PROJ_B))},
        {"id": "neighbourhood-store-own-rows-out", "loss": "neighbourhood",
         "params": {"temperature": 0.1, "teacher_temperature": 0.2}, "context": SAME,
         "student": "es", "teacher": "et", "fit": "bank7", "index": [4, 5, 6],
         "expected": neighbourhood_value(ES, ET, BANK7, 0.1, 0.2, [4, 5, 6])},
        {"id": "neighbourhood-store-no-index", "loss": "neighbourhood", "params": {"temperature": 0.1},
         "context": SAME, "student": "es", "teacher": "et", "fit": "bank7",
         "expected": neighbourhood_value(ES, ET, BANK7, 0.1, 0.1, [None, None, None])},
        {"id": "neighbourhood-one-row-batch", "loss": "neighbourhood", "params": {"bank": "batch"},
         "context": SAME, "student": "es1", "teacher": "et1", "expected": 0.0},
    ]
    return cases


def cases() -> list[dict[str, Any]]:
    return (embedding_cases() + affinity_cases() + contrastive_cases() + crd_cases() + structure_cases()
            + neighbourhood_cases())


if __name__ == "__main__":
    for case in cases():
        print(f"{case['id']:<48} {case['expected']!r}")
