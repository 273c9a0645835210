"""Golden values and identities for the built-in losses.

The expected numbers live in ``tests/data/loss_golden.json`` and were computed by hand (plain ``math``) in
``golden_reference.py``; here we only check that ``distill`` reproduces them, plus the identities of
METHODS.md sections 0 and 2 (reduction factor C, soft CE = KL + H, symmetry, T^2 scaling, the KD gradient).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from distill.losses import LOSSES, KDLoss, LossContext
from distill.losses.divergence import DIVERGENCES, REDUCTIONS
from distill.outputs import ModelOutputs, SparseLogits

from . import golden_reference as ref

FIXTURE = json.loads(ref.FIXTURE.read_text())
INPUTS: dict[str, Any] = FIXTURE["inputs"]
CASES: list[dict[str, Any]] = FIXTURE["cases"]
ATOL = 1e-6  # float32 identities that hold up to the last rounding (same sums, exact factors) and gradients
# The golden values and the identities between different formulas run in float64 (inputs, and projectors via
# ``.double()``). In float32 a KD value is a difference of order-1 sums, each term rounded at ~1e-7, then
# scaled by T^2 = 16: one case already erred by 6.7e-7 against a 1e-6 bound, and another summation order
# (SIMD width, threads) moves it. In float64 those sums (<= 30 terms of size <= 10, times T^2 <= 16) err by
# at most ~5e-13 (3e-15 seen), so 1e-12 still holds on any machine and is 1e6x tighter than a wrong factor.
F64_ATOL = F64_RTOL = 1e-12


# ----------------------------------------------------------------------------------------------------------
# Fixture -> ModelOutputs
# ----------------------------------------------------------------------------------------------------------


def _float(name: str) -> torch.Tensor:
    return torch.tensor(INPUTS[name], dtype=torch.float64)


def _outputs(spec: dict[str, str] | None) -> ModelOutputs:
    out = ModelOutputs()
    for field, name in (spec or {}).items():
        if field == "logits":
            out.logits = _float(name)
        elif field == "sparse_logits":
            rec = INPUTS[name]
            out.logits = SparseLogits(
                values=torch.tensor(rec["values"], dtype=torch.float64),
                indices=torch.tensor(rec["indices"], dtype=torch.long),
                logsumexp=torch.tensor(rec["logsumexp"], dtype=torch.float64),
                num_classes=rec["num_classes"],
                mode=rec["mode"],
            )
        elif field == "hidden_states":
            out.hidden_states = tuple(torch.tensor(h, dtype=torch.float64) for h in INPUTS[name])
        else:  # pragma: no cover - a fixture typo
            raise KeyError(f"fixture field {field!r} is not understood by test_golden._outputs")
    return out


def _batch(spec: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    batch = {}
    for key, value in (spec or {}).items():
        raw = INPUTS[value] if isinstance(value, str) else value
        batch[key] = torch.tensor(raw, dtype=torch.long)
    return batch


def _run_case(case: dict[str, Any]) -> float:
    cls = LOSSES.get(case["loss"])
    loss = cls.build(dict(case["params"]), LossContext(**case.get("context", {}))).double()  # projectors too
    if "state" in case:
        state = {k: torch.tensor(v, dtype=torch.float64) for k, v in case["state"].items()}
        loss.load_state_dict(state, strict=True)
    value = loss(_outputs(case.get("student")), _outputs(case.get("teacher")), _batch(case.get("batch")))
    assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{case['id']}: not a scalar tensor"
    return float(value.detach())


# ----------------------------------------------------------------------------------------------------------
# The golden values
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_hand_computed_value(case: dict[str, Any]) -> None:
    got = _run_case(case)
    assert got == pytest.approx(case["expected"], abs=F64_ATOL, rel=F64_RTOL), (
        f"{case['id']}: distill gives {got!r}, the hand computation {case['expected']!r}"
    )


def _assert_close_tree(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-12, rel=1e-12), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_close_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_fixture_is_up_to_date_with_the_reference() -> None:
    # json round trip turns tuples into lists, as in the stored file
    fresh = json.loads(json.dumps(ref.build_fixture()))
    _assert_close_tree(fresh, FIXTURE)


def _losses_with_their_own_golden_module() -> set[str]:
    """A loss family may keep its hand computations in ``golden_<family>.py`` (checked by its own test file);
    such a module lists the losses it covers in ``GOLDEN_LOSSES``."""
    import importlib
    from pathlib import Path

    covered: set[str] = set()
    for path in sorted(Path(__file__).parent.glob("golden_*.py")):
        if path.stem != "golden_reference":
            module = importlib.import_module(f"{__package__}.{path.stem}")
            covered |= set(getattr(module, "GOLDEN_LOSSES", ()))
    return covered


def test_every_registered_loss_has_golden_values() -> None:
    missing = sorted(set(LOSSES) - {c["loss"] for c in CASES} - _losses_with_their_own_golden_module())
    assert not missing, (
        f"no golden values for registered loss(es) {missing}; add hand-computed cases to "
        "tests/unit/losses/golden_reference.py and regenerate tests/data/loss_golden.json (or to a "
        "golden_<family>.py module listing them in GOLDEN_LOSSES, with its own test file)"
    )


def test_every_divergence_and_reduction_has_golden_values() -> None:
    kd = [c["params"] for c in CASES if c["loss"] == "kd"]
    assert {p["divergence"] for p in kd} == set(DIVERGENCES)
    assert {p["reduction"] for p in kd} == set(REDUCTIONS)
    assert {p["temperature"] for p in kd} >= {1.0, 4.0}
    assert {p["scale_by_t2"] for p in kd} == {True, False}
    assert {p.get("beta") for p in kd if p["divergence"] == "jsd"} == {0.5, 0.1}


# ----------------------------------------------------------------------------------------------------------
# Identities (random inputs, distill only)
# ----------------------------------------------------------------------------------------------------------


def _logits(seed: int, shape: tuple[int, ...] = (4, 6), scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def _kd(zs: torch.Tensor, zt: torch.Tensor, batch: dict | None = None, **params: Any) -> torch.Tensor:
    return KDLoss(**params)(ModelOutputs(logits=zs), ModelOutputs(logits=zt), batch or {})


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_batchmean_is_c_times_elementwise_mean(divergence: str, temperature: float) -> None:
    zs, zt = _logits(0), _logits(1)
    c = zs.shape[-1]
    bm = _kd(zs, zt, divergence=divergence, reduction="batchmean", temperature=temperature)
    em = _kd(zs, zt, divergence=divergence, reduction="elementwise_mean", temperature=temperature)
    sm = _kd(zs, zt, divergence=divergence, reduction="sum", temperature=temperature)
    torch.testing.assert_close(bm, c * em, atol=ATOL, rtol=1e-6)
    torch.testing.assert_close(sm, zs.shape[0] * bm, atol=ATOL, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_ce_is_forward_kl_plus_teacher_entropy(temperature: float) -> None:
    zs, zt = _logits(2).double(), _logits(3).double()  # two different sums: float64 (see F64_ATOL)
    p = torch.softmax(zt / temperature, dim=-1)
    entropy = -(p * p.log()).sum(-1).mean()  # batchmean H(P_T)
    soft_ce = _kd(zs, zt, divergence="soft_ce", temperature=temperature, scale_by_t2=False)
    fkl = _kd(zs, zt, divergence="forward_kl", temperature=temperature, scale_by_t2=False)
    torch.testing.assert_close(soft_ce, fkl + entropy, atol=F64_ATOL, rtol=F64_RTOL)


@pytest.mark.parametrize(("divergence", "beta"), [("symmetric_kl", 0.5), ("jsd", 0.5)])
def test_symmetric_divergences_do_not_care_which_side_is_the_teacher(divergence: str, beta: float) -> None:
    a, b = _logits(4).double(), _logits(5).double()  # the mixture is summed in another order: float64
    ab = _kd(a, b, divergence=divergence, beta=beta)
    ba = _kd(b, a, divergence=divergence, beta=beta)
    torch.testing.assert_close(ab, ba, atol=F64_ATOL, rtol=F64_RTOL)


def test_reverse_kl_is_forward_kl_with_roles_swapped() -> None:
    a, b = _logits(6).double(), _logits(7).double()  # two different formulas (forward KL is fused): float64
    reverse, forward = _kd(a, b, divergence="reverse_kl"), _kd(b, a, divergence="forward_kl")
    torch.testing.assert_close(reverse, forward, atol=F64_ATOL, rtol=F64_RTOL)


def test_jsd_with_small_beta_is_not_symmetric() -> None:
    # guards the golden jsd0.1 cases against a silently ignored beta
    a, b = _logits(8), _logits(9)
    ab, ba = float(_kd(a, b, divergence="jsd", beta=0.1)), float(_kd(b, a, divergence="jsd", beta=0.1))
    assert abs(ab - ba) > 1e-4


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_t2_scaling_multiplies_by_t_squared(divergence: str, reduction: str) -> None:
    zs, zt, t = _logits(10), _logits(11), 4.0
    on = _kd(zs, zt, divergence=divergence, reduction=reduction, temperature=t, scale_by_t2=True)
    off = _kd(zs, zt, divergence=divergence, reduction=reduction, temperature=t, scale_by_t2=False)
    torch.testing.assert_close(on, t**2 * off, atol=ATOL, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# The KD gradient: d/dz_S [T^2 KL(p_T || q_S)]_batchmean = T (q - p) / B   (METHODS.md section 2)
# ----------------------------------------------------------------------------------------------------------


def _expected_grad(zs: torch.Tensor, zt: torch.Tensor, t: float, rows: float) -> torch.Tensor:
    q = torch.softmax(zs.double() / t, dim=-1)
    p = torch.softmax(zt.double() / t, dim=-1)
    return t * (q - p) / rows


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_gradient_autograd_matches_formula(temperature: float) -> None:
    zs = _logits(12).requires_grad_(True)
    zt = _logits(13)
    _kd(zs, zt, temperature=temperature).backward()
    torch.testing.assert_close(zs.grad.double(), _expected_grad(zs, zt, temperature, zs.shape[0]), atol=ATOL,
                               rtol=1e-5)


def test_kd_gradient_with_token_mask_averages_over_real_tokens() -> None:
    zs = _logits(14, (2, 3, 5)).requires_grad_(True)  # (B, L, V)
    zt = _logits(15, (2, 3, 5))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    t = 2.0
    _kd(zs, zt, {"attention_mask": mask}, temperature=t).backward()
    expected = _expected_grad(zs, zt, t, rows=4.0) * mask.unsqueeze(-1)
    torch.testing.assert_close(zs.grad.double(), expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_gradient_finite_differences_of_distill(temperature: float) -> None:
    # float64: in float32 the round-off of T^2 * KL (~1e-6 at T = 4, and it changes with the summation order)
    # over 2 eps gave 4e-5 of error against a 2e-4 bound. In float64 the central difference errs by its
    # truncation eps^2 / 6 * |f'''| (5e-11 seen) plus round-off ~1e-16 * |f| / eps ~ 1e-11, so 1e-8 holds
    # anywhere, and a wrong T or 1/B factor is off by > 1e-2.
    zs, zt, eps = _logits(16, (3, 4)).double(), _logits(17, (3, 4)).double(), 1e-4
    expected = _expected_grad(zs, zt, temperature, zs.shape[0])
    fd = torch.zeros_like(expected)
    for idx in range(zs.numel()):
        bump = torch.zeros(zs.numel(), dtype=torch.float64)
        bump[idx] = eps
        bump = bump.view_as(zs)
        up = _kd(zs + bump, zt, temperature=temperature)
        down = _kd(zs - bump, zt, temperature=temperature)
        fd.view(-1)[idx] = (up - down) / (2 * eps)
    torch.testing.assert_close(fd, expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_gradient_finite_differences_of_the_reference(temperature: float) -> None:
    # the same identity in double precision on the hand-written formula: validates the formula itself
    zs, zt, eps = ref.ZS, ref.ZT, 1e-6
    rows = len(zs)

    def value(student: list[list[float]]) -> float:
        return ref.kd_value(student, [ref.softmax(z, temperature) for z in zt], temperature=temperature,
                            divergence_kind="forward_kl", reduction="batchmean", scale_by_t2=True, beta=0.5,
                            num_classes=3)

    for b in range(rows):
        q, p = ref.softmax(zs[b], temperature), ref.softmax(zt[b], temperature)
        for c in range(3):
            up = [row[:] for row in zs]
            down = [row[:] for row in zs]
            up[b][c] += eps
            down[b][c] -= eps
            fd = (value(up) - value(down)) / (2 * eps)
            assert fd == pytest.approx(temperature * (q[c] - p[c]) / rows, abs=1e-8)
    assert math.isfinite(value(zs))
