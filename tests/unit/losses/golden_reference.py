"""Hand-computed golden values for the built-in losses, in plain Python ``math`` (no torch, no distill).

Every number in ``tests/data/loss_golden.json`` comes from the formulas below, written straight from
METHODS.md (section 0 for the reductions, section 2 for Hinton KD, 3.4 for TinyViT's sparse targets) and the
loss docstrings. Nothing here imports the code under test, so a bug in ``distill.losses`` cannot leak into the
expected values. Regenerate the fixture after changing a case with::

    python tests/unit/losses/golden_reference.py

``test_golden.py`` also recomputes every case from this module and compares it with the stored JSON, so a
stale fixture fails loudly.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parents[2] / "data" / "loss_golden.json"

Matrix = list[list[float]]


# ----------------------------------------------------------------------------------------------------------
# Distributions
# ----------------------------------------------------------------------------------------------------------


def log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [x / temperature for x in row]
    top = max(scaled)
    log_norm = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - log_norm for x in scaled]


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    return [math.exp(v) for v in log_softmax(row, temperature)]


def logsumexp(row: list[float]) -> float:
    top = max(row)
    return top + math.log(sum(math.exp(x - top) for x in row))


def kl(p: list[float], q: list[float]) -> float:
    """KL(P||Q) = sum_c P_c (log P_c - log Q_c), with 0 log 0 = 0."""
    return sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q) if pc > 0)


def entropy(p: list[float]) -> float:
    return -sum(pc * math.log(pc) for pc in p if pc > 0)


def divergence(p: list[float], q: list[float], kind: str, beta: float = 0.5) -> float:
    """One row's divergence between teacher distribution ``p`` (the target) and student ``q``."""
    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    if kind == "symmetric_kl":  # mean of both directions (SSLD), not the mixture JSD
        return 0.5 * (kl(p, q) + kl(q, p))
    if kind == "jsd":  # generalised JSD (GKD): M = beta P + (1 - beta) Q
        m = [beta * pc + (1 - beta) * qc for pc, qc in zip(p, q)]
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if kind == "soft_ce":  # -sum_c P_c log Q_c = KL(P||Q) + H(P)
        return -sum(pc * math.log(qc) for pc, qc in zip(p, q))
    raise ValueError(kind)


def reduce_rows(per_row: list[float], reduction: str, num_classes: int) -> float:
    """METHODS.md section 0: batchmean = sum / rows; elementwise_mean = batchmean / C; sum = sum."""
    if reduction == "sum":
        return sum(per_row)
    batchmean = sum(per_row) / len(per_row) if per_row else 0.0
    if reduction == "batchmean":
        return batchmean
    if reduction == "elementwise_mean":
        return batchmean / num_classes
    raise ValueError(reduction)


def kd_value(
    student_rows: Matrix,
    teacher_dists: list[list[float]],
    *,
    temperature: float,
    divergence_kind: str,
    reduction: str,
    scale_by_t2: bool,
    beta: float,
    num_classes: int,
) -> float:
    """``s * D(P_T, Q_S)`` reduced over rows; ``teacher_dists`` are already tempered teacher distributions."""
    per_row = [
        divergence(p, softmax(z, temperature), divergence_kind, beta)
        for p, z in zip(teacher_dists, student_rows)
    ]
    value = reduce_rows(per_row, reduction, num_classes)
    return value * temperature**2 if scale_by_t2 else value


def tempered(p1: list[float], temperature: float) -> list[float]:
    """softmax(log p / T): the T-softened version of a distribution given at T = 1."""
    return softmax([math.log(x) for x in p1], temperature)


def spread_distribution(logits: list[float], k: int) -> list[float]:
    """TinyViT re-densification (METHODS.md 3.4): exact probability for the top-k classes, the missing mass
    shared evenly by the other C - k classes."""
    probs = softmax(logits)
    top = sorted(range(len(logits)), key=lambda c: -logits[c])[:k]
    if k >= len(logits):
        return probs
    tail = (1.0 - sum(probs[c] for c in top)) / (len(logits) - k)
    return [probs[c] if c in top else tail for c in range(len(logits))]


def sparse_record(rows: Matrix, k: int, mode: str) -> dict[str, Any]:
    """What the store keeps for each row: top-k logits (descending), their ids and the full logsumexp."""
    values, indices = [], []
    for row in rows:
        top = sorted(range(len(row)), key=lambda c: -row[c])[:k]
        indices.append(top)
        values.append([row[c] for c in top])
    return {
        "values": values,
        "indices": indices,
        "logsumexp": [logsumexp(row) for row in rows],
        "num_classes": len(rows[0]),
        "mode": mode,
    }


def ce_row(z: list[float], label: int, smoothing: float) -> float:
    """(1 - eps) * (-log q_y) + eps * mean_c(-log q_c)  (torch's label_smoothing definition)."""
    log_q = log_softmax(z)
    return (1 - smoothing) * -log_q[label] + smoothing * -sum(log_q) / len(z)


def argmax(row: list[float]) -> int:
    return max(range(len(row)), key=lambda c: row[c])


# ----------------------------------------------------------------------------------------------------------
# Hidden states
# ----------------------------------------------------------------------------------------------------------


def mse(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def one_minus_cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def mean_pool(tokens: Matrix, mask: list[int]) -> list[float]:
    n = sum(mask)
    return [sum(tok[j] * m for tok, m in zip(tokens, mask)) / n for j in range(len(tokens[0]))]


def linear(vec: list[float], weight: Matrix, bias: list[float]) -> list[float]:
    return [sum(w * x for w, x in zip(w_row, vec)) + b for w_row, b in zip(weight, bias)]


def hidden_value(
    student: list[list[Matrix]],
    teacher: list[list[Matrix]],
    pairs: list[tuple[int, int]],
    mask: list[list[int]],
    *,
    dist: str,
    pooling: str,
    projector: tuple[Matrix, list[float]] | None = None,
) -> float:
    """Mean over layer pairs of dist(W h_S[s], h_T[t]); tokens averaged over the mask, or sentence vectors
    (masked mean pool) compared per example and averaged over the batch."""
    fn = mse if dist == "mse" else one_minus_cos
    total = 0.0
    for s, t in pairs:
        hs, ht = student[s], teacher[t]  # (B, L, H) as nested lists
        if projector is not None:
            hs = [[linear(tok, *projector) for tok in seq] for seq in hs]
        if pooling == "mean":
            rows = [fn(mean_pool(a, m), mean_pool(b, m)) for a, b, m in zip(hs, ht, mask)]
            total += sum(rows) / len(rows)
        else:
            vals = [
                fn(a_tok, b_tok)
                for a, b, m in zip(hs, ht, mask)
                for a_tok, b_tok, keep in zip(a, b, m)
                if keep
            ]
            total += sum(vals) / len(vals)
    return total / len(pairs)


# ----------------------------------------------------------------------------------------------------------
# Inputs (tiny; written by hand where small enough, drawn once from a seeded Python RNG otherwise)
# ----------------------------------------------------------------------------------------------------------

ZS = [[0.5, -1.0, 2.0], [1.5, 0.3, -0.4]]  # student logits (B=2, C=3)
ZT = [[1.2, -0.3, 0.8], [-0.6, 2.1, 0.0]]  # teacher logits
# (B=2, L=3, V=3) language-model logits; the last token of row 2 is padding and holds wild values
ZS_SEQ = [
    [[0.2, 1.0, -0.5], [1.1, -0.7, 0.3], [0.0, 0.4, 0.9]],
    [[-1.2, 0.6, 0.8], [0.5, 0.5, -0.1], [30.0, -25.0, 7.0]],
]
ZT_SEQ = [
    [[1.0, 0.1, -0.2], [0.3, 0.9, -1.0], [-0.4, 1.3, 0.2]],
    [[0.7, -0.3, 1.5], [1.8, -0.2, 0.1], [-40.0, 12.0, 3.0]],
]
SEQ_MASK = [[1, 1, 1], [1, 1, 0]]
# C=5 logits for the sparse (top-k) teacher cases
ZS5 = [[0.3, -0.8, 1.1, 0.6, -0.2], [1.4, 0.2, -0.5, 0.9, 0.0]]
ZT5 = [[2.0, -1.0, 0.5, 1.5, -0.3], [0.1, 0.4, 3.0, -2.0, 1.0]]
LABELS = [2, 0, 1]
ZS3 = [[0.5, -1.0, 2.0], [1.5, 0.3, -0.4], [-0.2, 0.9, 0.1]]  # (B=3, C=3) for the label cases


def _hidden_stack(rng: random.Random, layers: int, width: int) -> list[Matrix]:
    # hidden_states tuple: layers + 1 tensors (embeddings first), each (B=2, L=3, width)
    return [
        [[[round(rng.uniform(-2, 2), 3) for _ in range(width)] for _ in range(3)] for _ in range(2)]
        for _ in range(layers + 1)
    ]


_rng = random.Random(20240611)
HS = _hidden_stack(_rng, layers=2, width=2)  # student: 2 layers, width 2
HT = _hidden_stack(_rng, layers=4, width=2)  # teacher: 4 layers, same width (identity projector)
HT3 = _hidden_stack(_rng, layers=4, width=3)  # teacher: 4 layers, width 3 (needs a projector)
PROJ_W = [[0.5, -0.25], [0.125, 0.75], [-1.0, 0.5]]  # (H_t=3, H_s=2), fixed so the value is reproducible
PROJ_B = [0.1, -0.2, 0.05]
HID_MASK = [[1, 1, 1], [1, 1, 0]]

INPUTS: dict[str, Any] = {
    "zs": ZS, "zt": ZT, "zs_seq": ZS_SEQ, "zt_seq": ZT_SEQ, "seq_mask": SEQ_MASK,
    "zs5": ZS5, "zt5": ZT5, "zs3": ZS3, "labels": LABELS,
    "hs": HS, "ht": HT, "ht3": HT3, "hid_mask": HID_MASK,
}
# stored top-k records of ZT5 (C = 5), named zt5_top{k}_{mode}
for _k, _mode in ((5, "spread"), (2, "spread"), (2, "topk"), (3, "topk")):
    INPUTS[f"zt5_top{_k}_{_mode}"] = sparse_record(ZT5, _k, _mode)


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------

DIVERGENCE_VARIANTS = [
    ("forward_kl", 0.5), ("reverse_kl", 0.5), ("symmetric_kl", 0.5),
    ("jsd", 0.5), ("jsd", 0.1), ("soft_ce", 0.5),
]


def _kd_params(div: str, beta: float, reduction: str, t: float, scale: bool) -> dict[str, Any]:
    params: dict[str, Any] = {
        "temperature": t, "divergence": div, "reduction": reduction, "scale_by_t2": scale,
    }
    if div == "jsd":
        params["beta"] = beta
    return params


def _flatten_valid(seq: list[Matrix], mask: list[list[int]]) -> Matrix:
    return [tok for row, m in zip(seq, mask) for tok, keep in zip(row, m) if keep]


def kd_cases() -> list[dict[str, Any]]:
    cases = []
    for div, beta in DIVERGENCE_VARIANTS:
        for reduction in ("batchmean", "elementwise_mean", "sum"):
            for t in (1.0, 4.0):
                for scale in (True, False):
                    name = div if div != "jsd" else f"jsd{beta}"
                    expected = kd_value(
                        ZS, [softmax(z, t) for z in ZT], temperature=t, divergence_kind=div,
                        reduction=reduction, scale_by_t2=scale, beta=beta, num_classes=3,
                    )
                    cases.append({
                        "id": f"kd-{name}-{reduction}-T{t:g}-{'t2' if scale else 'not2'}",
                        "loss": "kd",
                        "params": _kd_params(div, beta, reduction, t, scale),
                        "student": {"logits": "zs"},
                        "teacher": {"logits": "zt"},
                        "expected": expected,
                    })
    # (B, L, V) logits: rows are tokens, padding excluded from every reduction (and from the row count)
    for div, beta in (("forward_kl", 0.5), ("jsd", 0.1)):
        for reduction in ("batchmean", "elementwise_mean", "sum"):
            s_rows, t_rows = _flatten_valid(ZS_SEQ, SEQ_MASK), _flatten_valid(ZT_SEQ, SEQ_MASK)
            expected = kd_value(
                s_rows, [softmax(z, 2.0) for z in t_rows], temperature=2.0, divergence_kind=div,
                reduction=reduction, scale_by_t2=True, beta=beta, num_classes=3,
            )
            cases.append({
                "id": f"kd-seq-masked-{div}{beta if div == 'jsd' else ''}-{reduction}",
                "loss": "kd",
                "params": _kd_params(div, beta, reduction, 2.0, True),
                "student": {"logits": "zs_seq"},
                "teacher": {"logits": "zt_seq"},
                "batch": {"attention_mask": "seq_mask"},
                "expected": expected,
            })
    # sparse (stored top-k) teacher, C = 5
    for k, mode, div, reduction, t in (
        (5, "spread", "forward_kl", "batchmean", 1.0),  # k == C: exactly the dense loss
        (5, "spread", "jsd", "elementwise_mean", 4.0),
        (2, "spread", "forward_kl", "batchmean", 1.0),
        (2, "spread", "soft_ce", "batchmean", 1.0),  # TinyViT: soft CE against the re-densified target
        (2, "spread", "forward_kl", "sum", 2.0),
        (2, "topk", "forward_kl", "batchmean", 1.0),
        (2, "topk", "reverse_kl", "batchmean", 2.0),
        (2, "topk", "forward_kl", "elementwise_mean", 1.0),  # still / C (full classes), as documented
        (3, "topk", "symmetric_kl", "batchmean", 1.0),
    ):
        key = f"zt5_top{k}_{mode}"
        if mode == "spread":
            teacher = [tempered(spread_distribution(row, k), t) for row in ZT5]
            student = ZS5
        else:  # restricted to the kept classes: both distributions renormalised over them
            idx = INPUTS[key]["indices"]
            teacher = [softmax([row[c] for c in ids], t) for row, ids in zip(ZT5, idx)]
            student = [[row[c] for c in ids] for row, ids in zip(ZS5, idx)]
        expected = kd_value(
            student, teacher, temperature=t, divergence_kind=div, reduction=reduction,
            scale_by_t2=True, beta=0.5, num_classes=5,  # elementwise_mean divides by the full C
        )
        cases.append({
            "id": f"kd-sparse-k{k}-{mode}-{div}-{reduction}-T{t:g}",
            "loss": "kd",
            "params": _kd_params(div, 0.5, reduction, t, True),
            "student": {"logits": "zs5"},
            "teacher": {"sparse_logits": key},
            "expected": expected,
        })
    return cases


def ce_cases() -> list[dict[str, Any]]:
    cases = []
    for smoothing in (0.0, 0.1):
        for labels, tag in ((LABELS, "all-labelled"), ([2, -100, 1], "one-unlabelled")):
            rows = [ce_row(z, y, smoothing) for z, y in zip(ZS3, labels) if y != -100]
            cases.append({
                "id": f"ce-ls{smoothing:g}-{tag}",
                "loss": "ce",
                "params": {"label_smoothing": smoothing} if smoothing else {},
                "student": {"logits": "zs3"},
                "batch": {"labels": labels},
                "expected": sum(rows) / len(rows),
            })
    cases.append({
        "id": "ce-all-unlabelled",
        "loss": "ce",
        "params": {},
        "student": {"logits": "zs3"},
        "batch": {"labels": [-100, -100, -100]},
        "expected": 0.0,
    })
    seq_labels = [[2, 0, -100], [1, 1, -100]]  # padding carries -100
    rows = [
        ce_row(z, y, 0.1)
        for row, lab in zip(ZS_SEQ, seq_labels)
        for z, y in zip(row, lab)
        if y != -100
    ]
    cases.append({
        "id": "ce-seq-ls0.1",
        "loss": "ce",
        "params": {"label_smoothing": 0.1},
        "student": {"logits": "zs_seq"},
        "batch": {"labels": seq_labels},
        "expected": sum(rows) / len(rows),
    })
    return cases


def hard_kd_cases() -> list[dict[str, Any]]:
    dense = [-log_softmax(z)[argmax(t)] for z, t in zip(ZS, ZT)]
    s_rows, t_rows = _flatten_valid(ZS_SEQ, SEQ_MASK), _flatten_valid(ZT_SEQ, SEQ_MASK)
    seq = [-log_softmax(z)[argmax(t)] for z, t in zip(s_rows, t_rows)]
    sparse = [-log_softmax(z)[argmax(t)] for z, t in zip(ZS5, ZT5)]
    return [
        {"id": "hard_kd-dense", "loss": "hard_kd", "params": {}, "student": {"logits": "zs"},
         "teacher": {"logits": "zt"}, "expected": sum(dense) / len(dense)},
        {"id": "hard_kd-seq-masked", "loss": "hard_kd", "params": {}, "student": {"logits": "zs_seq"},
         "teacher": {"logits": "zt_seq"}, "batch": {"attention_mask": "seq_mask"},
         "expected": sum(seq) / len(seq)},
        {"id": "hard_kd-sparse-top2", "loss": "hard_kd", "params": {}, "student": {"logits": "zs5"},
         "teacher": {"sparse_logits": "zt5_top2_spread"}, "expected": sum(sparse) / len(sparse)},
    ]


def hidden_cases() -> list[dict[str, Any]]:
    same_width = {"student_hidden_size": 2, "teacher_hidden_size": 2, "student_num_layers": 2,
                  "teacher_num_layers": 4}
    uniform = [(1, 2), (2, 4)]  # 2 of 4 teacher layers
    explicit = [(0, 0), (2, 3)]
    cases = []
    for dist in ("mse", "cosine"):
        for pooling in ("none", "mean"):
            for map_name, spec, pairs in (
                ("uniform", "uniform", uniform),
                ("explicit-pairs", [list(p) for p in explicit], explicit),
                ("explicit-dict", {"0": 0, "2": 3}, explicit),
            ):
                if map_name == "explicit-dict" and pooling == "mean":
                    continue
                cases.append({
                    "id": f"hidden-{dist}-pool{pooling}-{map_name}-identity-width",
                    "loss": "hidden",
                    "params": {"loss": dist, "pooling": pooling, "layer_map": spec},
                    "context": same_width,
                    "student": {"hidden_states": "hs"},
                    "teacher": {"hidden_states": "ht"},
                    "batch": {"attention_mask": "hid_mask"},
                    "expected": hidden_value(HS, HT, pairs, HID_MASK, dist=dist, pooling=pooling),
                })
    # layer counts unknown when built: the uniform map is resolved from the tuples at forward time
    cases.append({
        "id": "hidden-mse-uniform-resolved-at-forward",
        "loss": "hidden",
        "params": {"loss": "mse"},
        "context": {},
        "student": {"hidden_states": "hs"},
        "teacher": {"hidden_states": "ht"},
        "batch": {"attention_mask": "hid_mask"},
        "expected": hidden_value(HS, HT, uniform, HID_MASK, dist="mse", pooling="none"),
    })
    # widths differ (2 -> 3): one linear projector, weights fixed by the fixture
    proj_ctx = {"student_hidden_size": 2, "teacher_hidden_size": 3, "student_num_layers": 2,
                "teacher_num_layers": 4}
    for dist in ("mse", "cosine"):
        for pooling in ("none", "mean"):
            cases.append({
                "id": f"hidden-{dist}-pool{pooling}-last-projected",
                "loss": "hidden",
                "params": {"loss": dist, "pooling": pooling, "layer_map": "last"},
                "context": proj_ctx,
                "student": {"hidden_states": "hs"},
                "teacher": {"hidden_states": "ht3"},
                "batch": {"attention_mask": "hid_mask"},
                "state": {"projectors.0.weight": PROJ_W, "projectors.0.bias": PROJ_B},
                "expected": hidden_value(
                    HS, HT3, [(2, 4)], HID_MASK, dist=dist, pooling=pooling, projector=(PROJ_W, PROJ_B)
                ),
            })
    return cases


def build_fixture() -> dict[str, Any]:
    cases = kd_cases() + ce_cases() + hard_kd_cases() + hidden_cases()
    return {
        "about": "Golden loss values computed by tests/unit/losses/golden_reference.py in plain Python math "
                 "from the METHODS.md / docstring formulas; inputs referenced by name from 'inputs'.",
        "inputs": INPUTS,
        "cases": cases,
    }


def main() -> None:
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(build_fixture(), indent=1) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
