"""kd with ``label_aware``: on labelled rows where the teacher's arg-max misses the gold class, ``shift``
swaps the two logits (the target then ranks the gold class first), ``trust`` leaves the row out; unlabelled
rows (-100) and rows the teacher gets right are untouched. Golden values in plain math, float64."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import KDLoss
from distill.outputs import ModelOutputs, SparseLogits

Z_T = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [1.0, -1.0, 3.0]]  # arg-max 0, 1, 2
Z_S = [[0.2, 0.4, -0.3], [1.0, 0.0, 0.5], [-0.5, 0.5, 0.0]]
LABELS = [1, 1, -100]  # row 0: teacher wrong; row 1: right; row 2: unlabelled


def _softmax(row, t):
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _kd(rows_t, rows_s, t):
    return t * t * sum(_kl(_softmax(a, t), _softmax(b, t)) for a, b in zip(rows_t, rows_s)) / len(rows_t)


def _run(mode, t=2.0, labels=LABELS, divergence="forward_kl"):
    loss = KDLoss(temperature=t, label_aware=mode, divergence=divergence)
    zs = torch.tensor(Z_S, dtype=torch.float64, requires_grad=True)
    batch = {} if labels is None else {"labels": torch.tensor(labels)}
    value = loss(ModelOutputs(logits=zs), ModelOutputs(logits=torch.tensor(Z_T, dtype=torch.float64)), batch)
    return value.detach(), zs


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_shift_swaps_the_teachers_top_and_gold_logits_on_wrong_labelled_rows(divergence):
    shifted = [[0.0, 2.0, -1.0], Z_T[1], Z_T[2]]
    value, _ = _run("shift", divergence=divergence)
    if divergence == "forward_kl":
        expected = _kd(shifted, Z_S, 2.0)
    else:  # KL(student || teacher)
        expected = 4.0 * sum(_kl(_softmax(b, 2.0), _softmax(a, 2.0)) for a, b in zip(shifted, Z_S)) / 3
    assert float(value) == pytest.approx(expected, rel=1e-12)


def test_trust_leaves_out_the_rows_the_teacher_gets_wrong():
    value, _ = _run("trust")
    assert float(value) == pytest.approx(_kd(Z_T[1:], Z_S[1:], 2.0), rel=1e-12)


def test_none_and_missing_labels_are_plain_kd():
    plain = _kd(Z_T, Z_S, 2.0)
    assert float(_run("none")[0]) == pytest.approx(plain, rel=1e-12)
    assert float(_run("shift", labels=None)[0]) == pytest.approx(plain, rel=1e-12)
    # the teacher right everywhere: nothing to change
    assert float(_run("shift", labels=[0, 1, 2])[0]) == pytest.approx(plain, rel=1e-12)


def test_gradients_reach_only_the_student_and_the_teacher_is_not_modified():
    zt = torch.tensor(Z_T, dtype=torch.float64)
    before = zt.clone()
    zs = torch.tensor(Z_S, dtype=torch.float64, requires_grad=True)
    KDLoss(label_aware="shift")(ModelOutputs(logits=zs), ModelOutputs(logits=zt),
                                {"labels": torch.tensor(LABELS)}).backward()
    assert torch.equal(zt, before) and zs.grad is not None and torch.isfinite(zs.grad).all()


def test_refuses_token_logits_and_sparse_teachers():
    loss = KDLoss(label_aware="trust")
    with pytest.raises(ValueError, match="classifier logits"):
        loss(ModelOutputs(logits=torch.zeros(1, 2, 3)), ModelOutputs(logits=torch.zeros(1, 2, 3)),
             {"labels": torch.zeros(1, 2, dtype=torch.long)})
    sparse = SparseLogits(values=torch.zeros(2, 1), indices=torch.zeros(2, 1, dtype=torch.int32),
                          logsumexp=torch.zeros(2), num_classes=3)
    with pytest.raises(ValueError, match="store.topk: 0"):
        loss(ModelOutputs(logits=torch.zeros(2, 3)), ModelOutputs(logits=sparse),
             {"labels": torch.tensor([0, 1])})
