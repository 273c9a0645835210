"""Losses over output logits: soft-target KD (any divergence), hard-label CE, hard teacher labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from distill.losses.base import DistillLoss, register_loss
from distill.losses.divergence import (
    DIVERGENCES,
    REDUCTIONS,
    divergence_terms,
    forward_kl_rows,
    reduce_terms,
    teacher_log_probs,
    teacher_student_log_probs,
)
from distill.outputs import ModelOutputs, SparseLogits, upcast

LABEL_AWARE: tuple[str, ...] = ("none", "shift", "trust")
LOSS_MASK = "loss_mask"
"""Batch key of a (B, L) mask naming the positions whose next-token prediction is trained (causal LMs: the
logits at position t predict token t+1, so the mask is 1 where that next token is a real, non-prompt token).
When present it overrides the attention mask for every token-level logit loss."""


def _row_mask(logits: torch.Tensor, batch: dict[str, torch.Tensor], outputs: ModelOutputs | None = None
              ) -> torch.Tensor | None:
    """Token mask for (B, L, V) logits; None for (B, C) classifier logits (every row counts)."""
    if logits.dim() != 3:
        return None
    if batch.get(LOSS_MASK) is not None:
        return batch[LOSS_MASK]
    if outputs is not None and outputs.attention_mask is not None:
        return outputs.attention_mask
    return batch.get("attention_mask")


@register_loss
class KDLoss(DistillLoss):
    """Soft-target knowledge distillation between teacher and student class distributions.

    ``L = s * D(softmax(z_T / T), softmax(z_S / T))`` with ``s = T^2`` when ``scale_by_t2`` (Hinton et al.,
    2015: keeps the gradient size independent of T) and ``D`` one of ``forward_kl`` (KL(P_T||Q_S)),
    ``reverse_kl`` (KL(Q_S||P_T)), ``symmetric_kl`` (their mean; the "improved JS" of SSLD, used label-free),
    ``jsd`` (generalised Jensen-Shannon with mixture weight ``beta``, as in GKD) or ``soft_ce`` (cross-entropy
    with the teacher's soft targets; equals forward KL plus the constant teacher entropy).
    ``skew`` = a > 0 turns ``forward_kl`` into the skew KL ``KL(P || a P + (1-a) Q)`` and ``reverse_kl`` into
    the skew reverse KL ``KL(Q || a Q + (1-a) P)`` (DistiLLM; a = 0.1 there).
    ``label_aware`` uses the gold label of labelled rows (classifiers; unlabelled rows, label -100, are
    untouched) where the teacher gets it wrong: ``shift`` swaps the teacher's logits of its arg-max class and
    the gold class, so the target ranks the gold class first and keeps the rest of the teacher's knowledge
    (TextBrewer's probability shift); ``trust`` leaves those rows out of this loss (the CE term still sees
    them). Either way a teacher's blind spot on the labelled rows is not taught.
    Works with dense teacher logits or top-k logits from the store, for classifiers (B, C) and language
    models (B, L, V): with a ``loss_mask`` in the batch (the causal-LM collator's next-token mask; prompt
    and padding positions 0) the mean runs over those positions, otherwise over the attention mask.

    Recipe::

        losses:
          - {name: kd, weight: 0.5, temperature: 2.0, divergence: forward_kl}
          - {name: ce, weight: 0.5}
    """

    name = "kd"
    teacher_needs = ("logits",)
    student_needs = ("logits",)
    formula = (
        "T^2 * D(softmax(z_T/T) || softmax(z_S/T)), D in {forward_kl, reverse_kl, symmetric_kl, jsd, soft_ce}"
    )
    citation = (
        "Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. arXiv:1503.02531 (2015); "
        "symmetric_kl: Cui et al., Beyond Self-Supervision (SSLD), PaddleClas (2021); "
        "jsd: Agarwal et al., On-Policy Distillation of Language Models (GKD), ICLR 2024; "
        "skew: Ko et al., DistiLLM: Towards Streamlined Distillation for Large Language Models, ICML 2024"
    )

    def __init__(
        self,
        temperature: float = 2.0,
        divergence: str = "forward_kl",
        reduction: str = "batchmean",
        scale_by_t2: bool = True,
        beta: float = 0.5,
        skew: float = 0.0,
        label_aware: str = "none",
    ):
        super().__init__()
        self.validate_params(temperature, divergence, reduction, scale_by_t2, beta, skew, label_aware)
        self.temperature = float(temperature)
        self.divergence = divergence
        self.reduction = reduction
        self.scale_by_t2 = scale_by_t2
        self.beta = float(beta)
        self.skew = float(skew)
        self.label_aware = label_aware

    @staticmethod
    def validate_params(
        temperature: float = 2.0,
        divergence: str = "forward_kl",
        reduction: str = "batchmean",
        scale_by_t2: bool = True,
        beta: float = 0.5,
        skew: float = 0.0,
        label_aware: str = "none",
    ) -> None:
        if label_aware not in LABEL_AWARE:
            raise ValueError(f"label_aware: {label_aware!r} is not allowed; choose one of "
                             f"{', '.join(LABEL_AWARE)}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature: {temperature!r} is not allowed; use a number > 0 (1-4 is usual)")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence: {divergence!r} is not allowed; "
                             f"choose one of {', '.join(DIVERGENCES)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: {reduction!r} is not allowed; "
                             f"choose one of {', '.join(REDUCTIONS)}")
        if not isinstance(scale_by_t2, bool):
            raise ValueError(f"scale_by_t2: {scale_by_t2!r} is not allowed; use true or false")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < 1:
            raise ValueError(f"beta: {beta!r} is not allowed; use 0 < beta < 1 (0.5 is the symmetric JSD)")
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0 <= skew < 1:
            raise ValueError(f"skew: {skew!r} is not allowed; "
                             "use 0 <= skew < 1 (0 = plain KL, 0.1 in DistiLLM)")
        if skew and divergence not in ("forward_kl", "reverse_kl"):
            raise ValueError(f"skew: {skew!r} applies to forward_kl and reverse_kl only, not {divergence!r}; "
                             "set skew: 0 or choose one of those divergences")

    @property
    def zero_at_identity(self) -> bool:  # type: ignore[override]
        return self.divergence != "soft_ce"  # soft CE keeps the teacher entropy

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        z_s = student.require("logits", self.name)
        z_t = teacher.require("logits", self.name)
        mask = _row_mask(z_s, batch, student)
        if self.label_aware != "none":
            z_t, mask = self._use_labels(z_t, z_s, batch.get("labels"))
        if self.divergence == "forward_kl" and not self.skew:
            # the common case, with a hand-written gradient: fewer vocabulary-sized tensors for LMs
            log_p, z_aligned, c = teacher_log_probs(z_t, z_s, self.temperature)
            terms = forward_kl_rows(log_p, z_aligned, self.temperature).unsqueeze(-1)  # (..., 1): row sums
        else:
            log_p, log_q, c = teacher_student_log_probs(z_t, z_s, self.temperature)
            terms = divergence_terms(log_p, log_q, self.divergence, self.beta, self.skew)
        loss = reduce_terms(terms, self.reduction, mask, num_classes=c)
        if self.scale_by_t2:
            loss = loss * self.temperature**2
        return loss

    def _use_labels(self, z_t: torch.Tensor | SparseLogits, z_s: torch.Tensor,
                    labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher logits (B, C) with ``shift`` applied, and the row mask (``trust``), for the rows whose
        gold label (``labels``, -100 = unlabelled) the teacher's arg-max misses."""
        if z_s.dim() != 2:
            raise ValueError("kd: label_aware works on classifier logits (batch, classes), not per-token "
                             "logits")
        if isinstance(z_t, SparseLogits):
            raise ValueError("kd: label_aware needs the teacher's full class distribution; keep every logit "
                             "in the store (store.topk: 0)")
        if labels is None:
            return z_t, None
        labels = labels.to(z_t.device).long()
        wrong = (labels >= 0) & (z_t.argmax(-1) != labels)  # (B,)
        if self.label_aware == "trust":
            return z_t, (~wrong).to(z_s.dtype)
        rows = wrong.nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            return z_t, None
        z_t = z_t.detach().clone()
        top = z_t[rows].argmax(-1)
        gold = labels[rows]
        top_val, gold_val = z_t[rows, top].clone(), z_t[rows, gold].clone()
        # swap: the gold class gets the teacher's top logit, its arg-max class the gold class's logit
        z_t[rows, top], z_t[rows, gold] = gold_val, top_val
        return z_t, None


@register_loss
class CELoss(DistillLoss):
    """Cross-entropy with the ground-truth labels (the usual supervised term mixed with KD).

    ``L = -mean_b log softmax(z_S)_{y_b}``; rows labelled ``-100`` (unlabelled data) are skipped, and a batch
    without any label contributes 0. ``label_smoothing`` as in ``torch.nn.functional.cross_entropy``.
    """

    name = "ce"
    student_needs = ("logits",)
    needs_labels = True
    zero_at_identity = False
    formula = "-mean_b log softmax(z_S)[y_b]  (labels == -100 ignored)"
    citation = "standard supervised cross-entropy"

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.validate_params(label_smoothing)
        self.label_smoothing = float(label_smoothing)

    @staticmethod
    def validate_params(label_smoothing: float = 0.0) -> None:
        is_number = isinstance(label_smoothing, (int, float)) and not isinstance(label_smoothing, bool)
        if not is_number or not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing: {label_smoothing!r} is not allowed; use [0, 1)")

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        z_s = student.require("logits", self.name)
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("loss 'ce' needs labels in the batch; for unlabelled data use kd alone")
        if z_s.dim() == 3:  # (B, L, V) -> tokens
            z_s, labels = z_s.reshape(-1, z_s.shape[-1]), labels.reshape(-1)
        valid = labels != -100
        if not bool(valid.any()):
            return z_s.sum() * 0.0  # keeps the graph (and DDP) happy on an all-unlabelled batch
        return F.cross_entropy(
            upcast(z_s), labels, ignore_index=-100, label_smoothing=self.label_smoothing
        )


@register_loss
class HardKDLoss(DistillLoss):
    """Hard-label distillation: cross-entropy with the teacher's arg-max class (DeiT / m2mKD "hard" mode).

    ``L = -mean_b log softmax(z_S)_{argmax z_T}``. Label-free.
    """

    name = "hard_kd"
    zero_at_identity = False
    teacher_needs = ("logits",)
    student_needs = ("logits",)
    formula = "-mean_b log softmax(z_S)[argmax z_T]"
    citation = "Touvron et al., Training data-efficient image transformers (DeiT), ICML 2021"

    def __init__(self) -> None:
        super().__init__()

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        z_s = student.require("logits", self.name)
        z_t = teacher.require("logits", self.name)
        if isinstance(z_t, SparseLogits):
            target = z_t.indices[..., 0].long()  # top-k is sorted, so index 0 is the arg-max
        else:
            target = z_t.argmax(dim=-1)
        mask = _row_mask(z_s, batch, student)
        per_row = F.cross_entropy(upcast(z_s).reshape(-1, z_s.shape[-1]), target.reshape(-1),
                                  reduction="none")
        if mask is None:
            return per_row.mean()
        m = mask.reshape(-1).to(per_row.dtype)
        return (per_row * m).sum() / m.sum().clamp_min(1.0)
