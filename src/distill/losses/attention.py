"""Self-attention distillation from captured query/key/value projections: TinyBERT's attention-map MSE and
MiniLM (v1)'s attention-distribution and value-relation KL.

Both read ``ModelOutputs.qkv`` (see :mod:`distill.capture`): the projections are captured before softmax and
dropout, so the maps are the model's own pre-dropout ones in training mode too (METHODS.md pitfall 12), and
the teacher-output store can keep them per token (attention matrices would cost O(L^2) per example).
The maps are the content part ``Q K^T / sqrt(d)``: models that add a position bias to the scores (MPNet's
relative buckets) are matched on that content part.

Shared conventions (also used by :mod:`distill.losses.relations`): float32 maths; the teacher is detached and
is the target P of every KL; padded keys get zero probability, padded query rows are left out.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from distill.layer_map import check_layer_map_spec, resolve_layer_map
from distill.losses.base import DistillLoss, register_loss, reject_context
from distill.outputs import QKV, ModelOutputs, upcast


# ------------------------------------------------------------------------------------------------ helpers
def token_mask(out: ModelOutputs, batch: dict[str, Any], like: torch.Tensor) -> torch.Tensor:
    """(B, L) bool mask of real tokens for ``like`` shaped (B, ..., L, last): the outputs' own mask, else the
    batch's, else every position."""
    mask = out.attention_mask if out.attention_mask is not None else batch.get("attention_mask")
    if mask is None:
        return torch.ones(like.shape[0], like.shape[-2], dtype=torch.bool, device=like.device)
    return mask.to(like.device) != 0


def layer_qkv(out: ModelOutputs, layer: int | None, loss: str, side: str) -> tuple[QKV, int]:
    """Layer ``layer``'s (q, k, v) as float32 (detached for the teacher), and the layer number used.
    ``None`` means the last layer present."""
    qkv = out.require("qkv", loss)
    assert isinstance(qkv, tuple)
    if layer is None:
        layer = len(qkv)
    if not 1 <= layer <= len(qkv) or qkv[layer - 1] is None:
        have = [i + 1 for i, item in enumerate(qkv) if item is not None]
        raise ValueError(
            f"loss {loss!r} reads the {side}'s qkv of layer {layer}, which was not captured "
            f"(captured: {have})"
        )
    q, k, v = qkv[layer - 1]
    if side == "teacher":
        q, k, v = q.detach(), k.detach(), v.detach()
    return (upcast(q), upcast(k), upcast(v)), layer


def masked_log_softmax(scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """log-softmax over the last axis of ``scores`` (B, A, L, L) with padded keys (``keys`` (B, L) False)
    given zero probability. A row without any real key stays finite (uniform); callers drop such rows."""
    filled = scores.masked_fill(~keys[:, None, None, :], torch.finfo(scores.dtype).min)
    return filled.log_softmax(dim=-1)


def row_kl(log_p: torch.Tensor, log_q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """KL(P_row || Q_row) for every row of (B, A, L, L) log-distributions: (B, A, L). Padded keys add 0."""
    terms = log_p.exp() * (log_p - log_q)
    return torch.where(keys[:, None, None, :], terms, torch.zeros((), device=terms.device)).sum(dim=-1)


def per_example_row_mean(rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """MiniLM's normalisation: for each example ``sum_{a, t real} rows[b, a, t] / (A * |x_b|)``, then the mean
    over the examples that have at least one real token. ``rows`` (B, A, L), ``queries`` (B, L) bool."""
    heads = rows.shape[1]
    q = queries.to(rows.dtype)  # (B, L)
    per_example = torch.where(queries[:, None, :], rows, torch.zeros((), device=rows.device)).sum(dim=(1, 2))
    lengths = q.sum(dim=1)  # (B,)
    present = lengths > 0
    per_example = per_example / (heads * lengths.clamp_min(1.0))
    return per_example.sum() / present.sum().clamp_min(1)


def relation_log_probs(x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``log softmax(x y^T / sqrt(d))`` over real keys: x, y (B, A, L, d) -> (B, A, L, L)."""
    scores = x @ y.transpose(-1, -2) / math.sqrt(x.shape[-1])
    return masked_log_softmax(scores, keys)


def check_layer(value: Any, name: str) -> None:
    if value == "last":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: {value!r} is not allowed; use last or a layer number >= 1")


def resolve_layer(value: Any, num_layers: int | None, name: str) -> int | None:
    """``last`` -> ``num_layers`` (None while the depth is unknown); a number is checked against the depth."""
    if value == "last":
        return num_layers
    if num_layers is not None and value > num_layers:
        raise ValueError(f"{name}: layer {value} is out of range 1..{num_layers}")
    return int(value)


# ------------------------------------------------------------------------------------------ attention_mse
@register_loss
class AttentionMSELoss(DistillLoss):
    """TinyBERT's attention-based distillation: mean squared error between the student's and the teacher's
    self-attention maps of mapped layers.

    For each mapped layer pair ``(s, t)`` (``layer_map``, layers numbered from 1 as in ``hidden_states``):
    ``L_st = 1/(A * sum_b |x_b|^2) * sum_b sum_a sum_{i, j real} (M^S_{s,a}[i, j] - M^T_{t,a}[i, j])^2`` with
    ``M = Q K^T / sqrt(d_k)`` (``on: scores``, the unnormalised maps TinyBERT fits) or
    ``M = softmax(Q K^T / sqrt(d_k))`` over real keys (``on: probs``). Padded queries and keys are left out
    (TinyBERT zeroes the padded scores and averages over every position instead). The total is the mean over
    pairs (TinyBERT sums over layers: multiply the weight by the number of pairs to port its configs).
    Head counts must be equal (``head_mode: match``), or both maps are averaged over heads first
    (``head_mode: mean``) when they differ. Maps are computed from the captured Q/K projections, before
    dropout; head widths ``d_k`` may differ.

    Jiao et al., TinyBERT: Distilling BERT for Natural Language Understanding, Findings of EMNLP 2020.

    Recipe::

        losses:
          - {name: attention_mse, weight: 1.0, layer_map: uniform, on: scores}
    """

    name = "attention_mse"
    teacher_needs = ("qkv",)
    student_needs = ("qkv",)
    formula = (
        "mean_(s,t) mean_(a, real i, j) (M^S_s[a,i,j] - M^T_t[a,i,j])^2, M = QK^T/sqrt(d) or its softmax"
    )
    citation = (
        "Jiao et al., TinyBERT: Distilling BERT for Natural Language Understanding, Findings of EMNLP 2020"
    )

    def __init__(
        self,
        layer_map: Any = "uniform",
        on: str = "scores",
        head_mode: str = "match",
        student_num_layers: int | None = None,
        teacher_num_layers: int | None = None,
    ):
        super().__init__()
        self.validate_params(layer_map, on, head_mode)
        self.layer_map_spec = layer_map
        self.on = on
        self.head_mode = head_mode
        self.pairs: list[tuple[int, int]] = []
        if student_num_layers is not None and teacher_num_layers is not None:
            self.pairs = self._checked(resolve_layer_map(layer_map, student_num_layers, teacher_num_layers))

    @staticmethod
    def validate_params(layer_map: Any = "uniform", on: str = "scores", head_mode: str = "match",
                        **context: Any) -> None:
        reject_context(context)
        check_layer_map_spec(layer_map)
        if on not in ("scores", "probs"):
            raise ValueError(f"on: {on!r} is not allowed; choose scores (TinyBERT) or probs")
        if head_mode not in ("match", "mean"):
            raise ValueError(f"head_mode: {head_mode!r} is not allowed; choose match or mean")

    @classmethod
    def build(cls, params: dict[str, Any], ctx) -> AttentionMSELoss:
        return cls(**params, student_num_layers=ctx.student_num_layers,
                   teacher_num_layers=ctx.teacher_num_layers)

    @staticmethod
    def _checked(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for s, t in pairs:
            if s == 0 or t == 0:
                raise ValueError("layer_map: layer 0 is the embedding output and has no attention; "
                                 "map layers >= 1")
        return pairs

    def qkv_layers(self, side: str) -> list[int] | None:
        if not self.pairs:
            return None
        return sorted({s if side == "student" else t for s, t in self.pairs})

    def _maps(self, q: torch.Tensor, k: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, A, L, L)
        return masked_log_softmax(scores, keys).exp() if self.on == "probs" else scores

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        s_qkv = student.require("qkv", self.name)
        t_qkv = teacher.require("qkv", self.name)
        pairs = self.pairs or self._checked(resolve_layer_map(self.layer_map_spec, len(s_qkv), len(t_qkv)))
        total = None
        for s, t in pairs:
            (q_s, k_s, _), _ = layer_qkv(student, s, self.name, "student")
            (q_t, k_t, _), _ = layer_qkv(teacher, t, self.name, "teacher")
            if q_s.shape[2] != q_t.shape[2] or q_s.shape[0] != q_t.shape[0]:
                raise ValueError(
                    f"attention maps need the same batch and sequence shape, got student {tuple(q_s.shape)} "
                    f"and teacher {tuple(q_t.shape)} (teacher and student must share the tokenizer)"
                )
            real = token_mask(student, batch, q_s)  # (B, L)
            m_s, m_t = self._maps(q_s, k_s, real), self._maps(q_t, k_t, real)  # (B, A, L, L)
            if m_s.shape[1] != m_t.shape[1]:
                if self.head_mode != "mean":
                    raise ValueError(
                        f"attention_mse: the student has {m_s.shape[1]} heads and the teacher "
                        f"{m_t.shape[1]}; set head_mode: mean to compare head-averaged maps, or use minilm_v2"
                    )
                m_s, m_t = m_s.mean(dim=1, keepdim=True), m_t.mean(dim=1, keepdim=True)
            pair = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, L, L)
            sq = torch.where(pair, (m_s - m_t).pow(2), torch.zeros((), device=m_s.device))
            value = sq.sum() / (pair.sum() * m_s.shape[1]).clamp_min(1)
            total = value if total is None else total + value
        assert total is not None
        return total / len(pairs)


# ------------------------------------------------------------------------------------------------- minilm
@register_loss
class MiniLMLoss(DistillLoss):
    """MiniLM (v1) deep self-attention distillation: the student's last layer mimics the teacher's last
    layer's attention distributions and value relations.

    With ``A`` heads (equal in both models; head widths may differ), per head ``a``:
    ``AT_a = softmax(Q_a K_a^T / sqrt(d_k))``, ``VR_a = softmax(V_a V_a^T / sqrt(d_v))`` over real keys, and
    ``L_AT = mean_b 1/(A |x_b|) sum_a sum_t KL(AT^T_{a,t} || AT^S_{a,t})``, ``L_VR`` likewise with VR, where
    ``t`` runs over the real tokens of example b. Returns the parts ``attention`` and ``value`` (their sum is
    the loss; ``value_relation: false`` keeps the attention part only). ``teacher_layer`` / ``student_layer``:
    ``last`` (the paper) or a layer number from 1. Q/K/V come from the projections before dropout.

    Wang et al., MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
    Transformers, NeurIPS 2020.

    Recipe::

        losses:
          - {name: minilm, weight: 1.0, teacher_layer: last, student_layer: last}
    """

    name = "minilm"
    teacher_needs = ("qkv",)
    student_needs = ("qkv",)
    formula = (
        "mean_b 1/(A|x|) sum_(a,t) [KL(AT^T||AT^S) + KL(VR^T||VR^S)], AT=softmax(QK^T/sqrt d), "
        "VR=softmax(VV^T/sqrt d)"
    )
    citation = (
        "Wang et al., MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained "
        "Transformers, NeurIPS 2020"
    )

    def __init__(
        self,
        teacher_layer: Any = "last",
        student_layer: Any = "last",
        value_relation: bool = True,
        student_num_layers: int | None = None,
        teacher_num_layers: int | None = None,
    ):
        super().__init__()
        self.validate_params(teacher_layer, student_layer, value_relation)
        self.t_layer = resolve_layer(teacher_layer, teacher_num_layers, "teacher_layer")
        self.s_layer = resolve_layer(student_layer, student_num_layers, "student_layer")
        self.value_relation = value_relation

    @staticmethod
    def validate_params(teacher_layer: Any = "last", student_layer: Any = "last", value_relation: bool = True,
                        **context: Any) -> None:
        reject_context(context)
        check_layer(teacher_layer, "teacher_layer")
        check_layer(student_layer, "student_layer")
        if not isinstance(value_relation, bool):
            raise ValueError(f"value_relation: {value_relation!r} is not allowed; use true or false")

    @classmethod
    def build(cls, params: dict[str, Any], ctx) -> MiniLMLoss:
        return cls(**params, student_num_layers=ctx.student_num_layers,
                   teacher_num_layers=ctx.teacher_num_layers)

    def qkv_layers(self, side: str) -> list[int] | None:
        layer = self.s_layer if side == "student" else self.t_layer
        return None if layer is None else [layer]

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]
                ) -> dict[str, torch.Tensor]:
        (q_s, k_s, v_s), _ = layer_qkv(student, self.s_layer, self.name, "student")
        (q_t, k_t, v_t), _ = layer_qkv(teacher, self.t_layer, self.name, "teacher")
        if q_s.shape[1] != q_t.shape[1]:
            raise ValueError(
                f"minilm (v1) needs the same number of attention heads, got student {q_s.shape[1]} and "
                f"teacher {q_t.shape[1]}; use minilm_v2, whose relation heads work with any head counts"
            )
        if q_s.shape[0] != q_t.shape[0] or q_s.shape[2] != q_t.shape[2]:
            raise ValueError(
                f"minilm needs the same batch and sequence shape, got student {tuple(q_s.shape)} and teacher "
                f"{tuple(q_t.shape)} (teacher and student must share the tokenizer)"
            )
        real = token_mask(student, batch, q_s)
        parts = {"attention": self._kl(q_t, k_t, q_s, k_s, real)}
        if self.value_relation:
            parts["value"] = self._kl(v_t, v_t, v_s, v_s, real)
        return parts

    @staticmethod
    def _kl(xt: torch.Tensor, yt: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, real: torch.Tensor
            ) -> torch.Tensor:
        log_p = relation_log_probs(xt, yt, real)  # teacher (B, A, L, L)
        log_q = relation_log_probs(xs, ys, real)
        return per_example_row_mean(row_kl(log_p, log_q, real), real)
