"""Relation distillation: MiniLMv2's multi-head self-attention relations and TRG's token-level relationship
graph. Both compare how tokens relate to each other inside each model, so teacher and student may differ in
width (and, for MiniLMv2, in head count) without a projector on the relations themselves."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.attention import (
    check_layer,
    layer_qkv,
    masked_log_softmax,
    per_example_row_mean,
    relation_log_probs,
    resolve_layer,
    row_kl,
    token_mask,
)
from distill.losses.base import DistillLoss, project, register_loss, reject_context
from distill.outputs import ModelOutputs, upcast

RELATIONS = tuple(a + b for a in "qkv" for b in "qkv")  # qq, qk, ..., vv


def _relation_heads(x: torch.Tensor, heads: int, side: str) -> torch.Tensor:
    """Concatenate the attention heads of x (B, A, L, d) and re-split them into ``heads`` relation heads:
    (B, heads, L, A * d / heads)."""
    b, a, length, d = x.shape
    width = a * d
    if width % heads:
        raise ValueError(
            f"minilm_v2: relation_heads {heads} does not divide the {side}'s query/key/value width {width}; "
            f"choose a common divisor of both models' widths"
        )
    return x.transpose(1, 2).reshape(b, length, heads, width // heads).transpose(1, 2)


@register_loss
class MiniLMv2Loss(DistillLoss):
    """MiniLMv2 multi-head self-attention relation distillation.

    The queries (keys, values) of all attention heads of a layer are concatenated and re-split into
    ``relation_heads`` heads of width ``d_r`` (per model: d_r = width / relation_heads), so the student's head
    count and width may differ from the teacher's. For each relation ``xy`` in ``relations`` (default Q-Q,
    K-K, V-V): ``R_xy = softmax(X Y^T / sqrt(d_r))`` over real keys, and
    ``L_xy = mean_b 1/(A_r |x_b|) sum_r sum_t KL(R^T_{xy,r,t} || R^S_{xy,r,t})``. The loss is
    ``sum_xy L_xy / len(relations)``, returned as parts named by relation (each already divided by the number
    of relations, so the parts add up to the loss).

    Defaults: ``relation_heads: 48`` (the paper's value for base-size teachers, also the bloomberg
    reproduction's; 64 for large teachers); ``teacher_layer: last`` (the paper uses an upper-middle layer for
    large teachers, e.g. 21 of 24: set it by number), ``student_layer: last``. ``relation_heads`` must divide
    both models' query/key/value widths (384 and 768 are both divisible by 48).

    Wang et al., MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing Pretrained
    Transformers, Findings of ACL 2021.

    Recipe::

        losses:
          - {name: minilm_v2, weight: 1.0, relation_heads: 48, relations: [qq, kk, vv]}
    """

    name = "minilm_v2"
    teacher_needs = ("qkv",)
    student_needs = ("qkv",)
    formula = ("1/|rel| sum_xy mean_b 1/(A_r|x|) sum_(r,t) KL(R^T_xy || R^S_xy), "
               "R_xy = softmax(X_r Y_r^T/sqrt(d_r))")
    citation = (
        "Wang et al., MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing Pretrained "
        "Transformers, Findings of ACL 2021"
    )

    def __init__(
        self,
        relation_heads: int = 48,
        relations: tuple[str, ...] | list[str] = ("qq", "kk", "vv"),
        teacher_layer: Any = "last",
        student_layer: Any = "last",
        student_hidden_size: int | None = None,
        teacher_hidden_size: int | None = None,
        student_num_layers: int | None = None,
        teacher_num_layers: int | None = None,
    ):
        super().__init__()
        self.validate_params(relation_heads, relations, teacher_layer, student_layer)
        for side, width in (("student", student_hidden_size), ("teacher", teacher_hidden_size)):
            if width is not None and width % relation_heads:
                raise ValueError(
                    f"relation_heads: {relation_heads} does not divide the {side}'s width {width}; choose a "
                    "common divisor of both models' widths"
                )
        self.relation_heads = int(relation_heads)
        self.relations = tuple(relations)
        self.t_layer = resolve_layer(teacher_layer, teacher_num_layers, "teacher_layer")
        self.s_layer = resolve_layer(student_layer, student_num_layers, "student_layer")

    @staticmethod
    def validate_params(relation_heads: int = 48, relations: Any = ("qq", "kk", "vv"),
                        teacher_layer: Any = "last", student_layer: Any = "last", **context: Any) -> None:
        reject_context(context)
        if isinstance(relation_heads, bool) or not isinstance(relation_heads, int) or relation_heads < 1:
            raise ValueError(f"relation_heads: {relation_heads!r} is not allowed; use a positive integer "
                             "(48 for base-size teachers)")
        if (not isinstance(relations, (list, tuple)) or not relations
                or any(r not in RELATIONS for r in relations) or len(set(relations)) != len(relations)):
            raise ValueError(f"relations: {relations!r} is not allowed; list distinct pairs from "
                             f"{', '.join(RELATIONS)} (the paper uses [qq, kk, vv])")
        check_layer(teacher_layer, "teacher_layer")
        check_layer(student_layer, "student_layer")

    @classmethod
    def build(cls, params: dict[str, Any], ctx) -> MiniLMv2Loss:
        return cls(**params, student_hidden_size=ctx.student_hidden_size,
                   teacher_hidden_size=ctx.teacher_hidden_size,
                   student_num_layers=ctx.student_num_layers, teacher_num_layers=ctx.teacher_num_layers)

    def qkv_layers(self, side: str) -> list[int] | None:
        layer = self.s_layer if side == "student" else self.t_layer
        return None if layer is None else [layer]

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]
                ) -> dict[str, torch.Tensor]:
        s_qkv, _ = layer_qkv(student, self.s_layer, self.name, "student")
        t_qkv, _ = layer_qkv(teacher, self.t_layer, self.name, "teacher")
        if s_qkv[0].shape[0] != t_qkv[0].shape[0] or s_qkv[0].shape[2] != t_qkv[0].shape[2]:
            raise ValueError(
                f"minilm_v2 needs the same batch and sequence shape, got student {tuple(s_qkv[0].shape)} and "
                f"teacher {tuple(t_qkv[0].shape)} (teacher and student must share the tokenizer)"
            )
        real = token_mask(student, batch, s_qkv[0])  # (B, L)
        index = {"q": 0, "k": 1, "v": 2}
        s_rel = [_relation_heads(x, self.relation_heads, "student") for x in s_qkv]  # each (B, A_r, L, d_r)
        t_rel = [_relation_heads(x, self.relation_heads, "teacher") for x in t_qkv]
        parts = {}
        for rel in self.relations:
            i, j = index[rel[0]], index[rel[1]]
            log_p = relation_log_probs(t_rel[i], t_rel[j], real)  # (B, A_r, L, L)
            log_q = relation_log_probs(s_rel[i], s_rel[j], real)
            parts[rel] = per_example_row_mean(row_kl(log_p, log_q, real), real) / len(self.relations)
        return parts


# ---------------------------------------------------------------------------------------------------- trg
def _hidden(out: ModelOutputs, layer: int | None, loss: str, side: str) -> torch.Tensor:
    hs = out.require("hidden_states", loss)
    assert isinstance(hs, tuple)
    index = len(hs) - 1 if layer is None else layer
    if not 0 <= index < len(hs) or hs[index] is None:
        raise ValueError(f"loss {loss!r} reads the {side}'s hidden_states[{index}], which is missing")
    h = upcast(hs[index])
    return h.detach() if side == "teacher" else h


@register_loss
class TRGLoss(DistillLoss):
    """Token-level relationship graph distillation (TRG) with its contextual (inner-instance) loss.

    Tokens are the hidden states of one layer (``teacher_layer`` / ``student_layer``: ``last`` or a
    ``hidden_states`` index). Three terms, returned as parts ``inner``, ``local`` and ``global`` (already
    weighted, so they add up to the loss):

    - ``inner`` (contextual similarity, per example): ``CS = softmax(F F^T / sqrt(D))`` over the example's
      real tokens; ``L_inner = mean_b mean_{real i, j} (CS^S[i, j] - CS^T[i, j])^2``.
    - ``local`` (graph edges): all real tokens of the batch (or ``tokens_per_example`` sampled per example)
      become graph nodes, L2-normalised. Node i's neighbours N(i) are its ``k`` nearest other nodes in the
      *teacher* space; over N(i) both models give the edge distribution
      ``softmax_j(-||f_i - f_j||^2 / (2 sigma))`` and ``L_local = mean_i KL(P^T_i || P^S_i)``.
    - ``global`` (token-level contrast): ``L_global = mean_i -log softmax_j(cos(W s_i, t_j) / tau)[i]``: the
      same node of the teacher is the positive, the other nodes the negatives; ``W`` a learned projector when
      widths differ. ``tau`` falls linearly from ``tau_start`` to ``tau`` over ``anneal_steps`` training calls
      (the paper's "dynamic temperature"; ``tau_start`` empty: constant).

    ``L = inner_weight * L_inner + local_weight * L_local + global_weight * L_global``. The global term is an
    InfoNCE and is not zero when the student equals the teacher.

    **[unverified]** No official TRG code was found (METHODS.md 3.8): the structure follows a third-party
    summary of Zhang, Liu, He, "Knowledge Distillation via Token-level Relationship Graph" (arXiv 2306.12442),
    written for vision tokens. The choices made here are ours: teacher-space neighbours for both graphs (so
    the two edge distributions share a support), L2-normalised nodes, and the defaults ``k: 8``,
    ``sigma: 1.0``, ``tau: 0.1``, weights 1.0, which were not recovered from the paper. Check them against the
    paper before reporting TRG numbers.

    Recipe::

        losses:
          - {name: trg, weight: 1.0, k: 8, sigma: 1.0, tau: 0.1}
    """

    name = "trg"
    teacher_needs = ("hidden_states",)
    student_needs = ("hidden_states",)
    formula = ("a*MSE(softmax(FF^T/sqrt D)) + b*mean_i KL(P^T_i||P^S_i) over teacher kNN edges "
               "+ c*InfoNCE(W s_i, t_i; tau)  [unverified]")
    citation = ("Zhang, Liu, He, Knowledge Distillation via Token-level Relationship Graph, "
                "arXiv:2306.12442 (2023)")

    def __init__(
        self,
        teacher_layer: Any = "last",
        student_layer: Any = "last",
        k: int = 8,
        sigma: float = 1.0,
        tau: float = 0.1,
        tau_start: float | None = None,
        anneal_steps: int = 0,
        tokens_per_example: int = 0,
        inner_weight: float = 1.0,
        local_weight: float = 1.0,
        global_weight: float = 1.0,
        projector: str = "auto",
        student_hidden_size: int | None = None,
        teacher_hidden_size: int | None = None,
        student_num_layers: int | None = None,
        teacher_num_layers: int | None = None,
    ):
        super().__init__()
        self.validate_params(teacher_layer, student_layer, k, sigma, tau, tau_start, anneal_steps,
                             tokens_per_example, inner_weight, local_weight, global_weight, projector)
        self.t_layer = None if teacher_layer == "last" else int(teacher_layer)
        self.s_layer = None if student_layer == "last" else int(student_layer)
        if teacher_layer == "last" and teacher_num_layers is not None:
            self.t_layer = teacher_num_layers
        if student_layer == "last" and student_num_layers is not None:
            self.s_layer = student_num_layers
        for side, layer, depth in (("teacher", self.t_layer, teacher_num_layers),
                                   ("student", self.s_layer, student_num_layers)):
            if layer is not None and depth is not None and layer > depth:
                raise ValueError(f"{side}_layer: {layer} is out of range 0..{depth}")
        self.k, self.sigma, self.tau = int(k), float(sigma), float(tau)
        self.tau_start = None if tau_start is None else float(tau_start)
        self.anneal_steps = int(anneal_steps)
        self.tokens_per_example = int(tokens_per_example)
        self.weights = {"inner": float(inner_weight), "local": float(local_weight),
                        "global": float(global_weight)}
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.projector: nn.Module | None = None
        if self.weights["global"] > 0:
            widths_known = student_hidden_size is not None and teacher_hidden_size is not None
            if projector == "linear" or (projector == "auto" and widths_known
                                         and student_hidden_size != teacher_hidden_size):
                if not widths_known:
                    raise ValueError("a projector needs student_hidden_size and teacher_hidden_size")
                self.projector = nn.Linear(student_hidden_size, teacher_hidden_size)
                # a forced square projector starts as the identity
                if student_hidden_size == teacher_hidden_size:
                    nn.init.eye_(self.projector.weight)
                    nn.init.zeros_(self.projector.bias)

    @staticmethod
    def validate_params(teacher_layer: Any = "last", student_layer: Any = "last", k: int = 8,
                        sigma: float = 1.0, tau: float = 0.1, tau_start: float | None = None,
                        anneal_steps: int = 0,
                        tokens_per_example: int = 0, inner_weight: float = 1.0, local_weight: float = 1.0,
                        global_weight: float = 1.0, projector: str = "auto", **context: Any) -> None:
        reject_context(context)

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        for name, value in (("teacher_layer", teacher_layer), ("student_layer", student_layer)):
            if value != "last" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}: {value!r} is not allowed; use last or a hidden_states index >= 0")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: {k!r} is not allowed; use a positive number of neighbours")
        for name, value in (("sigma", sigma), ("tau", tau)):
            if not number(value) or value <= 0:
                raise ValueError(f"{name}: {value!r} is not allowed; use a number > 0")
        if tau_start is not None and (not number(tau_start) or tau_start <= 0):
            raise ValueError(f"tau_start: {tau_start!r} is not allowed; use a number > 0, or leave it empty")
        for name, value in (("anneal_steps", anneal_steps), ("tokens_per_example", tokens_per_example)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: {value!r} is not allowed; "
                                 "use an integer >= 0 (0: off / all tokens)")
        for name, value in (("inner_weight", inner_weight), ("local_weight", local_weight),
                            ("global_weight", global_weight)):
            if not number(value) or value < 0:
                raise ValueError(f"{name}: {value!r} is not allowed; use a number >= 0")
        if inner_weight + local_weight + global_weight <= 0:
            raise ValueError("inner_weight, local_weight, global_weight: at least one must be > 0")
        if projector not in ("auto", "linear", "none"):
            raise ValueError(f"projector: {projector!r} is not allowed; choose auto, linear or none")

    @classmethod
    def build(cls, params: dict[str, Any], ctx) -> TRGLoss:
        if not ctx.same_tokenizer:
            raise ValueError("loss 'trg' compares tokens one to one, but teacher and student use different "
                             "tokenizers; use the same tokenizer")
        return cls(**params, student_hidden_size=ctx.student_hidden_size,
                   teacher_hidden_size=ctx.teacher_hidden_size,
                   student_num_layers=ctx.student_num_layers, teacher_num_layers=ctx.teacher_num_layers)

    @property
    def zero_at_identity(self) -> bool:  # type: ignore[override]
        return self.weights["global"] == 0  # InfoNCE keeps a positive floor even for identical features

    def teacher_layers(self) -> list[int]:
        return [] if self.t_layer is None else [self.t_layer]

    def current_tau(self) -> float:
        if self.tau_start is None or self.anneal_steps <= 0:
            return self.tau
        done = min(int(self.step), self.anneal_steps) / self.anneal_steps
        return self.tau_start + (self.tau - self.tau_start) * done

    # -- terms ---------------------------------------------------------------------------------------------
    @staticmethod
    def _inner(h_s: torch.Tensor, h_t: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        # (B, 1, L, L) contextual similarity maps over each example's real tokens
        cs_s = masked_log_softmax((h_s @ h_s.transpose(-1, -2) / math.sqrt(h_s.shape[-1]))[:, None],
                                  real).exp()
        cs_t = masked_log_softmax((h_t @ h_t.transpose(-1, -2) / math.sqrt(h_t.shape[-1]))[:, None],
                                  real).exp()
        pair = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, L, L)
        sq = torch.where(pair, (cs_s - cs_t).pow(2), torch.zeros((), device=cs_s.device))
        per_example = sq.sum(dim=(1, 2, 3)) / pair.sum(dim=(1, 2, 3)).clamp_min(1)  # (B,)
        present = real.any(dim=1)
        return per_example.sum() / present.sum().clamp_min(1)

    def _nodes(self, real: torch.Tensor) -> torch.Tensor:
        """Flat indices (into B*L) of the graph's nodes: every real token, or a random sample per example."""
        if self.tokens_per_example <= 0:
            return real.reshape(-1).nonzero().squeeze(1)
        picked = []
        length = real.shape[1]
        for b in range(real.shape[0]):
            positions = real[b].nonzero().squeeze(1)
            if len(positions) > self.tokens_per_example:
                keep = torch.randperm(len(positions))[: self.tokens_per_example].to(positions.device)
                positions = positions[keep].sort().values
            picked.append(positions + b * length)
        return torch.cat(picked)

    def _local(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = s.shape[0]
        k = min(self.k, n - 1)
        if k < 1:
            return s.sum() * 0.0
        d_t = (2.0 - 2.0 * t @ t.T).clamp_min(0.0)  # (N, N) squared distances of unit vectors
        d_s = (2.0 - 2.0 * s @ s.T).clamp_min(0.0)
        away = d_t + torch.diag(torch.full((n,), float("inf"), device=d_t.device))  # no self-edges
        nbr = away.topk(k, dim=1, largest=False).indices  # (N, k) teacher-space neighbours
        log_p = (-d_t.gather(1, nbr) / (2 * self.sigma)).log_softmax(dim=1)
        log_q = (-d_s.gather(1, nbr) / (2 * self.sigma)).log_softmax(dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()

    def _global(self, s_proj: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(t) == 0:
            return s_proj.sum() * 0.0
        logits = s_proj @ t.T / self.current_tau()  # (N, N)
        return F.cross_entropy(logits, torch.arange(len(t), device=t.device))

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]
                ) -> dict[str, torch.Tensor]:
        h_s = _hidden(student, self.s_layer, self.name, "student")  # (B, L, D_S)
        h_t = _hidden(teacher, self.t_layer, self.name, "teacher")  # (B, L, D_T)
        if h_s.shape[:2] != h_t.shape[:2]:
            raise ValueError(f"trg needs the same batch and sequence shape, got student "
                             f"{tuple(h_s.shape[:2])} and teacher {tuple(h_t.shape[:2])} "
                             "(teacher and student must share the tokenizer)")
        real = token_mask(student, batch, h_s)  # (B, L)
        parts: dict[str, torch.Tensor] = {}
        if self.weights["inner"] > 0:
            parts["inner"] = self.weights["inner"] * self._inner(h_s, h_t, real)
        if self.weights["local"] > 0 or self.weights["global"] > 0:
            nodes = self._nodes(real)  # (N,)
            s_nodes = h_s.reshape(-1, h_s.shape[-1]).index_select(0, nodes)  # (N, D_S)
            t_nodes = F.normalize(h_t.reshape(-1, h_t.shape[-1]).index_select(0, nodes), dim=-1)  # (N, D_T)
            if self.weights["local"] > 0:
                parts["local"] = self.weights["local"] * self._local(F.normalize(s_nodes, dim=-1), t_nodes)
            if self.weights["global"] > 0:
                projected = project(self.projector, s_nodes) if self.projector is not None else s_nodes
                if projected.shape[-1] != t_nodes.shape[-1]:
                    raise ValueError(
                        f"trg: widths differ (student {projected.shape[-1]}, teacher {t_nodes.shape[-1]}) "
                        "and no projector was built; set projector: auto or linear"
                    )
                parts["global"] = self.weights["global"] * self._global(F.normalize(projected, dim=-1),
                                                                        t_nodes)
        if self.training and torch.is_grad_enabled():
            self.step += 1
        return parts
