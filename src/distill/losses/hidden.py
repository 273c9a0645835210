"""Hidden-state matching with a learned projector when the widths differ (FitNets / TinyBERT / PKD)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.layer_map import check_layer_map_spec, resolve_layer_map
from distill.losses.base import DistillLoss, LossContext, project, register_loss, reject_context
from distill.models import mean_pool
from distill.outputs import ModelOutputs, upcast


def _first_token(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # h (B, L, H) -> (B, H): the first real token of each row ([CLS] for BERT-style inputs, also when
    # padded left)
    if mask is None:
        return h[:, 0]
    first = (mask != 0).int().argmax(dim=1)  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), first]


@register_loss
class HiddenStateLoss(DistillLoss):
    """Match student hidden states to the teacher's, layer by layer.

    For each mapped pair ``(s, t)``: ``L_st = dist(W h_S^s, h_T^t)`` with ``W`` a learned linear projector
    (identity when widths match and ``projector: auto``), ``dist`` = ``mse`` (mean over valid tokens and
    features) or ``cosine`` (mean over valid tokens of 1 - cos). ``pooling: mean`` compares mask-averaged
    sentence vectors instead of tokens, which is what works when teacher and student tokenizers differ;
    ``pooling: cls`` compares the first real token ([CLS]) of each example. ``normalize: true`` divides both
    vectors by their L2 norm (after the projector) before the distance. The total is the mean over pairs.
    Layer indices follow ``hidden_states``: 0 = embeddings; ``layer_map`` is ``uniform`` (every k-th teacher
    layer, PKD-Skip), ``last``, last-k (``{last: 3}`` or ``last3``: PKD-Last) or explicit pairs
    (:func:`distill.layer_map.resolve_layer_map`).

    PKD (Sun et al. 2019), "patient" distillation: ``pooling: cls, normalize: true, loss: mse`` is
    ``mean_(s,t) mean_(b, h) (h_S/||h_S|| - h_T/||h_T||)^2`` over the [CLS] vectors, the element-wise mean
    that PKD's released code takes with ``F.mse_loss`` (the paper writes the squared L2 distance, larger by
    the width H). PKD leaves the student's last layer to the logit loss; drop that pair with an explicit map.

    Recipe::

        losses:
          - {name: hidden, weight: 1.0, loss: mse, layer_map: [[1, 4], [2, 8], [3, 12]]}
          - {name: hidden, weight: 100.0, pooling: cls, normalize: true, layer_map: uniform}  # PKD-Skip
    """

    name = "hidden"
    teacher_needs = ("hidden_states",)
    student_needs = ("hidden_states",)
    formula = "mean_(s,t) dist(W h_S[s], h_T[t]), dist in {mse, cosine}, W learned when widths differ"
    citation = (
        "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015; Jiao et al., TinyBERT, EMNLP Findings "
        "2020; Sun et al., Patient Knowledge Distillation for BERT Model Compression, EMNLP 2019"
    )

    def __init__(
        self,
        loss: str = "mse",
        layer_map: Any = "uniform",
        pooling: str = "none",
        projector: str = "auto",
        normalize: bool = False,
        student_hidden_size: int | None = None,
        teacher_hidden_size: int | None = None,
        student_num_layers: int | None = None,
        teacher_num_layers: int | None = None,
    ):
        super().__init__()
        self.validate_params(loss, layer_map, pooling, projector, normalize)
        self.loss = loss
        self.pooling = pooling
        self.normalize = normalize
        self.pairs: list[tuple[int, int]] = []
        if student_num_layers is not None and teacher_num_layers is not None:
            self.pairs = resolve_layer_map(layer_map, student_num_layers, teacher_num_layers)
        self.layer_map_spec = layer_map
        need_proj = projector == "linear" or (
            projector == "auto"
            and student_hidden_size is not None
            and teacher_hidden_size is not None
            and student_hidden_size != teacher_hidden_size
        )
        self.projectors = nn.ModuleList()
        if need_proj:
            if student_hidden_size is None or teacher_hidden_size is None:
                raise ValueError("a projector needs student_hidden_size and teacher_hidden_size")
            # one projector per pair: layers live in different subspaces
            self.projectors = nn.ModuleList(
                nn.Linear(student_hidden_size, teacher_hidden_size) for _ in self.pairs or [None]
            )
            if student_hidden_size == teacher_hidden_size:
                for proj in self.projectors:  # a forced square projector starts as the identity map
                    nn.init.eye_(proj.weight)
                    nn.init.zeros_(proj.bias)

    @staticmethod
    def validate_params(loss: str = "mse", layer_map: Any = "uniform", pooling: str = "none",
                        projector: str = "auto", normalize: bool = False, **context: Any) -> None:
        reject_context(context)
        if loss not in ("mse", "cosine"):
            raise ValueError(f"loss: {loss!r} is not allowed; choose mse or cosine")
        if pooling not in ("none", "mean", "cls"):
            raise ValueError(f"pooling: {pooling!r} is not allowed; choose none, mean or cls")
        if projector not in ("auto", "linear", "none"):
            raise ValueError(f"projector: {projector!r} is not allowed; choose auto, linear or none")
        check_layer_map_spec(layer_map)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize: {normalize!r} is not allowed; use true or false")

    @classmethod
    def build(cls, params: dict[str, Any], ctx: LossContext) -> "HiddenStateLoss":
        if params.get("pooling", "none") in ("none", "cls") and not ctx.same_tokenizer:
            raise ValueError(
                f"loss 'hidden' with pooling: {params.get('pooling', 'none')} compares tokens one to one, "
                "but teacher and student use different tokenizers; set pooling: mean (sentence vectors) or "
                "use the same tokenizer"
            )
        return cls(
            **params,
            student_hidden_size=ctx.student_hidden_size,
            teacher_hidden_size=ctx.teacher_hidden_size,
            student_num_layers=ctx.student_num_layers,
            teacher_num_layers=ctx.teacher_num_layers,
        )

    def teacher_layers(self) -> list[int]:
        return sorted({t for _, t in self.pairs})

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        hs = student.require("hidden_states", self.name)
        ht = teacher.require("hidden_states", self.name)
        pairs = self.pairs or resolve_layer_map(self.layer_map_spec, len(hs) - 1, len(ht) - 1)
        s_mask = student.attention_mask if student.attention_mask is not None else batch.get("attention_mask")
        t_mask = teacher.attention_mask if teacher.attention_mask is not None else s_mask
        total = hs[0].new_zeros(())
        for i, (s, t) in enumerate(pairs):
            h_s, h_t = upcast(hs[s]), upcast(ht[t].detach())  # (B, L, H_s), (B, L, H_t)
            if len(self.projectors):
                h_s = project(self.projectors[i % len(self.projectors)], h_s)
            if h_s.shape[-1] != h_t.shape[-1]:
                raise ValueError(
                    f"hidden widths differ (student {h_s.shape[-1]}, teacher {h_t.shape[-1]}) and no "
                    "projector was built; set projector: auto or linear"
                )
            if self.pooling == "mean":
                h_s, h_t = mean_pool(h_s, s_mask), mean_pool(h_t, t_mask)  # (B, H)
                mask = None
            elif self.pooling == "cls":
                h_s, h_t = _first_token(h_s, s_mask), _first_token(h_t, t_mask)  # (B, H)
                mask = None
            else:
                if h_s.shape[:2] != h_t.shape[:2]:
                    raise ValueError(
                        f"token-level hidden loss needs equal sequence shapes, got {tuple(h_s.shape[:2])} "
                        f"and {tuple(h_t.shape[:2])}; use pooling: mean"
                    )
                mask = s_mask
            if self.normalize:
                h_s, h_t = F.normalize(h_s, dim=-1), F.normalize(h_t, dim=-1)
            if self.loss == "mse":
                per_row = (h_s - h_t).pow(2).mean(dim=-1)
            else:
                per_row = 1.0 - F.cosine_similarity(h_s, h_t, dim=-1)
            if mask is None:
                total = total + per_row.mean()
            else:
                m = mask.to(per_row.dtype)
                total = total + (per_row * m).sum() / m.sum().clamp_min(1.0)
        return total / max(len(pairs), 1)
