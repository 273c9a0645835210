"""Several teachers read as one (distill.store.ensemble): the combination rules against hand-computed values,
the identity between averaging forward-KL losses and distilling the mean of the probabilities, and the
temperature handling through the ``kd`` loss."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config import LossConfig
from distill.losses import LossContext, build_losses
from distill.outputs import ModelOutputs, SparseLogits
from distill.store.ensemble import (
    TeacherEnsemble,
    combine_log_probs,
    dense_log_probs,
    example_weights,
)
from distill.training import Distiller


class ListStore:
    """A store stand-in holding dense logits in memory."""

    def __init__(self, logits: torch.Tensor, key: str):
        self.logits, self.key, self.path = logits, key, f"/stores/{key}"

    def __len__(self) -> int:
        return len(self.logits)

    def fetch(self, indices, device=None, **_):
        return ModelOutputs(logits=self.logits[torch.as_tensor(indices, dtype=torch.long)])

    def info(self):
        return {"bytes": 10, "num_examples": len(self)}


def kd(temperature: float) -> Distiller:
    ctx = LossContext(num_classes=3)
    spec = LossConfig(name="kd", weight=1.0, params={"temperature": temperature})
    return Distiller(build_losses([spec], ctx))


def test_mean_probs_and_mean_logits_by_hand():
    p1, p2 = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.1, 0.6, 0.3]])
    lp = torch.stack([p1.log(), p2.log()]).double()
    mean = combine_log_probs(lp, "mean_probs", [1, 1]).exp()
    assert torch.allclose(mean, torch.tensor([[0.4, 0.4, 0.2]], dtype=torch.float64))
    weighted = combine_log_probs(lp, "weights", [3, 1]).exp()
    assert torch.allclose(weighted, torch.tensor([[0.55, 0.3, 0.15]], dtype=torch.float64))
    geo = torch.sqrt(p1 * p2).double()
    assert torch.allclose(combine_log_probs(lp, "mean_logits", [1, 1]).exp(), geo / geo.sum())


def test_confidence_weights_follow_ca_mkd():
    # teacher 0 gives the label (class 0) 0.7, teacher 1 gives it 0.1: CE 0.357 vs 2.303
    lp = torch.tensor([[[0.7, 0.2, 0.1]], [[0.1, 0.6, 0.3]]]).log().double()
    w = example_weights(lp, "confidence", [1, 1], torch.tensor([0]))
    ce = torch.tensor([-math.log(0.7), -math.log(0.1)], dtype=torch.float64)
    want = (1 - torch.softmax(ce, 0)) / (2 - 1)
    assert torch.allclose(w[0], want) and w[0, 0] > 0.85
    # unlabelled row: each teacher's own answer (0.7 vs 0.6): the surer teacher weighs a little more
    w_free = example_weights(lp, "confidence", [1, 1], torch.tensor([-1]))
    own = torch.tensor([-math.log(0.7), -math.log(0.6)], dtype=torch.float64)
    assert torch.allclose(w_free[0], 1 - torch.softmax(own, 0))
    assert 0.5 < w_free[0, 0] < 0.6


def test_entropy_weights_follow_ebkd_and_rows_sum_to_one():
    lp = torch.tensor([[[0.98, 0.01, 0.01]], [[0.34, 0.33, 0.33]], [[0.5, 0.25, 0.25]]]).log().double()
    w = example_weights(lp, "entropy", [1, 1, 1])
    h = -(lp.exp() * lp).sum(-1)[:, 0]
    assert torch.allclose(w[0], (1 - h / h.sum()) / 2)
    assert torch.allclose(w.sum(-1), torch.ones(1, dtype=torch.float64))
    assert w[0, 0] > w[0, 2] > w[0, 1]  # the sure teacher counts most, the flat one least
    fixed = example_weights(lp, "entropy", [1, 0.5, 1])
    assert fixed[0, 1] < w[0, 1]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_mean_of_forward_kl_is_kl_to_mean_probs_plus_a_constant(temperature):
    """sum_k w_k KL(p_k || q) = KL(p || q) + const, p = sum_k w_k p_k (all at the same temperature): same
    loss up to a student-independent constant, same gradient."""
    torch.manual_seed(0)
    teachers = torch.randn(3, 5, 3, dtype=torch.float64) * 2
    weights = [1.0, 2.0, 1.0]
    stores = [ListStore(z, f"t{i}") for i, z in enumerate(teachers)]
    loss = kd(temperature).double()
    ensemble = TeacherEnsemble(stores, ["a", "b", "c"], weights, "mean_probs").bind(loss)
    assert ensemble.temperature == temperature
    combined = ensemble.fetch(list(range(5))).logits.double()
    # the combined logits give back the mean of the softened teachers under the loss's own softening
    mean_soft = sum(w * torch.softmax(z / temperature, -1) for w, z in zip(weights, teachers)) / sum(weights)
    assert torch.allclose(torch.softmax(combined / temperature, -1), mean_soft, atol=1e-6)

    def losses(student_logits):
        s = ModelOutputs(logits=student_logits)
        one, _ = loss(s, ModelOutputs(logits=combined), {})
        per = sum(w * loss(s, ModelOutputs(logits=z), {})[0]
                  for w, z in zip(weights, teachers, strict=True)) / sum(weights)
        return one, per

    consts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        student = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
        one, per = losses(student)
        g_one, = torch.autograd.grad(one, student)
        g_per, = torch.autograd.grad(per, student)
        assert torch.allclose(g_one, g_per, atol=1e-6)
        consts.append(float((per - one).detach()))
    assert consts[0] == pytest.approx(consts[1], abs=1e-6)
    assert consts[0] > 0  # the mean of KLs exceeds the KL to the mean (Jensen), by the teachers' spread


def test_bind_refuses_losses_at_different_temperatures():
    ctx = LossContext(num_classes=3)
    two = Distiller(build_losses([LossConfig(name="kd", params={"temperature": 1.0}),
                                  LossConfig(name="kd", params={"temperature": 2.0})], ctx))
    stores = [ListStore(torch.zeros(2, 3), "a"), ListStore(torch.zeros(2, 3), "b")]
    with pytest.raises(ValueError, match="same temperature"):
        TeacherEnsemble(stores, ["a", "b"], [1, 1], "mean_probs").bind(two)


def test_key_changes_with_rule_and_weights_not_with_temperature():
    stores = [ListStore(torch.zeros(2, 3), "a"), ListStore(torch.zeros(2, 3), "b")]
    base = TeacherEnsemble(stores, ["a", "b"], [1, 1], "mean_probs")
    assert base.key == base.bind(kd(3.0)).key
    assert base.key != TeacherEnsemble(stores, ["a", "b"], [1, 1], "mean_logits").key
    assert base.key != TeacherEnsemble(stores, ["a", "b"], [1, 2], "mean_probs").key


def test_confidence_reads_the_rows_labels():
    # teacher a is right on row 0 (label 0), teacher b on row 1 (label 1)
    a = torch.tensor([[3.0, 0.0], [3.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [0.0, 3.0]])
    ens = TeacherEnsemble([ListStore(a, "a"), ListStore(b, "b")], ["a", "b"], [1, 1], "confidence",
                          labels=[0, 1])
    p = torch.softmax(ens.fetch([0, 1]).logits, -1)
    assert p[0, 0] > 0.85 and p[1, 1] > 0.85
    weights = ens.mean_weights()
    assert weights["a"] == pytest.approx(0.5) and sum(weights.values()) == pytest.approx(1.0)


def test_sparse_top_k_rows_are_rebuilt_exactly_or_spread():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    full = SparseLogits(z, torch.tensor([[0, 1, 2, 3]]), torch.logsumexp(z, -1), 4)
    assert torch.allclose(dense_log_probs(full), torch.log_softmax(z.double(), -1))
    top2 = SparseLogits(z[:, :2], torch.tensor([[0, 1]]), torch.logsumexp(z, -1), 4)
    p = dense_log_probs(top2).exp()
    assert torch.allclose(p[0, :2], torch.softmax(z.double(), -1)[0, :2])
    assert torch.allclose(p[0, 2], p[0, 3]) and p.sum() == pytest.approx(1.0)


def test_ensemble_refuses_stores_of_different_lengths_and_unknown_rules():
    with pytest.raises(ValueError, match="same rows"):
        TeacherEnsemble([ListStore(torch.zeros(2, 3), "a"), ListStore(torch.zeros(3, 3), "b")], ["a", "b"],
                        [1, 1], "mean_probs")
    with pytest.raises(ValueError, match="mean_probs"):
        TeacherEnsemble([ListStore(torch.zeros(2, 3), "a"), ListStore(torch.zeros(2, 3), "b")], ["a", "b"],
                        [1, 1], "median")


def test_unanswered_rows_give_their_weight_to_the_other_teachers():
    from distill.store.ensemble import AnswerStore

    model = ListStore(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), "model")
    api = AnswerStore([[0.1, 0.9], [0.5, 0.5]], [True, False], "api")
    ens = TeacherEnsemble([model, api], ["model", "api"], [1, 1], "mean_probs")
    p = torch.softmax(ens.fetch([0, 1]).logits, -1).double()
    p_model = torch.softmax(torch.tensor([2.0, 0.0], dtype=torch.float64), -1)
    assert torch.allclose(p[0], (p_model + torch.tensor([0.1, 0.9], dtype=torch.float64)) / 2, atol=1e-6)
    assert torch.allclose(p[1], p_model, atol=1e-6)  # row 1: the API did not answer
    assert ens.mean_weights() == pytest.approx({"model": 0.75, "api": 0.25})


@pytest.mark.parametrize("rule", ["confidence", "entropy"])
def test_an_absent_teacher_does_not_change_the_others_relative_weights(rule):
    """Three teachers, the third without an answer on the row: the first two share the row exactly as they
    would with only the two of them."""
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(3, 4, 5, dtype=torch.float64), -1)
    labels = torch.tensor([0, -1, 2, 1])
    three = example_weights(lp, rule, [1, 1, 1], labels, torch.tensor([[True] * 4, [True] * 4, [False] * 4]))
    two = example_weights(lp[:2], rule, [1, 1], labels)
    assert torch.allclose(three[:, 2], torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(three[:, :2], two)
    nobody = example_weights(lp, rule, [1, 2, 1], labels, torch.zeros(3, 4, dtype=torch.bool))
    assert torch.isfinite(nobody).all() and torch.allclose(nobody.sum(-1), torch.ones(4, dtype=torch.float64))
