"""Golden values and properties of the embedding-level losses (``distill.losses.embedding``).

The expected numbers come from ``golden_embedding.py`` (plain ``math``, written from the docstrings); here we
check that ``distill`` reproduces them (in float64, at 1e-12), plus the properties the registry-wide contract
cannot see: scale invariance of the affinity loss, the InfoNCE floor at identity, the CRD queue (FIFO, not
touched in eval mode, no gradient), when projectors are built, and finiteness on degenerate inputs (zero
vectors, B=1).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from distill.config import RecipeError
from distill.losses import (
    LOSSES,
    AffinityLoss,
    ContrastiveLoss,
    CRDLoss,
    EmbeddingLoss,
    LossContext,
    SimilarityMatrixLoss,
    SimilarityRankingLoss,
    check_params,
)
from distill.outputs import ModelOutputs

from . import golden_embedding as ref

# The golden cases run in float64 (embeddings, and projectors / heads / queue via ``.double()``). In float32
# a contrastive or CRD loss is a log-sum-exp of logits near 1 / tau = 20 minus one of them, rounded at ~1e-7
# relative per term: it came out 4e-7 from the value (a third of a 1.3e-6 bound) and moves with the summation
# order, while a 1e-6 bound checked the smallest cases (1.3e-8 and 3e-4) only to 100x and 0.3%. In float64
# the same sums (<= 30 terms of size <= 20) err by < 1e-13 (1e-15 seen): 1e-12 holds anywhere.
ATOL = RTOL = 1e-12
CASES = ref.cases()


def _emb(name_or_rows: str | list, dtype: torch.dtype = torch.float32, grad: bool = False) -> torch.Tensor:
    rows = ref.INPUTS[name_or_rows] if isinstance(name_or_rows, str) else name_or_rows
    return torch.tensor(rows, dtype=dtype).requires_grad_(grad)


def _out(e: torch.Tensor) -> ModelOutputs:
    return ModelOutputs(embeddings=e)


def _build(case: dict[str, Any]):
    loss = LOSSES.get(case["loss"]).build(dict(case["params"]), LossContext(**case["context"])).double()
    if "state" in case:
        current = loss.state_dict()
        state = {
            k: torch.tensor(v, dtype=current[k].dtype).reshape(current[k].shape)
            for k, v in case["state"].items()
        }
        loss.load_state_dict(state, strict=True)
    if "fit" in case:  # a bank read from the store (neighbourhood)
        loss.fit_teacher(torch.tensor(ref.INPUTS[case["fit"]], dtype=torch.float64))
    return loss


def _random(seed: int, rows: int, width: int, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=g) * scale


# ----------------------------------------------------------------------------------------------------------
# Golden values
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_hand_computed_value(case: dict[str, Any]) -> None:
    loss = _build(case)
    es, et = _emb(case["student"], torch.float64), _emb(case["teacher"], torch.float64)
    batch = {"example_index": torch.tensor(case["index"])} if "index" in case else {}
    value = loss(_out(es), _out(et), batch).detach()
    assert isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype == torch.float64
    assert float(value) == pytest.approx(case["expected"], abs=ATOL, rel=RTOL), (
        f"{case['id']}: distill gives {float(value)!r}, the hand computation {case['expected']!r}"
    )
    if case["loss"] == "crd":  # the call above ran in training mode, so the batch's keys were enqueued
        assert loss.training
        torch.testing.assert_close(
            loss.queue, torch.tensor(case["queue_after"], dtype=torch.float64).reshape(loss.queue.shape),
            atol=ATOL, rtol=RTOL,
        )
        assert int(loss.queue_ptr) == case["ptr_after"] and int(loss.queue_len) == case["len_after"]


def test_every_option_has_golden_values() -> None:
    by_loss: dict[str, list[dict]] = {}
    for c in CASES:
        by_loss.setdefault(c["loss"], []).append(c["params"])
    assert set(by_loss) == set(ref.GOLDEN_LOSSES)
    assert {p.get("loss", "mse") for p in by_loss["embedding"]} == {"mse", "cosine"}
    assert {p.get("projector", "auto") for p in by_loss["embedding"]} == {"auto", "linear", "none"}
    assert {p.get("include_self", False) for p in by_loss["affinity"]} == {False, True}
    assert 0.05 in {p.get("temperature", 0.05) for p in by_loss["affinity"]}  # the default temperature
    assert {p.get("projector", "auto") for p in by_loss["contrastive"]} == {"auto", "linear", "none"}
    assert {p["queue_size"] for p in by_loss["crd"]} >= {0, 2, 4}
    assert {tuple(p.get("dims") or ()) for p in by_loss["similarity_matrix"]} == {(), (2, 3, 4)}
    assert 0.015 in {p.get("margin", 0.015) for p in by_loss["similarity_ranking"]}  # the default margin
    nonzero = [c for c in CASES if c["loss"] == "similarity_ranking" and c["expected"] > 0]
    assert nonzero, "a ranking case where the student's order disagrees with the teacher's"


def test_reference_formulas_agree_with_torch() -> None:
    # guards the hand formulas themselves against a slip (double precision, independent torch ops)
    es, et = _emb("es", torch.float64), _emb("et", torch.float64)
    assert ref.embedding_value(ref.ES, ref.ET, "mse") == pytest.approx(float(F.mse_loss(es, et)), abs=1e-12)
    cos = F.cosine_similarity(es, et, dim=-1)
    assert ref.embedding_value(ref.ES, ref.ET, "cosine") == pytest.approx(float((1 - cos).mean()), abs=1e-12)
    logits = F.normalize(es, dim=-1) @ F.normalize(et, dim=-1).T / 0.1
    expected = F.cross_entropy(logits, torch.arange(3))
    assert ref.contrastive_value(ref.ES, ref.ET, 0.1) == pytest.approx(float(expected), abs=1e-12)
    a_s = F.normalize(es, dim=-1) @ F.normalize(es, dim=-1).T / 0.1
    a_t = F.normalize(et, dim=-1) @ F.normalize(et, dim=-1).T / 0.1
    kl = F.kl_div(F.log_softmax(a_s, -1), F.log_softmax(a_t, -1), log_target=True, reduction="batchmean")
    assert ref.affinity_value(ref.ES, ref.ET, 0.1, include_self=True) == pytest.approx(float(kl), abs=1e-12)


# ----------------------------------------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------------------------------------


def test_embedding_mse_is_torch_mse_loss() -> None:
    # sentence-transformers' MSELoss (the model2vec / multilingual distillation baseline) is plain mse_loss
    es, et = _random(0, 5, 7), _random(1, 5, 7)
    got = EmbeddingLoss(loss="mse")(_out(es), _out(et), {})
    torch.testing.assert_close(got, F.mse_loss(es, et), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["embedding", "contrastive"])
def test_projector_built_only_when_widths_differ(name: str) -> None:
    cls = LOSSES.get(name)
    same, wider = LossContext(student_hidden_size=4, teacher_hidden_size=4), LossContext(4, 6)
    assert cls.build({}, same).projector is None
    proj = cls.build({}, wider).projector
    assert isinstance(proj, torch.nn.Linear) and (proj.in_features, proj.out_features) == (4, 6)
    assert cls.build({"projector": "none"}, wider).projector is None
    square = cls.build({"projector": "linear"}, same).projector
    assert isinstance(square, torch.nn.Linear)
    torch.testing.assert_close(square.weight.detach(), torch.eye(4))  # starts as the identity map
    assert not square.bias.detach().any()
    assert cls.build({}, LossContext()).projector is None  # widths unknown: nothing to build
    with pytest.raises(ValueError, match="student_hidden_size"):
        cls.build({"projector": "linear"}, LossContext())


@pytest.mark.parametrize("name", ["embedding", "contrastive"])
def test_different_widths_without_projector_say_what_to_do(name: str) -> None:
    loss = LOSSES.get(name).build({"projector": "none"}, LossContext(4, 6))
    with pytest.raises(ValueError, match="projector: auto or linear"):
        loss(_out(_random(0, 3, 4)), _out(_random(1, 3, 6)), {})


def test_row_count_and_shape_mismatches_are_errors() -> None:
    loss = EmbeddingLoss()
    with pytest.raises(ValueError, match="same examples"):
        loss(_out(_random(0, 3, 4)), _out(_random(1, 2, 4)), {})
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        loss(_out(torch.randn(2, 3, 4)), _out(torch.randn(2, 3, 4)), {})


# ----------------------------------------------------------------------------------------------------------
# affinity
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_self", [False, True])
def test_affinity_is_invariant_to_scaling_the_embeddings(include_self: bool) -> None:
    es, et = _random(2, 5, 6), _random(3, 5, 3)
    loss = AffinityLoss(include_self=include_self)
    base = loss(_out(es), _out(et), {})
    assert float(base) > 1e-3
    row_scale = torch.tensor([[0.01], [3.0], [250.0], [1.0], [0.5]])  # any positive factor per row
    for s_scale, t_scale in ((7.5, 0.2), (row_scale, 1.0), (1.0, row_scale)):
        scaled = loss(_out(es * s_scale), _out(et * t_scale), {})
        torch.testing.assert_close(scaled, base, atol=1e-5, rtol=1e-5)


def test_affinity_without_diagonal_is_zero_at_identity_and_trains_the_student() -> None:
    # the contract tests use B = 2, where dropping the diagonal leaves one entry per row; B = 4 here
    es = _random(4, 4, 5).requires_grad_(True)
    et = _random(5, 4, 3).requires_grad_(True)  # a leaf, to see that no gradient leaks into the teacher
    loss = AffinityLoss()
    assert loss.include_self is False
    assert float(loss(_out(es), _out(es.detach().clone()), {}).detach()) == pytest.approx(0.0, abs=1e-7)
    value = loss(_out(es), _out(et), {})
    assert float(value.detach()) > 0
    value.backward()
    assert es.grad is not None and torch.isfinite(es.grad).all() and es.grad.abs().sum() > 0
    assert et.grad is None or not et.grad.any()


def test_affinity_diagonal_dominates_when_included() -> None:
    # why include_self defaults to false: at tau = 0.05 the constant self-similarity takes most of each row
    es, et = _random(6, 6, 8), _random(7, 6, 8)
    with_self = float(AffinityLoss(include_self=True)(_out(es), _out(et), {}))
    without = float(AffinityLoss(include_self=False)(_out(es), _out(et), {}))
    assert with_self < without


@pytest.mark.parametrize("include_self", [False, True])
def test_affinity_with_two_rows_is_finite(include_self: bool) -> None:
    es = _random(8, 2, 4).requires_grad_(True)
    value = AffinityLoss(include_self=include_self)(_out(es), _out(_random(9, 2, 4)), {})
    value.backward()
    assert torch.isfinite(value) and float(value.detach()) >= 0 and torch.isfinite(es.grad).all()


# ----------------------------------------------------------------------------------------------------------
# contrastive
# ----------------------------------------------------------------------------------------------------------


def test_contrastive_at_identity_has_a_floor_that_vanishes_as_tau_shrinks() -> None:
    e = _random(10, 4, 6)
    values = [float(ContrastiveLoss(temperature=t)(_out(e), _out(e.clone()), {})) for t in (1.0, 0.1, 0.01)]
    assert values[0] > values[1] > values[2] >= 0
    assert values[0] > 0.1  # not zero at identity: why zero_at_identity is False
    assert values[2] < 1e-3
    assert ContrastiveLoss.zero_at_identity is False and CRDLoss.zero_at_identity is False
    # also through a square identity projector on unit vectors
    u = F.normalize(e, dim=-1)
    loss = ContrastiveLoss(temperature=0.005, projector="linear", student_hidden_size=6,
                           teacher_hidden_size=6)
    assert float(loss(_out(u), _out(u.clone()), {}).detach()) < 1e-6


def test_contrastive_is_cross_entropy_over_teacher_rows() -> None:
    es, et = _random(11, 5, 4), _random(12, 5, 4)
    logits = F.normalize(es, dim=-1) @ F.normalize(et, dim=-1).T / 0.05
    expected = F.cross_entropy(logits, torch.arange(5))
    torch.testing.assert_close(ContrastiveLoss()(_out(es), _out(et), {}), expected)


# ----------------------------------------------------------------------------------------------------------
# crd
# ----------------------------------------------------------------------------------------------------------


def _crd(queue_size: int, dim: int = 3) -> CRDLoss:
    torch.manual_seed(0)
    return CRDLoss(dim=dim, queue_size=queue_size, student_hidden_size=4, teacher_hidden_size=6)


def _keys(loss: CRDLoss, et: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(loss.teacher_head(et), dim=-1)


def test_crd_queue_fills_fifo() -> None:
    loss = _crd(queue_size=5)
    batches = [_random(20 + i, 2, 6) for i in range(4)]  # 8 keys through a 5-slot queue
    keys = []
    for i, et in enumerate(batches):
        keys.append(_keys(loss, et))
        loss(_out(_random(40 + i, 2, 4)), _out(et), {})
        filled = min(2 * (i + 1), 5)
        assert int(loss.queue_len) == filled and int(loss.queue_ptr) == (2 * (i + 1)) % 5
    flat = torch.cat(keys)  # key j of the stream sits in slot j % 5 until overwritten
    expected = torch.stack([flat[j] for j in (5, 6, 7, 3, 4)])
    torch.testing.assert_close(loss.queue, expected, atol=1e-6, rtol=1e-6)


def test_crd_queue_not_updated_in_eval_mode() -> None:
    loss = _crd(queue_size=4)
    es, et = _random(50, 3, 4), _random(51, 3, 6)
    loss.eval()
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    first = loss(_out(es), _out(et), {})
    second = loss(_out(es), _out(et), {})
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in eval mode"
    torch.testing.assert_close(first, second)
    loss.train()
    trained = loss(_out(es), _out(et), {})
    torch.testing.assert_close(trained, first)  # the batch is enqueued after its own loss
    assert int(loss.queue_len) == 3
    again = loss(_out(es), _out(et), {})
    assert float(again.detach()) > float(trained.detach())  # the queued keys now add negatives


def test_crd_queue_is_a_buffer_without_gradient() -> None:
    loss = _crd(queue_size=4)
    names = {n for n, _ in loss.named_parameters()}
    assert names == {"student_head.weight", "student_head.bias", "teacher_head.weight", "teacher_head.bias"}
    assert {"queue", "queue_ptr", "queue_len"} <= set(loss.state_dict())
    es = _random(60, 3, 4).requires_grad_(True)
    for _ in range(3):  # the second and third calls read a queue written by the earlier ones
        value = loss(_out(es), _out(_random(61, 3, 6)), {})
        value.backward()
        assert not loss.queue.requires_grad and loss.queue.grad is None
        assert torch.isfinite(es.grad).all()


def test_crd_needs_the_widths() -> None:
    with pytest.raises(ValueError, match="student_hidden_size"):
        CRDLoss.build({}, LossContext())


# ----------------------------------------------------------------------------------------------------------
# All four: degenerate inputs, precision, defaults
# ----------------------------------------------------------------------------------------------------------

ALL = [
    ("embedding", {"loss": "mse"}), ("embedding", {"loss": "cosine"}),
    ("affinity", {}), ("affinity", {"include_self": True}),
    ("contrastive", {}), ("crd", {"queue_size": 4, "dim": 8}),
    ("similarity_matrix", {}), ("similarity_ranking", {}), ("neighbourhood", {"bank": "batch"}),
]
CTX = LossContext(student_hidden_size=4, teacher_hidden_size=6)


@pytest.mark.parametrize(("name", "params"), ALL, ids=[f"{n}-{p}" for n, p in ALL])
@pytest.mark.parametrize("rows", [1, 3])
def test_zero_vectors_and_single_rows_give_finite_values_and_gradients(
    name: str, params: dict, rows: int
) -> None:
    torch.manual_seed(0)
    loss = LOSSES.get(name).build(dict(params), CTX)
    student = _random(70, rows, 4)
    teacher = _random(71, rows, 6)
    student[0] = 0.0
    teacher[-1] = 0.0
    for _ in range(2):  # crd: the second call also reads the (zero-key) queue
        es = student.clone().requires_grad_(True)
        value = loss(_out(es), _out(teacher), {})
        assert torch.isfinite(value) and float(value.detach()) >= 0, f"{name}: {float(value.detach())}"
        value.backward()
        assert torch.isfinite(es.grad).all(), f"{name}: non-finite gradient"
        for p in loss.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
    if rows == 1 and name in ("affinity", "contrastive", "similarity_matrix", "similarity_ranking",
                              "neighbourhood"):
        assert float(value.detach()) == 0.0


@pytest.mark.parametrize(("name", "params"), ALL, ids=[f"{n}-{p}" for n, p in ALL])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_computes_in_at_least_float32(name: str, params: dict, dtype: torch.dtype) -> None:
    """bfloat16 outputs are upcast to float32 before the sums; float64 ones stay float64 (the exactness tests
    run models in float64), with the float32 projectors applied in their own dtype."""
    torch.manual_seed(0)
    loss = LOSSES.get(name).build(dict(params), CTX)
    es = _random(80, 3, 4).to(dtype).requires_grad_(True)
    value = loss(_out(es), _out(_random(81, 3, 6).to(dtype)), {})
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    value.backward()
    assert es.grad.dtype == dtype and torch.isfinite(es.grad.float()).all()


def test_documented_defaults() -> None:
    assert EmbeddingLoss().loss == "mse"
    aff = AffinityLoss()
    assert (aff.temperature, aff.include_self) == (0.05, False)
    assert ContrastiveLoss().temperature == 0.05
    crd = CRDLoss(student_hidden_size=4, teacher_hidden_size=6)
    assert (crd.dim, crd.temperature, crd.queue_size) == (128, 0.07, 4096)
    assert tuple(crd.queue.shape) == (4096, 128)
    assert SimilarityMatrixLoss().dims is None and SimilarityRankingLoss().margin == 0.015
    for cls in (EmbeddingLoss, AffinityLoss, ContrastiveLoss, CRDLoss, SimilarityMatrixLoss,
                SimilarityRankingLoss):
        assert cls.teacher_needs == ("embeddings",) and cls.student_needs == ("embeddings",)


@pytest.mark.parametrize(("name", "param", "value", "allowed"), [
    ("embedding", "loss", "l2", "mse or cosine"),
    ("embedding", "projector", "mlp", "auto, linear, none or pca"),
    ("affinity", "temperature", "0.05", "number > 0"),
    ("contrastive", "temperature", True, "number > 0"),
    ("crd", "queue_size", 2.0, "whole number >= 0"),
    ("crd", "dim", 0, "whole number >= 1"),
    ("similarity_matrix", "dims", [0, 4], "whole numbers >= 1"),
    ("similarity_matrix", "dims", 64, "whole numbers >= 1"),
    ("similarity_ranking", "margin", -0.1, "number > 0"),
])
def test_bad_values_name_the_parameter_and_the_allowed_values(name: str, param: str, value: Any,
                                                              allowed: str) -> None:
    with pytest.raises(RecipeError) as err:
        check_params(name, {param: value}, "losses[2]")
    assert str(err.value).startswith(f"losses[2]: {param}:") and allowed in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# similarity_matrix / similarity_ranking
# ----------------------------------------------------------------------------------------------------------


def test_similarity_losses_are_zero_when_the_student_keeps_the_teachers_structure() -> None:
    # a rotated and scaled copy of the teacher has the same cosines: both losses vanish, whatever the width
    et = _random(90, 6, 3).double()
    q, _ = torch.linalg.qr(_random(91, 5, 5).double())
    es = 3.0 * torch.cat([et, torch.zeros(6, 2, dtype=torch.float64)], dim=1) @ q
    for loss in (SimilarityMatrixLoss(), SimilarityRankingLoss()):
        assert float(loss(_out(es), _out(et), {})) == pytest.approx(0.0, abs=1e-12)


def test_similarity_matrix_matryoshka_trains_the_leading_dimensions() -> None:
    es = _random(92, 5, 6).double().requires_grad_(True)
    et = _random(93, 5, 4).double()
    SimilarityMatrixLoss(dims=[2, 4])(_out(es), _out(et), {}).backward()
    assert float(es.grad[:, 4:].abs().max()) == 0.0 and float(es.grad[:, :4].abs().max()) > 0
    with pytest.raises(ValueError, match="past the student's width 6"):
        SimilarityMatrixLoss(dims=[8])(_out(es), _out(et), {})


def test_similarity_ranking_pushes_a_misordered_triple_into_the_teachers_order() -> None:
    # teacher: row 1 closer to anchor 0 than row 2; student: the other way round
    et = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=torch.float64)
    es = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], dtype=torch.float64, requires_grad=True)
    loss = SimilarityRankingLoss()
    before = loss(_out(es), _out(et), {})
    before.backward()
    with torch.no_grad():
        moved = es - 0.05 * es.grad
    assert float(loss(_out(moved), _out(et), {})) < float(before.detach())


# ----------------------------------------------------------------------------------------------------------
# neighbourhood: the bank read from the store
# ----------------------------------------------------------------------------------------------------------


def test_neighbourhood_store_bank_is_fitted_once_and_named_when_missing() -> None:
    from distill.losses import NeighbourhoodLoss

    loss = NeighbourhoodLoss.build({}, LossContext(student_hidden_size=4, teacher_hidden_size=4))
    assert loss.needs_teacher_fit and not list(loss.parameters())
    assert not NeighbourhoodLoss(bank="batch").needs_teacher_fit
    es, et = _random(90, 3, 4).requires_grad_(True), _random(91, 3, 4)
    with pytest.raises(ValueError, match="bank: store has no bank yet"):
        loss(_out(es), _out(et), {})
    bank = _random(92, 50, 4)
    assert loss.fit_teacher(bank) is None  # nothing for a static student's start (only a PCA basis is)
    assert loss.bank.shape == (50, 4)
    torch.testing.assert_close(loss.bank.norm(dim=1), torch.ones(50))
    assert "bank" not in loss.state_dict()  # checkpoints stay small; a resumed run refits it from the store
    # the student equal to the teacher's own stored rows: zero, with and without leaving them out
    index = torch.tensor([4, 17, 33])
    for batch in ({"example_index": index}, {}):
        value = loss(_out(bank[index].clone()), _out(bank[index]), batch)
        assert float(value) == pytest.approx(0.0, abs=1e-6)
    value = loss(_out(es), _out(bank[index]), {"example_index": index})
    value.backward()
    assert float(value.detach()) > 0 and es.grad.abs().sum() > 0


def test_neighbourhood_bank_size_keeps_a_fixed_subset_and_still_leaves_own_rows_out() -> None:
    from distill.losses import NeighbourhoodLoss

    teacher = _random(93, 40, 3)
    a, b = NeighbourhoodLoss(bank_size=10), NeighbourhoodLoss(bank_size=10)
    a.fit_teacher(teacher)
    b.fit_teacher(teacher.clone())
    assert a.bank.shape == (10, 3)
    torch.testing.assert_close(a.bank, b.bank)  # the same subset every time
    kept = (a.bank_column >= 0).nonzero().squeeze(1)
    assert len(kept) == 10 and int((a.bank_column < 0).sum()) == 30
    torch.testing.assert_close(a.bank, F.normalize(teacher[kept], dim=1))
    # a row in the bank is left out; one outside it has nothing to leave out: the value is still finite
    index = torch.stack([kept[0], (a.bank_column < 0).nonzero()[0, 0]])
    value = a(_out(teacher[index].clone()), _out(teacher[index]), {"example_index": index})
    assert float(value) == pytest.approx(0.0, abs=1e-6)
