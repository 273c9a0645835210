"""Divergences between a teacher and a student distribution, with explicit temperature and reduction.

Conventions (see METHODS.md section 0): the teacher is the target ``P``, the student ``Q``;
``KL(P||Q) = sum_c P_c (log P_c - log Q_c)``. Reductions over the rows (examples, or tokens when a mask is
given):

- ``batchmean``: sum over classes, mean over rows (textbook KD; TinyViT, ScaleKD);
- ``elementwise_mean``: mean over rows *and* classes = ``batchmean / C`` (DeiT legacy; PromptKD, m2mKD,
  whose large loss weights compensate the factor C);
- ``sum``: sum over everything.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from distill.outputs import SparseLogits, upcast

Reduction = Literal["batchmean", "elementwise_mean", "sum"]
Divergence = Literal["forward_kl", "reverse_kl", "symmetric_kl", "jsd", "soft_ce"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "symmetric_kl", "jsd", "soft_ce")
REDUCTIONS: tuple[str, ...] = ("batchmean", "elementwise_mean", "sum")


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-class terms of KL(P||Q); 0 where P is 0 (xlogy convention)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def _mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w A + (1 - w) B) from log A and log B, computed stably in log space."""
    if weight_a <= 0.0:
        return log_b
    return torch.logsumexp(torch.stack([log_a + math.log(weight_a), log_b + math.log1p(-weight_a)]), dim=0)


def divergence_terms(
    log_p: torch.Tensor, log_q: torch.Tensor, kind: str, beta: float = 0.5, skew: float = 0.0
) -> torch.Tensor:
    """Per-class terms (..., C) of the divergence between teacher ``log_p`` and student ``log_q``.

    ``skew`` (alpha, DistiLLM's skew KL) only changes ``forward_kl`` and ``reverse_kl``: the second argument
    of the KL becomes a mixture that leans on the first one, ``KL(P || a P + (1-a) Q)`` (skew forward KL) and
    ``KL(Q || a Q + (1-a) P)`` (skew reverse KL). Both stay finite where the student puts (almost) no mass on
    a teacher class, and equal the plain KL at ``skew = 0``.
    """
    if kind == "forward_kl":
        return _kl_terms(log_p, _mix(log_p, log_q, skew))
    if kind == "reverse_kl":
        return _kl_terms(log_q, _mix(log_q, log_p, skew))
    if kind == "symmetric_kl":  # SSLD's "improved JS": mean of the two KL directions, not mixture-based
        return 0.5 * (_kl_terms(log_p, log_q) + _kl_terms(log_q, log_p))
    if kind == "jsd":
        # generalised JSD (GKD): M = beta*P + (1-beta)*Q; beta*KL(P||M) + (1-beta)*KL(Q||M)
        log_m = torch.logsumexp(
            torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0
        )
        return beta * _kl_terms(log_p, log_m) + (1.0 - beta) * _kl_terms(log_q, log_m)
    if kind == "soft_ce":  # = forward KL + H(P): same gradient w.r.t. the student
        p = log_p.exp()
        return -p * log_q
    raise ValueError(f"unknown divergence {kind!r}; valid: {', '.join(DIVERGENCES)}")


class _ForwardKLRows(torch.autograd.Function):
    """Per-row ``KL(P || softmax(z / T))`` with a hand-written gradient ``(softmax(z / T) - P) / T``.

    The same values and gradients as the composed ops, with two tensors of the logits' size kept between
    forward and backward instead of about six: for a language model those tensors are tokens x vocabulary
    floats (100 MB for 512 tokens of a 49k vocabulary), and each pass over them costs time on a CPU.
    """

    @staticmethod
    def forward(ctx, log_p: torch.Tensor, z: torch.Tensor, t: float) -> torch.Tensor:  # type: ignore[override]
        log_q = torch.log_softmax(upcast(z) / t, dim=-1)
        dtype = torch.promote_types(log_p.dtype, log_q.dtype)  # einsum does not promote by itself
        log_q, p = log_q.to(dtype), log_p.to(dtype).exp()
        # sum_c p log p (0 where p = 0) minus sum_c p log q, the latter as a dot product without a temporary
        rows = torch.special.xlogy(p, p).sum(-1) - torch.einsum("...c,...c->...", p, log_q)
        ctx.save_for_backward(p, log_q)
        ctx.t, ctx.dtype = t, z.dtype
        return rows

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor):  # type: ignore[override]
        p, log_q = ctx.saved_tensors
        grad = log_q.exp().sub_(p).mul_(grad_rows.unsqueeze(-1) / ctx.t)
        return None, grad.to(ctx.dtype), None


def forward_kl_rows(log_p: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row forward KL (...,) from teacher log-probabilities at temperature ``temperature`` (detached) and
    raw student logits; see :class:`_ForwardKLRows`."""
    return _ForwardKLRows.apply(log_p.detach(), student_logits, float(temperature))


def reduce_terms(
    terms: torch.Tensor,
    reduction: str,
    mask: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Reduce per-class terms (..., C) to a scalar. ``mask`` (...,) selects the rows that count."""
    per_row = terms.sum(dim=-1)  # (...,)
    if mask is not None:
        mask = mask.to(per_row.dtype)
        per_row = per_row * mask
        rows = mask.sum()
    else:
        rows = torch.tensor(float(per_row.numel()), device=per_row.device)
    if reduction == "sum":
        return per_row.sum()
    # clamp avoids 0/0 on a batch with no valid rows (then the loss is 0, not NaN)
    mean = per_row.sum() / rows.clamp_min(1.0)
    if reduction == "batchmean":
        return mean
    if reduction == "elementwise_mean":
        return mean / float(num_classes if num_classes is not None else terms.shape[-1])
    raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")


def sparse_teacher_log_probs(sparse: SparseLogits,
                             mode: str = "spread") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn stored top-k logits into teacher log-probabilities at temperature 1.

    ``spread`` (TinyViT): a dense (..., C) distribution; the kept classes get their exact probability and the
    missing mass ``1 - sum(top-k)`` is shared evenly by the other ``C - k`` classes. Exact when k == C.
    ``topk``: returns the (..., k) log-probabilities renormalised over the kept classes, and the indices so
    the caller can gather the student's logits at the same classes.
    """
    # the teacher is a fixed target: never back-propagate into it (the dense path detaches too)
    values = upcast(sparse.values.detach())
    lse = upcast(sparse.logsumexp.detach()).unsqueeze(-1)
    log_kept = values - lse  # (..., k) exact log-probs of the kept classes
    if mode == "topk":
        return torch.log_softmax(values, dim=-1), sparse.indices.long()
    if mode != "spread":
        raise ValueError(f"unknown reconstruction {mode!r}; valid: spread, topk")
    c, k = sparse.num_classes, sparse.k
    shape = values.shape[:-1] + (c,)
    if k >= c:
        dense = torch.empty(shape, dtype=values.dtype, device=values.device)
        dense.scatter_(-1, sparse.indices.long(), log_kept)
        return dense, None
    kept_mass = log_kept.exp().sum(dim=-1, keepdim=True).clamp(max=1.0)
    tail = torch.log((1.0 - kept_mass).clamp_min(1e-12) / (c - k))  # (..., 1)
    dense = tail.expand(shape).clone()
    dense.scatter_(-1, sparse.indices.long(), log_kept)
    return dense, None


def teacher_log_probs(
    teacher_logits: torch.Tensor | SparseLogits,
    student_logits: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The teacher's log-probabilities at temperature ``temperature`` and the student logits aligned with them
    class by class (gathered at the kept classes for a ``topk``-restricted store).

    Returns (log_p_teacher, student_logits, C) where C is the full number of classes (for the
    ``elementwise_mean`` reduction).
    """
    t = float(temperature)
    if isinstance(teacher_logits, SparseLogits):
        c = teacher_logits.num_classes
        if student_logits.shape[-1] != c:
            raise ValueError(
                f"student has {student_logits.shape[-1]} classes but the stored teacher has {c}; "
                "the student's head must match the teacher's label set"
            )
        log_p1, idx = sparse_teacher_log_probs(teacher_logits, teacher_logits.mode)
        if idx is not None:  # top-k restricted: compare on the kept classes only
            student_logits = student_logits.gather(-1, idx)
        # softmax(log p1 / T) equals softmax(z / T) when nothing was dropped
        return torch.log_softmax(log_p1 / t, dim=-1), student_logits, c
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise ValueError(
            f"teacher has {teacher_logits.shape[-1]} classes and the student {student_logits.shape[-1]}; "
            "give the student the teacher's label set (num_labels / id2label)"
        )
    return (torch.log_softmax(upcast(teacher_logits.detach()) / t, dim=-1), student_logits,
            student_logits.shape[-1])


def teacher_student_log_probs(
    teacher_logits: torch.Tensor | SparseLogits,
    student_logits: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Log-probabilities at temperature ``temperature`` for teacher and student, aligned class by class.

    Returns (log_p_teacher, log_q_student, C) where C is the full number of classes (for the
    ``elementwise_mean`` reduction).
    """
    log_p, z_s, c = teacher_log_probs(teacher_logits, student_logits, temperature)
    return log_p, torch.log_softmax(upcast(z_s) / float(temperature), dim=-1), c
