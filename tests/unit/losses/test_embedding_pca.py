"""``embedding`` with ``projector: pca``: the teacher reduced to the student's width by a basis fitted
once."""

from __future__ import annotations

import pytest
import torch

from distill.losses import LOSSES, LossContext
from distill.outputs import ModelOutputs

CTX = LossContext(student_hidden_size=3, teacher_hidden_size=6)


def _teacher_of_rank(k: int, n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, k, generator=g) @ torch.randn(k, 6, generator=g)  # (n, 6), rank k


def test_basis_is_orthonormal_deterministic_and_keeps_inner_products_of_low_rank_data():
    loss = LOSSES.get("embedding").build({"projector": "pca", "loss": "mse"}, CTX)
    # nothing learned, nothing dropped at export
    assert loss.needs_teacher_fit and not list(loss.parameters())
    t = _teacher_of_rank(3)
    basis = loss.fit_teacher(t).clone()
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss.fit_teacher(t.clone()), basis)  # same data, same basis (signs fixed)
    reduced = t @ basis.T  # (n, 3): rank-3 data loses nothing
    torch.testing.assert_close(reduced @ reduced.T, t @ t.T, atol=1e-3, rtol=1e-4)


def test_student_equal_to_the_reduced_teacher_has_zero_loss_and_the_basis_is_checkpointed():
    loss = LOSSES.get("embedding").build({"projector": "pca", "loss": "cosine"}, CTX)
    t = _teacher_of_rank(3)
    basis = loss.fit_teacher(t)
    student = ModelOutputs(embeddings=(t[:5] @ basis.T).requires_grad_(True))
    value = loss(student, ModelOutputs(embeddings=t[:5]), {})
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6)
    state = loss.state_dict()
    fresh = LOSSES.get("embedding").build({"projector": "pca", "loss": "cosine"}, CTX)
    fresh.load_state_dict(state)  # a resumed run gets the same basis from the checkpoint
    assert torch.equal(fresh.teacher_basis, basis) and bool(fresh.basis_fitted)


def test_unfitted_or_impossible_pca_fails_clearly():
    loss = LOSSES.get("embedding").build({"projector": "pca"}, CTX)
    with pytest.raises(ValueError, match="no basis yet"):
        loss(ModelOutputs(embeddings=torch.zeros(2, 3)), ModelOutputs(embeddings=torch.zeros(2, 6)), {})
    with pytest.raises(ValueError, match="wider"):
        LOSSES.get("embedding").build({"projector": "pca"},
                                      LossContext(student_hidden_size=8, teacher_hidden_size=6))
