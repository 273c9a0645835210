"""Golden values and properties of the image losses (``distill.losses.feature``: fitnet, at, dkd).

Expected numbers come from ``golden_vision.py`` (plain ``math``); here ``distill`` must reproduce them (in
float64, at 1e-12), plus what the registry-wide contract cannot see: DKD's decomposition of classic KD,
projectors only when the channel counts differ, clear errors for unknown map names, stored top-k teachers for
DKD.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from distill.losses import LOSSES, DKDLoss, FitNetLoss, KDLoss, LossContext
from distill.outputs import ModelOutputs, SparseLogits

from . import golden_vision as ref

CASES = ref.cases()
# Everything here runs in float64: in float32 a DKD value is a difference of order-1 sums (KL terms rounded
# at ~1e-7 each, then times T^2 up to 16) that came out 2.5e-7 from a 1e-6 bound and moves with the
# summation order (SIMD width, threads). In float64 those sums (<= 16 terms of size <= 10, times 16) err by
# < 1e-12 (4e-16 seen), so 1e-12 holds anywhere and a wrong weight or factor is still off by > 1e-3.
TOL = 1e-12


def _outputs(spec: dict[str, Any]) -> ModelOutputs:
    out = ModelOutputs()
    if "feature_maps" in spec:
        out.feature_maps = {k: torch.tensor(v, dtype=torch.float64) for k, v in spec["feature_maps"].items()}
    if "logits" in spec:
        out.logits = torch.tensor(spec["logits"], dtype=torch.float64)
    return out


def _run(case: dict[str, Any]) -> float:
    loss = LOSSES.get(case["loss"]).build(dict(case["params"]), LossContext())
    student, teacher = _outputs(case["student"]), _outputs(case["teacher"])
    batch = {"labels": torch.tensor(case["labels"])} if "labels" in case else {}
    value = loss(student, teacher, batch)
    if "state" in case:  # projectors exist after the first call; then load the hand-picked weights
        state = {k: torch.tensor(v, dtype=torch.float64) for k, v in case["state"].items()}
        loss.load_state_dict(state, strict=True)
        value = loss(student, teacher, batch)
    if isinstance(value, dict):
        value = sum(value.values())
    return float(value.detach())


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_hand_computation(case: dict[str, Any]) -> None:
    assert _run(case) == pytest.approx(case["expected"], abs=TOL, rel=TOL)


def test_dkd_with_beta_one_minus_target_prob_is_classic_kd() -> None:
    # Zhao et al. eq. 3: KD = TCKD + (1 - p_y^T) NCKD, per row
    # float64: the two sides sum different terms (see TOL)
    z_s = torch.tensor([[0.3, -0.2, 1.0, 0.1]], dtype=torch.float64)
    z_t, y = torch.tensor([[1.0, 0.5, -1.0, 0.0]], dtype=torch.float64), torch.tensor([2])
    for t in (1.0, 3.0):
        p_y = float(torch.softmax(z_t / t, -1)[0, 2])
        parts = DKDLoss(temperature=t, alpha=1.0, beta=1.0 - p_y)(ModelOutputs(logits=z_s),
                                                                 ModelOutputs(logits=z_t), {"labels": y})
        kd = KDLoss(temperature=t)(ModelOutputs(logits=z_s), ModelOutputs(logits=z_t), {})
        assert float(parts["tckd"] + parts["nckd"]) == pytest.approx(float(kd), abs=TOL, rel=TOL)


def test_dkd_reads_a_stored_topk_teacher() -> None:
    z_t = torch.tensor([[2.0, -1.0, 0.0, 1.0]], dtype=torch.float64)  # two formulas for log p: float64
    lse = torch.logsumexp(z_t, -1)
    full = SparseLogits(values=z_t.sort(-1, descending=True).values, indices=z_t.argsort(-1, descending=True),
                        logsumexp=lse, num_classes=4)
    z_s, y = torch.tensor([[0.0, 1.0, 0.5, -0.5]], dtype=torch.float64), {"labels": torch.tensor([0])}
    dense = DKDLoss()(ModelOutputs(logits=z_s), ModelOutputs(logits=z_t), y)
    stored = DKDLoss()(ModelOutputs(logits=z_s), ModelOutputs(logits=full), y)
    assert float(sum(stored.values())) == pytest.approx(float(sum(dense.values())), abs=TOL, rel=TOL)


def test_fitnet_builds_projectors_only_for_different_channels() -> None:
    s = ModelOutputs(feature_maps={"a": torch.randn(2, 3, 4, 4), "b": torch.randn(2, 5, 2, 2)})
    t = ModelOutputs(feature_maps={"a": torch.randn(2, 3, 4, 4), "b": torch.randn(2, 8, 2, 2)})
    loss = FitNetLoss(layer_map=[["a", "a"], ["b", "b"]])
    loss(s, t, {})
    assert list(loss.projectors) == ["1"]
    assert loss.projectors["1"].weight.shape == (8, 5, 1, 1)
    assert loss.feature_names("student") == ["a", "b"] and FitNetLoss().feature_names("teacher") is None


def test_unknown_map_name_is_named() -> None:
    s = ModelOutputs(feature_maps={"a": torch.randn(1, 2, 2, 2)})
    with pytest.raises(ValueError, match="no feature map 'zz'"):
        FitNetLoss(layer_map={"zz": "a"})(s, s, {})
    with pytest.raises(ValueError, match="no position 3"):
        LOSSES.get("at")(layer_map=[[3, 0]])(s, s, {})
