"""Losses over pooled embedding vectors (``ModelOutputs.embeddings``, (B, D)): regression, affinity, contrast.

All four read one vector per example, so they work whether the teacher ran online or its embeddings came from
the store, and whatever the two tokenizers are. The widths come from :class:`LossContext`
(``student_hidden_size`` / ``teacher_hidden_size`` are the embedding dimensions). Everything is computed in
float32 on a detached teacher; norms are clamped, so an all-zero vector gives a finite loss and gradient.

The in-batch losses (``affinity``, ``contrastive``, ``crd``) see only the local batch: under DDP each rank
compares its own rows (nothing is gathered across ranks), so the effective number of negatives is the
per-device batch size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.base import DistillLoss, LossContext, project, register_loss, reject_context
from distill.outputs import ModelOutputs, upcast

NORM_EPS = 1e-6
"""Smallest norm a vector is divided by. Real embeddings are far longer; this only keeps a zero vector (and
its gradient) finite: it maps to the zero vector, whose cosine with anything is 0."""

PROJECTORS = ("auto", "linear", "none", "pca")


# ----------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------


def _check_positive_number(name: str, value: Any, hint: str) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: {value!r} is not allowed; use a number > 0 ({hint})")


def _check_int(name: str, value: Any, low: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: {value!r} is not allowed; use a whole number >= {low} ({hint})")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        choices = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise ValueError(f"{name}: {value!r} is not allowed; choose {choices}")


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length; (B, D) -> (B, D). A zero row stays zero (norm clamped at NORM_EPS)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def _embeddings(student: ModelOutputs, teacher: ModelOutputs, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two (B, D) embedding matrices in float32, the teacher's detached."""
    e_s = student.require("embeddings", loss)
    e_t = teacher.require("embeddings", loss)
    assert isinstance(e_s, torch.Tensor) and isinstance(e_t, torch.Tensor)
    if e_s.dim() != 2 or e_t.dim() != 2:
        raise ValueError(
            f"loss {loss!r} needs embeddings of shape (B, D); got student {tuple(e_s.shape)} and teacher "
            f"{tuple(e_t.shape)} (pool token states into one vector per example first)"
        )
    if e_s.shape[0] != e_t.shape[0]:
        raise ValueError(
            f"loss {loss!r}: student and teacher embeddings have {e_s.shape[0]} and {e_t.shape[0]} rows; "
            "they must describe the same examples"
        )
    return upcast(e_s), upcast(e_t.detach())


def _build_projector(projector: str, student_dim: int | None, teacher_dim: int | None) -> nn.Linear | None:
    """``auto``: a learned ``Linear(student_dim, teacher_dim)`` only when the widths differ; ``linear``:
    always (a square one starts as the identity map); ``none``: never."""
    need = projector == "linear" or (
        projector == "auto"
        and student_dim is not None
        and teacher_dim is not None
        and student_dim != teacher_dim
    )
    if not need:
        return None
    if student_dim is None or teacher_dim is None:
        raise ValueError(
            "a projector needs student_hidden_size and teacher_hidden_size (the embedding widths)"
        )
    proj = nn.Linear(student_dim, teacher_dim)
    if student_dim == teacher_dim:
        nn.init.eye_(proj.weight)
        nn.init.zeros_(proj.bias)
    return proj


def _project(proj: nn.Module | None, e_s: torch.Tensor, e_t: torch.Tensor, loss: str) -> torch.Tensor:
    if proj is not None:
        e_s = project(proj, e_s)  # (B, D_s) -> (B, D_t)
    if e_s.shape[-1] != e_t.shape[-1]:
        raise ValueError(
            f"loss {loss!r}: embedding widths differ (student {e_s.shape[-1]}, teacher {e_t.shape[-1]}) "
            "and no projector was built; set projector: auto or linear (the widths come from the models)"
        )
    return e_s


def _in_batch_ce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row i against column i; (B, N >= B) -> scalar. Row i's positive is column i."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets)


# ----------------------------------------------------------------------------------------------------------
# embedding: regress the teacher vector
# ----------------------------------------------------------------------------------------------------------


@register_loss
class EmbeddingLoss(DistillLoss):
    """Pull the student's embedding onto the teacher's, row by row.

    ``mse``: ``L = mean_{b,d} (W e_S[b] - e_T[b])_d^2`` (exactly ``torch.nn.functional.mse_loss``, the
    sentence-transformers ``MSELoss`` of Reimers & Gurevych 2020 used for multilingual and model2vec-style
    distillation); ``cosine``: ``L = mean_b (1 - cos(W e_S[b], e_T[b]))``. ``W`` is a learned linear projector
    ``D_S -> D_T`` built when the widths differ (``projector: auto``), always (``linear``; a square one starts
    as the identity) or never (``none``). ``projector: pca`` instead reduces the *teacher* to the student's
    width: ``e_T -> e_T V_k^T`` with ``V_k`` the top ``D_S`` right singular vectors of the (uncentred) teacher
    embeddings of the training text, the rank-``D_S`` subspace that best keeps their inner products. The
    basis is fitted once from the teacher-output store (:meth:`fit_teacher`), so nothing is learned or dropped
    at export: the student's own vectors are trained to be the teacher's in that basis.

    Recipe::

        losses:
          - {name: embedding, weight: 1.0, loss: mse}
    """

    name = "embedding"
    teacher_needs = ("embeddings",)
    student_needs = ("embeddings",)
    formula = (
        "mse: mean_{b,d} (W e_S - e_T)^2; cosine: mean_b 1 - cos(W e_S, e_T); W learned when widths differ"
    )
    citation = (
        "Reimers & Gurevych, Making Monolingual Sentence Embeddings Multilingual using Knowledge "
        "Distillation, EMNLP 2020; Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015 "
        "(the learned projector)"
    )

    def __init__(
        self,
        loss: str = "mse",
        projector: str = "auto",
        student_hidden_size: int | None = None,
        teacher_hidden_size: int | None = None,
    ):
        super().__init__()
        self.validate_params(loss, projector)
        self.loss = loss
        self.pca = projector == "pca"
        self.projector = (None if self.pca
                          else _build_projector(projector, student_hidden_size, teacher_hidden_size))
        if self.pca:
            if student_hidden_size is None or teacher_hidden_size is None:
                raise ValueError("projector: pca needs student_hidden_size and teacher_hidden_size")
            if student_hidden_size > teacher_hidden_size:
                raise ValueError(f"projector: pca reduces the teacher, but the student is wider "
                                 f"({student_hidden_size} > {teacher_hidden_size}); use projector: auto")
            # (D_S, D_T) basis; a buffer, so checkpoints keep it and a resumed run uses the same one
            self.register_buffer("teacher_basis", torch.zeros(student_hidden_size, teacher_hidden_size))
            self.register_buffer("basis_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def needs_teacher_fit(self) -> bool:
        return self.pca

    @torch.no_grad()
    def fit_teacher(self, teacher_embeddings: torch.Tensor) -> torch.Tensor:
        """Fit the ``projector: pca`` basis on (N, D_T) teacher embeddings; returns it, (D_S, D_T)."""
        x = teacher_embeddings.double()
        _, _, vh = torch.linalg.svd(x, full_matrices=False)  # rows: right singular vectors, largest first
        basis = vh[: self.teacher_basis.shape[0]]
        # fix each axis' sign (largest component positive) so the basis does not depend on the LAPACK build
        signs = torch.sign(basis.gather(1, basis.abs().argmax(dim=1, keepdim=True)))
        self.teacher_basis.copy_((basis * signs).float())
        self.basis_fitted.fill_(True)
        return self.teacher_basis

    @staticmethod
    def validate_params(loss: str = "mse", projector: str = "auto", **context: Any) -> None:
        reject_context(context)
        _check_choice("loss", loss, ("mse", "cosine"))
        _check_choice("projector", projector, PROJECTORS)

    @classmethod
    def build(cls, params: dict[str, Any], ctx: LossContext) -> EmbeddingLoss:
        return cls(**params, student_hidden_size=ctx.student_hidden_size,
                   teacher_hidden_size=ctx.teacher_hidden_size)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        e_s, e_t = _embeddings(student, teacher, self.name)  # (B, D_s), (B, D_t)
        if self.pca:
            if not bool(self.basis_fitted):
                raise ValueError("loss 'embedding' with projector: pca has no basis yet; it is fitted from "
                                 "the teacher-output store (keep store.enabled: true) or by calling "
                                 "fit_teacher()")
            e_t = e_t @ self.teacher_basis.T  # (B, D_t) -> (B, D_s)
        e_s = _project(self.projector, e_s, e_t, self.name)  # (B, D_t)
        if self.loss == "mse":
            return F.mse_loss(e_s, e_t)
        return (1.0 - (_unit(e_s) * _unit(e_t)).sum(dim=-1)).mean()


# ----------------------------------------------------------------------------------------------------------
# affinity: match the in-batch similarity distributions (TinyCLIP)
# ----------------------------------------------------------------------------------------------------------


@register_loss
class AffinityLoss(DistillLoss):
    """Affinity mimicking: the student's in-batch similarity distributions should match the teacher's.

    With unit rows ``u = e / ||e||``, ``A_S = u_S u_S^T / tau`` and ``A_T = u_T u_T^T / tau`` (B x B, so no
    projector is needed whatever the widths), each row becomes a distribution over the batch (without the row
    itself unless ``include_self``) and ``L = (1/B) sum_i KL(softmax(A_T[i]) || softmax(A_S[i]))`` (teacher
    as target). TinyCLIP (Wu et al., ICCV 2023, METHODS.md 3.5) applies this across image and text towers
    with a soft cross-entropy; here both sides are one embedding space, and we use KL, which differs from
    soft CE by the teacher entropy (a constant: same gradient), so the loss is 0 when the student equals the
    teacher.

    ``include_self: false`` (default) drops the diagonal before the softmax: a unit vector's similarity with
    itself is always ``1 / tau``, the largest entry, identical for both models, so it carries no information
    and would soak up most of each row's mass. A batch of one row (or two, without the diagonal) leaves
    nothing to compare and gives 0. ``temperature`` (default 0.05, the student temperature of COMODO's
    similarity-distribution loss, METHODS.md 3.17; TinyCLIP fixes the teacher's scale at 50, i.e. 0.02) is
    shared by both sides. Invariant to the scale of the embeddings.

    Recipe::

        losses:
          - {name: affinity, weight: 1.0, temperature: 0.05, include_self: false}
    """

    name = "affinity"
    teacher_needs = ("embeddings",)
    student_needs = ("embeddings",)
    formula = (
        "mean_i KL(softmax(u_T[i] u_T^T / tau) || softmax(u_S[i] u_S^T / tau)), u = e/||e||, "
        "diagonal optional"
    )
    citation = (
        "Wu et al., TinyCLIP: CLIP Distillation via Affinity Mimicking and Weight Inheritance, ICCV 2023"
    )

    def __init__(self, temperature: float = 0.05, include_self: bool = False):
        super().__init__()
        self.validate_params(temperature, include_self)
        self.temperature = float(temperature)
        self.include_self = include_self

    @staticmethod
    def validate_params(temperature: float = 0.05, include_self: bool = False, **context: Any) -> None:
        reject_context(context)
        _check_positive_number("temperature", temperature, "0.02-0.1 is usual for unit vectors")
        if not isinstance(include_self, bool):
            raise TypeError(f"include_self: {include_self!r} is not allowed; use true or false")

    def _affinity(self, e: torch.Tensor) -> torch.Tensor:
        u = _unit(e)  # (B, D)
        a = u @ u.T / self.temperature  # (B, B)
        if self.include_self:
            return a
        b = a.shape[0]
        off_diagonal = ~torch.eye(b, dtype=torch.bool, device=a.device)
        return a[off_diagonal].view(b, b - 1)  # (B, B - 1): row i without column i

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        e_s, e_t = _embeddings(student, teacher, self.name)
        a_s, a_t = self._affinity(e_s), self._affinity(e_t)  # (B, N), N = B or B - 1
        if a_s.shape[-1] == 0:  # one row without its diagonal: nothing to compare
            return e_s.sum() * 0.0  # keeps the graph (DDP needs every step to backward)
        log_q = F.log_softmax(a_s, dim=-1)
        log_p = F.log_softmax(a_t, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


# ----------------------------------------------------------------------------------------------------------
# contrastive: in-batch InfoNCE against the teacher
# ----------------------------------------------------------------------------------------------------------


@register_loss
class ContrastiveLoss(DistillLoss):
    """In-batch InfoNCE: each student row must pick its own teacher row out of the batch's teacher rows.

    ``logits = u(W e_S) u(e_T)^T / tau`` (B x B, ``u`` = unit rows), ``L = CE(logits, targets = arange(B))``:
    teacher row i is the positive for student row i, the other teacher rows are the negatives. ``W`` is the
    projector of the ``embedding`` loss (learned when the widths differ).

    Not zero when the student equals the teacher: the positive gets ``1 / tau`` but the negatives still hold
    some mass (the floor is ``log(1 + sum_j exp((cos_ij - 1) / tau))``, which goes to 0 only as ``tau -> 0``
    or as the teacher rows become orthogonal), so ``zero_at_identity`` is False. It is a cross-entropy, hence
    never negative; a batch of one row gives 0. Default ``temperature`` 0.05 = the scale 20 of
    sentence-transformers' ``MultipleNegativesRankingLoss``.

    Recipe::

        losses:
          - {name: embedding, weight: 1.0, loss: mse}
          - {name: contrastive, weight: 0.1, temperature: 0.05}
    """

    name = "contrastive"
    teacher_needs = ("embeddings",)
    student_needs = ("embeddings",)
    zero_at_identity = False
    formula = "CE(u(W e_S) u(e_T)^T / tau, arange(B)), u = e/||e||; teacher row i positive for student row i"
    citation = (
        "van den Oord et al., Representation Learning with Contrastive Predictive Coding (InfoNCE), "
        "arXiv:1807.03748 (2018); Tian et al., Contrastive Representation Distillation, ICLR 2020"
    )

    def __init__(
        self,
        temperature: float = 0.05,
        projector: str = "auto",
        student_hidden_size: int | None = None,
        teacher_hidden_size: int | None = None,
    ):
        super().__init__()
        self.validate_params(temperature, projector)
        self.temperature = float(temperature)
        self.projector = _build_projector(projector, student_hidden_size, teacher_hidden_size)

    @staticmethod
    def validate_params(temperature: float = 0.05, projector: str = "auto", **context: Any) -> None:
        reject_context(context)
        _check_positive_number("temperature", temperature, "0.02-0.1 is usual for unit vectors")
        _check_choice("projector", projector, PROJECTORS)

    @classmethod
    def build(cls, params: dict[str, Any], ctx: LossContext) -> ContrastiveLoss:
        return cls(**params, student_hidden_size=ctx.student_hidden_size,
                   teacher_hidden_size=ctx.teacher_hidden_size)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        e_s, e_t = _embeddings(student, teacher, self.name)
        e_s = _project(self.projector, e_s, e_t, self.name)  # (B, D_t)
        logits = _unit(e_s) @ _unit(e_t).T / self.temperature  # (B, B)
        return _in_batch_ce(logits)


# ----------------------------------------------------------------------------------------------------------
# crd: contrastive representation distillation with a queue of teacher keys
# ----------------------------------------------------------------------------------------------------------


@register_loss
class CRDLoss(DistillLoss):
    """Contrastive representation distillation (CRD) with a MoCo-style FIFO queue of teacher keys.

    Two learned heads map both sides to a shared ``dim`` and unit length: ``s = u(H_S e_S)``,
    ``k = u(H_T e_T)``. With ``Q`` the queue of the last ``queue_size`` teacher keys,
    ``logits = s [k; Q]^T / tau`` (B x (B + |Q|)) and ``L = CE(logits, arange(B))``: teacher row i is the
    positive of student row i; the other teacher rows of the batch and every queued key are negatives.

    Simplified from Tian et al. (ICLR 2020): CRD draws ``nce_k`` = 16384 negatives from a memory bank indexed
    by dataset position and scores them with NCE; here the negatives are the most recent teacher keys (MoCo,
    He et al. CVPR 2020) and the score is a softmax (InfoNCE), so no example ids are needed. Defaults follow
    CRD: ``dim`` 128 (``feat_dim``), ``temperature`` 0.07 (``nce_t``). ``queue_size`` defaults to 4096,
    smaller than CRD's 16384 so the queue stays below the size of small distillation sets: a queued key of
    the *same* example from an earlier epoch would be a false negative. ``queue_size: 0`` uses in-batch
    negatives only.

    The queue is a buffer (saved with the loss state, never trained): keys are computed without gradient,
    enqueued after the loss is computed (a batch is never its own negative), and only in training mode
    (``loss.train()``; ``eval()`` leaves it untouched). Queued keys are stale: they came from earlier teacher
    heads, as in MoCo. Under DDP every rank keeps its own queue of its own keys (no all-gather), so each rank
    sees ``queue_size`` negatives, not ``world_size * queue_size``, and the ranks' queues differ.
    Not zero when the student equals the teacher (``zero_at_identity`` False); never negative (a CE).

    Recipe::

        losses:
          - {name: crd, weight: 0.8, dim: 128, temperature: 0.07, queue_size: 4096}
          - {name: kd, weight: 1.0}
    """

    name = "crd"
    teacher_needs = ("embeddings",)
    student_needs = ("embeddings",)
    zero_at_identity = False
    formula = (
        "CE(u(H_S e_S) [u(H_T e_T); queue]^T / tau, arange(B)); queue = FIFO of past u(H_T e_T), no grad"
    )
    citation = (
        "Tian, Krishnan, Isola. Contrastive Representation Distillation, ICLR 2020; queue: He et al., "
        "Momentum Contrast for Unsupervised Visual Representation Learning (MoCo), CVPR 2020"
    )

    queue: torch.Tensor
    queue_ptr: torch.Tensor
    queue_len: torch.Tensor

    def __init__(
        self,
        dim: int = 128,
        temperature: float = 0.07,
        queue_size: int = 4096,
        student_hidden_size: int | None = None,
        teacher_hidden_size: int | None = None,
    ):
        super().__init__()
        self.validate_params(dim, temperature, queue_size)
        if student_hidden_size is None or teacher_hidden_size is None:
            raise ValueError(
                "loss 'crd' needs student_hidden_size and teacher_hidden_size (the embedding widths)"
            )
        self.dim = dim
        self.temperature = float(temperature)
        self.queue_size = queue_size
        self.student_head = nn.Linear(student_hidden_size, dim)
        self.teacher_head = nn.Linear(teacher_hidden_size, dim)
        self.register_buffer("queue", torch.zeros(queue_size, dim))  # (K, dim) unit teacher keys
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next slot to overwrite
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))  # filled slots (<= K)

    @staticmethod
    def validate_params(
        dim: int = 128, temperature: float = 0.07, queue_size: int = 4096, **context: Any
    ) -> None:
        reject_context(context)
        _check_int("dim", dim, 1, "128 in CRD")
        _check_positive_number("temperature", temperature, "0.07 in CRD")
        _check_int("queue_size", queue_size, 0, "0 = in-batch negatives only; keep it below the dataset size")

    @classmethod
    def build(cls, params: dict[str, Any], ctx: LossContext) -> CRDLoss:
        return cls(**params, student_hidden_size=ctx.student_hidden_size,
                   teacher_hidden_size=ctx.teacher_hidden_size)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        e_s, e_t = _embeddings(student, teacher, self.name)
        s = _unit(project(self.student_head, e_s))  # (B, dim)
        k = _unit(project(self.teacher_head, e_t))  # (B, dim); trains the head, e_t itself is detached
        logits = s @ k.T / self.temperature  # (B, B)
        if self.queue_size:
            # a copy: backward needs the keys this step saw, and _enqueue overwrites the buffer in place
            # (B, K); the buffer has no gradient
            queued = s @ self.queue.clone().T.to(s.dtype) / self.temperature
            empty = torch.arange(self.queue_size, device=queued.device) >= self.queue_len
            logits = torch.cat([logits, queued.masked_fill(empty, float("-inf"))], dim=1)  # (B, B + K)
        loss = _in_batch_ce(logits)
        if self.training and self.queue_size:
            self._enqueue(k.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = keys[-self.queue_size:].to(self.queue.dtype)  # (n, dim), n <= K: the newest rows win
        n = keys.shape[0]
        slots = (self.queue_ptr + torch.arange(n, device=keys.device)) % self.queue_size
        self.queue[slots] = keys
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)
        self.queue_len.copy_((self.queue_len + n).clamp(max=self.queue_size))


# ----------------------------------------------------------------------------------------------------------
# similarity_matrix / similarity_ranking: keep the teacher's similarity structure (Jasper / Stella)
# ----------------------------------------------------------------------------------------------------------


def _cosines(e: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) cosine similarities between the rows."""
    u = _unit(e)
    return u @ u.T


def _check_dims(dims: Any) -> None:
    if dims is None:
        return
    if (not isinstance(dims, (list, tuple)) or not dims
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)):
        raise ValueError(f"dims: {dims!r} is not allowed; use a list of whole numbers >= 1 (the student's "
                         "leading dimensions, e.g. [64, 128, 384]) or leave it out for the full width")


@register_loss
class SimilarityMatrixLoss(DistillLoss):
    """The student's in-batch cosine-similarity matrix should equal the teacher's.

    ``L = mean_{i != j} (cos_S(i, j) - cos_T(i, j))^2`` over the batch's pairs (the diagonal is 1 for both
    and left out). It compares B x B matrices, so the two widths may differ and no projector is needed; it
    is invariant to each model's scale. With ``dims`` (Matryoshka), the student's similarities are taken on
    each listed number of its leading dimensions and the errors averaged, so truncated student vectors keep
    the teacher's structure too. Jasper & Stella's similarity term (there ``MSE`` over the full matrix, with
    weight 200 beside a cosine term); a batch of one row has no pair and gives 0.

    Recipe::

        losses:
          - {name: embedding, weight: 1.0, loss: cosine}
          - {name: similarity_matrix, weight: 1.0}
    """

    name = "similarity_matrix"
    teacher_needs = ("embeddings",)
    student_needs = ("embeddings",)
    formula = "mean_{i != j} (cos_S(i,j) - cos_T(i,j))^2 over in-batch pairs; averaged over dims (Matryoshka)"
    citation = ("Zhang et al., Jasper and Stella: distillation of SOTA embedding models, arXiv 2412.19048; "
                "Kusupati et al., Matryoshka Representation Learning, NeurIPS 2022 (dims)")

    def __init__(self, dims: list[int] | None = None):
        super().__init__()
        self.validate_params(dims)
        self.dims = list(dims) if dims else None
        # truncated student vectors do not have the full vectors' cosines: with dims, a student equal to
        # the teacher is not at 0
        self.zero_at_identity = self.dims is None

    @staticmethod
    def validate_params(dims: list[int] | None = None, **context: Any) -> None:
        reject_context(context)
        _check_dims(dims)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        e_s, e_t = _embeddings(student, teacher, self.name)
        b = e_s.shape[0]
        if b < 2:
            return e_s.sum() * 0.0  # no pair to compare; keeps the graph (DDP needs every step to backward)
        off = ~torch.eye(b, dtype=torch.bool, device=e_s.device)
        c_t = _cosines(e_t)[off]
        widths = self.dims or [e_s.shape[-1]]
        if max(widths) > e_s.shape[-1]:
            raise ValueError(f"loss 'similarity_matrix': dims {widths} go past the student's width "
                             f"{e_s.shape[-1]}; use dims <= {e_s.shape[-1]}")
        return torch.stack([((_cosines(e_s[:, :d])[off] - c_t) ** 2).mean() for d in widths]).mean()


@register_loss
class SimilarityRankingLoss(DistillLoss):
    """For every anchor, the student should order the other rows by similarity as the teacher does.

    For anchor i and two other rows j != k, with ``d_T = cos_T(i, j) - cos_T(i, k)`` and ``d_S`` likewise:
    ``L = mean over the triples with |d_T| >= margin of relu(margin - sign(d_T) d_S)``: where the teacher
    finds j closer to i than k by at least the margin, the student must too, by the margin. The per-anchor
    form of Jasper & Stella's triplet term (theirs compares every pair of in-batch pairs, B^4 terms; this is
    B^3). Triples the teacher ranks within the margin are ties and are skipped, so the loss is 0 when the
    student reproduces the teacher's similarities (Jasper's version keeps them and has a floor there).
    ``margin`` 0.015 as in Jasper. Fewer than three rows, or no triple outside the margin, give 0.

    Recipe::

        losses:
          - {name: similarity_ranking, weight: 0.1, margin: 0.015}
    """

    name = "similarity_ranking"
    teacher_needs = ("embeddings",)
    student_needs = ("embeddings",)
    formula = ("mean_{i; j != k != i, |d_T| >= m} relu(m - sign(d_T) d_S), d = cos(i,j) - cos(i,k); "
               "teacher ties within m skipped")
    citation = "Zhang et al., Jasper and Stella: distillation of SOTA embedding models, arXiv 2412.19048"

    def __init__(self, margin: float = 0.015):
        super().__init__()
        self.validate_params(margin)
        self.margin = float(margin)

    @staticmethod
    def validate_params(margin: float = 0.015, **context: Any) -> None:
        reject_context(context)
        _check_positive_number("margin", margin, "0.015 in Jasper; cosine gaps are in [-2, 2]")

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        e_s, e_t = _embeddings(student, teacher, self.name)
        b = e_s.shape[0]
        if b < 3:
            return e_s.sum() * 0.0
        c_s, c_t = _cosines(e_s), _cosines(e_t)
        d_s = c_s.unsqueeze(2) - c_s.unsqueeze(1)  # (B, B, B): [i, j, k] = cos(i, j) - cos(i, k)
        d_t = c_t.unsqueeze(2) - c_t.unsqueeze(1)
        eye = torch.eye(b, dtype=torch.bool, device=e_s.device)
        valid = ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))  # i, j, k all different
        valid = valid & (d_t.abs() >= self.margin)
        if not bool(valid.any()):
            return e_s.sum() * 0.0
        hinge = torch.relu(self.margin - torch.sign(d_t) * d_s)
        return hinge[valid].mean()


# ----------------------------------------------------------------------------------------------------------
# neighbourhood: the student's similarity distribution over a bank of teacher vectors (CompRess / SEED)
# ----------------------------------------------------------------------------------------------------------

BANKS = ("store", "batch")


@register_loss
class NeighbourhoodLoss(DistillLoss):
    """Each student vector should find the same neighbours among the teacher's vectors as the teacher's own.

    For row ``i`` with teacher vector ``t_i``, student vector ``s_i`` (through ``W`` when the widths differ)
    and a bank of teacher vectors ``b_1..b_N``: ``p_ij = softmax_j(cos(t_i, b_j) / tau_T)``,
    ``q_ij = softmax_j(cos(W s_i, b_j) / tau)`` and ``L = mean_i KL(p_i || q_i)``; the row's own entry in
    the bank is left out of both. With ``bank: store`` the bank is the teacher's vectors of the whole
    distillation text, read once from the teacher-output store (:meth:`fit_teacher`; ``bank_size`` > 0 keeps a
    seeded random subset of that many rows): every step compares each student vector with thousands of
    teacher vectors, not with the batch's 31 others, so the loss shapes the student's *near* neighbours,
    which the in-batch losses rarely see together and which recall@k scores. With ``bank: batch`` the bank is
    the batch's own teacher vectors (no store needed; a batch of one row has no neighbour and gives 0).
    The loss is zero when the student's vectors are the teacher's. A low temperature (0.05) puts the weight
    on the closest few bank vectors. The single-bank form of CompRess (Abbasi Koohpayegani et al. 2020,
    memory bank of teacher anchors, KL between the two similarity distributions) and SEED (Fang et al. 2021).

    Recipe::

        losses:
          - {name: embedding, weight: 1.0, loss: cosine}
          - {name: neighbourhood, weight: 1.0, temperature: 0.05}
    """

    name = "neighbourhood"
    teacher_needs = ("embeddings",)
    student_needs = ("embeddings",)
    formula = ("mean_i KL(softmax_j cos(t_i, b_j)/tau_T || softmax_j cos(W s_i, b_j)/tau), b: bank of "
               "teacher vectors (the store's, or the batch's), own row left out")
    citation = ("Abbasi Koohpayegani et al., CompRess: Self-Supervised Learning by Compressing "
                "Representations, NeurIPS 2020; Fang et al., SEED: Self-supervised Distillation for Visual "
                "Representation, ICLR 2021")

    def __init__(self, temperature: float = 0.05, teacher_temperature: float | None = None,
                 bank: str = "store", bank_size: int = 0, projector: str = "auto",
                 student_hidden_size: int | None = None, teacher_hidden_size: int | None = None):
        super().__init__()
        self.validate_params(temperature, teacher_temperature, bank, bank_size, projector)
        self.temperature = float(temperature)
        self.teacher_temperature = float(teacher_temperature if teacher_temperature is not None
                                         else temperature)
        self.bank_source = bank
        self.bank_size = int(bank_size)
        self.projector = _build_projector(projector, student_hidden_size, teacher_hidden_size)
        # not persistent: a checkpoint stays small, and a resumed run refits the same bank from the store
        self.register_buffer("bank", torch.zeros(0), persistent=False)  # (N, D_T) unit teacher vectors
        self.register_buffer("bank_column", torch.zeros(0, dtype=torch.long), persistent=False)  # row -> col

    @property
    def needs_teacher_fit(self) -> bool:
        return self.bank_source == "store"

    @torch.no_grad()
    def fit_teacher(self, teacher_embeddings: torch.Tensor) -> None:
        """Take the bank from the (N, D_T) teacher vectors of the distillation text (row n = store row n)."""
        n = teacher_embeddings.shape[0]
        rows = torch.arange(n)
        if 0 < self.bank_size < n:  # a fixed subset: the same bank for every run of the recipe
            order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
            rows = order[: self.bank_size].sort().values
        x = teacher_embeddings[rows]
        self.bank = _unit(x if x.dtype == torch.float64 else x.float()).to(self.bank.device)
        column = torch.full((n,), -1, dtype=torch.long)
        column[rows] = torch.arange(len(rows))
        self.bank_column = column.to(self.bank.device)

    @staticmethod
    def validate_params(temperature: float = 0.05, teacher_temperature: float | None = None,
                        bank: str = "store", bank_size: int = 0, projector: str = "auto",
                        **context: Any) -> None:
        reject_context(context)
        _check_positive_number("temperature", temperature, "0.05 puts the weight on the closest neighbours")
        if teacher_temperature is not None:
            _check_positive_number("teacher_temperature", teacher_temperature,
                                   "leave it out to use temperature for both")
        _check_choice("bank", bank, BANKS)
        _check_int("bank_size", bank_size, 0, "0 keeps every stored row; e.g. 65536 caps the bank")
        _check_choice("projector", projector, ("auto", "linear", "none"))

    @classmethod
    def build(cls, params: dict[str, Any], ctx: LossContext) -> NeighbourhoodLoss:
        return cls(**params, student_hidden_size=ctx.student_hidden_size,
                   teacher_hidden_size=ctx.teacher_hidden_size)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        e_s, e_t = _embeddings(student, teacher, self.name)
        e_s = _project(self.projector, e_s, e_t, self.name)
        dtype = torch.promote_types(e_s.dtype, e_t.dtype)
        e_s, e_t = e_s.to(dtype), e_t.to(dtype)
        b = e_s.shape[0]
        own = None
        if self.bank_source == "batch":
            bank = _unit(e_t)
            own = torch.eye(b, dtype=torch.bool, device=e_s.device)
            if b < 2:
                return e_s.sum() * 0.0  # no neighbour to compare; keeps the graph (DDP)
        else:
            if self.bank.numel() == 0:
                raise ValueError("loss 'neighbourhood' with bank: store has no bank yet; it is read from the "
                                 "teacher-output store (keep store.enabled: true), or by calling "
                                 "fit_teacher(), or use bank: batch")
            bank = self.bank.to(dtype=dtype)
            index = batch.get("example_index") if isinstance(batch, dict) else None
            if index is not None:  # leave each row's own stored vector out (its cosine with t_i is 1)
                col = self.bank_column[index.to(self.bank_column.device).long()].to(e_s.device)
                own = torch.zeros(b, bank.shape[0], dtype=torch.bool, device=e_s.device)
                hit = col >= 0
                own[hit.nonzero().squeeze(1), col[hit]] = True
        logits_t = _unit(e_t) @ bank.T / self.teacher_temperature  # (B, N)
        logits_s = _unit(e_s) @ bank.T / self.temperature
        if own is not None:  # a very low logit, not -inf: exp() is exactly 0 and 0 * (a - b) stays finite
            low = torch.finfo(logits_s.dtype).min / 4
            logits_t = logits_t.masked_fill(own, low)
            logits_s = logits_s.masked_fill(own, low)
        log_p = F.log_softmax(logits_t, dim=-1)
        log_q = F.log_softmax(logits_s, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
