"""Losses for image classifiers: feature-map hints (FitNet), attention transfer and decoupled KD (DKD).

Feature maps come from ``ModelOutputs.feature_maps``: a dict of named (B, C, H, W) tensors in network order.
A *layer map* pairs student maps with teacher maps by name:

- ``last`` (default): the student's last map with the teacher's last map;
- a list of ``[student_name, teacher_name]`` pairs, e.g. ``[[stage1, stage2], [stage2, stage3]]``; an
  integer instead of a name is a position in the dict (``-1`` is the last map);
- a mapping ``{student_name: teacher_name}``.

When the two maps of a pair differ in height and width, the larger one is average-pooled down to the smaller
(``adaptive_avg_pool2d``), so a student that downsamples sooner can still be paired with the teacher.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.base import DistillLoss, register_loss
from distill.losses.divergence import teacher_student_log_probs
from distill.outputs import ModelOutputs, upcast

NameOrIndex = str | int


def check_feature_map_spec(layer_map: Any) -> None:
    """Reject a malformed feature layer map (names are checked against the models when they run)."""
    def ok_key(x: Any) -> bool:
        return (isinstance(x, str) and bool(x)) or (isinstance(x, int) and not isinstance(x, bool))

    if layer_map == "last":
        return
    if isinstance(layer_map, dict) and layer_map:
        if all(ok_key(k) and ok_key(v) for k, v in layer_map.items()):
            return
    if isinstance(layer_map, (list, tuple)) and layer_map:
        if all(isinstance(p, (list, tuple)) and len(p) == 2 and ok_key(p[0]) and ok_key(p[1])
               for p in layer_map):
            return
    raise ValueError(
        f"layer_map: {layer_map!r} is not allowed; use last, a list of [student_name, teacher_name] pairs "
        "or a mapping {student_name: teacher_name} (names of feature maps, or positions like -1)"
    )


def feature_pairs(layer_map: Any) -> list[tuple[NameOrIndex, NameOrIndex]]:
    if layer_map == "last":
        return [(-1, -1)]
    if isinstance(layer_map, dict):
        return [(k, v) for k, v in layer_map.items()]
    return [(p[0], p[1]) for p in layer_map]


def _pick(maps: dict[str, torch.Tensor], key: NameOrIndex, side: str, loss: str) -> torch.Tensor:
    names = list(maps)
    if isinstance(key, int):
        if not -len(names) <= key < len(names):
            raise ValueError(f"loss {loss!r}: the {side} has {len(names)} feature maps, no position {key}")
        key = names[key]
    if key not in maps:
        raise ValueError(f"loss {loss!r}: the {side} has no feature map {key!r}; it has {', '.join(names)}")
    x = maps[key]
    if x is None or x.dim() != 4:
        raise ValueError(f"loss {loss!r}: {side} feature map {key!r} must be (B, C, H, W), got "
                         f"{None if x is None else tuple(x.shape)}")
    return x


def _same_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever map is larger (per spatial axis) down to the other's height and width."""
    h, w = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])
    if a.shape[-2:] != (h, w):
        a = F.adaptive_avg_pool2d(a, (h, w))
    if b.shape[-2:] != (h, w):
        b = F.adaptive_avg_pool2d(b, (h, w))
    return a, b


def _names(layer_map: Any, side: int) -> list[str] | None:
    pairs = feature_pairs(layer_map)
    names = [p[side] for p in pairs]
    return [n for n in names if isinstance(n, str)] if all(isinstance(n, str) for n in names) else None


class _FeatureLoss(DistillLoss):
    """Shared bits: the layer map and which maps a model must expose."""

    layer_map: Any = "last"

    def feature_names(self, side: str) -> list[str] | None:
        """Names of the ``side`` maps this loss reads; ``None`` when the map uses positions (``last``)."""
        return _names(self.layer_map, 0 if side == "student" else 1)


@register_loss
class FitNetLoss(_FeatureLoss):
    """FitNet hints: match the student's intermediate feature maps to the teacher's.

    For each mapped pair ``(s, t)``: ``L_st = mean_(b,c,h,w) (W * F_S^s - F_T^t)^2`` (``loss: mse``) or the
    mean absolute difference (``loss: l1``), where ``W`` is a learned 1x1 convolution from the student's
    channels to the teacher's (built on first use when the channel counts differ and ``projector: auto``;
    always with ``projector: conv``; never with ``none``). Maps of different spatial size are pooled to the
    smaller one first. The total is the mean over pairs. The projectors are distillation parameters: trained
    with the student, dropped at export.

    Recipe::

        losses:
          - {name: fitnet, weight: 1.0, layer_map: [[stage2, stage2], [stage3, stage3]]}
          - {name: kd, weight: 0.5}
    """

    name = "fitnet"
    teacher_needs = ("feature_maps",)
    student_needs = ("feature_maps",)
    formula = "mean_(s,t) mean_(b,c,h,w) (conv1x1(F_S[s]) - F_T[t])^2, conv1x1 learned when channels differ"
    citation = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"

    def __init__(self, layer_map: Any = "last", projector: str = "auto", loss: str = "mse"):
        super().__init__()
        self.validate_params(layer_map, projector, loss)
        self.layer_map = layer_map
        self.pairs = feature_pairs(layer_map)
        self.projector = projector
        self.loss = loss
        # "pair index" -> 1x1 conv, built on first use (channels known then)
        self.projectors = nn.ModuleDict()

    @staticmethod
    def validate_params(layer_map: Any = "last", projector: str = "auto", loss: str = "mse") -> None:
        check_feature_map_spec(layer_map)
        if projector not in ("auto", "conv", "none"):
            raise ValueError(f"projector: {projector!r} is not allowed; choose auto, conv or none")
        if loss not in ("mse", "l1"):
            raise ValueError(f"loss: {loss!r} is not allowed; choose mse or l1")

    def _project(self, i: int, h_s: torch.Tensor, c_t: int) -> torch.Tensor:
        c_s = h_s.shape[1]
        key = str(i)
        if key not in self.projectors:
            if self.projector == "none" or (self.projector == "auto" and c_s == c_t):
                return h_s
            conv = nn.Conv2d(c_s, c_t, kernel_size=1).to(device=h_s.device, dtype=h_s.dtype)
            if c_s == c_t:  # a forced square projector starts as the identity
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(c_s).view(c_s, c_s, 1, 1))
                    conv.bias.zero_()
            self.projectors[key] = conv
        return self.projectors[key](h_s)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        fs = student.require("feature_maps", self.name)
        ft = teacher.require("feature_maps", self.name)
        total: torch.Tensor | None = None
        for i, (s, t) in enumerate(self.pairs):
            h_s = upcast(_pick(fs, s, "student", self.name))
            h_t = upcast(_pick(ft, t, "teacher", self.name).detach())
            h_s = self._project(i, h_s, h_t.shape[1])
            if h_s.shape[1] != h_t.shape[1]:
                raise ValueError(f"loss 'fitnet': student map {s!r} has {h_s.shape[1]} channels and "
                                 f"teacher map {t!r} {h_t.shape[1]}; set projector: auto or conv")
            h_s, h_t = _same_size(h_s, h_t)
            diff = h_s - h_t
            value = diff.pow(2).mean() if self.loss == "mse" else diff.abs().mean()
            total = value if total is None else total + value
        assert total is not None  # a layer map has at least one pair (validated)
        return total / len(self.pairs)


def attention_map(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a (B, C, H, W) map: ``mean_c |F_c|^p`` flattened to (B, H*W), unit L2 norm."""
    a = x.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(a, dim=1, eps=1e-12)


@register_loss
class AttentionTransferLoss(_FeatureLoss):
    """Attention transfer: match where the student's feature maps are active to where the teacher's are.

    ``a(F) = vec(mean_c |F_c|^p) / ||vec(mean_c |F_c|^p)||_2`` (a (B, H*W) spatial attention map, channels
    averaged, so no projector is needed); ``L = mean_(s,t) mean_(b, hw) (a(F_S^s) - a(F_T^t))^2``. This is the
    mean over positions that the authors' released code takes; the paper writes the (unsquared) L2 distance
    with a weight beta / 2, and recommends beta = 1000 -- use a large ``weight`` (e.g. 1000) in the recipe.

    Recipe::

        losses:
          - {name: at, weight: 1000.0, layer_map: [[stage1, stage1], [stage2, stage2]]}
          - {name: ce, weight: 1.0}
    """

    name = "at"
    teacher_needs = ("feature_maps",)
    student_needs = ("feature_maps",)
    formula = "mean_(s,t) mean_(b,hw) (a(F_S[s]) - a(F_T[t]))^2, a(F) = normalize(mean_c |F_c|^p)"
    citation = (
        "Zagoruyko, Komodakis. Paying More Attention to Attention: Improving the Performance of "
        "Convolutional Neural Networks via Attention Transfer, ICLR 2017"
    )

    def __init__(self, layer_map: Any = "last", p: float = 2.0):
        super().__init__()
        self.validate_params(layer_map, p)
        self.layer_map = layer_map
        self.pairs = feature_pairs(layer_map)
        self.p = float(p)

    @staticmethod
    def validate_params(layer_map: Any = "last", p: float = 2.0) -> None:
        check_feature_map_spec(layer_map)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
            raise ValueError(f"p: {p!r} is not allowed; use a number > 0 (2 is the paper's choice)")

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]) -> torch.Tensor:
        fs = student.require("feature_maps", self.name)
        ft = teacher.require("feature_maps", self.name)
        total: torch.Tensor | None = None
        for s, t in self.pairs:
            h_s = upcast(_pick(fs, s, "student", self.name))
            h_t = upcast(_pick(ft, t, "teacher", self.name).detach())
            h_s, h_t = _same_size(h_s, h_t)
            value = (attention_map(h_s, self.p) - attention_map(h_t, self.p)).pow(2).mean()
            total = value if total is None else total + value
        assert total is not None
        return total / len(self.pairs)


@register_loss
class DKDLoss(DistillLoss):
    """Decoupled knowledge distillation: KD split into a target-class and a non-target-class part.

    With ``p = softmax(z / T)`` for teacher (P) and student (Q) and ``y`` the gold class of the row:
    ``TCKD = KL([P_y, 1 - P_y] || [Q_y, 1 - Q_y])`` (binary: the target class vs all the others) and
    ``NCKD = KL(P_hat || Q_hat)`` with ``P_hat_j = P_j / (1 - P_y)`` over the non-target classes ``j != y``.
    ``L = T^2 * mean_rows (alpha * TCKD + beta * NCKD)``; returned as the two parts ``tckd`` and ``nckd``
    (each already multiplied by its alpha / beta and T^2). Classic KD is the case ``alpha = 1`` with
    ``beta = 1 - P_y`` per row; DKD frees beta (8 on CIFAR-100 in the paper). Rows labelled ``-100`` (and
    padded tokens) are skipped; a batch without labels contributes 0. Works on stored top-k teachers too.

    Recipe::

        losses:
          - {name: dkd, weight: 1.0, temperature: 4.0, alpha: 1.0, beta: 8.0}
          - {name: ce, weight: 1.0}
    """

    name = "dkd"
    teacher_needs = ("logits",)
    student_needs = ("logits",)
    needs_labels = True
    formula = ("T^2 * mean_rows [alpha * KL(b_T || b_S) + beta * KL(P_T\\y || P_S\\y)], b = [p_y, 1 - p_y], "
               "P\\y the renormalised non-target distribution")
    citation = "Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation, CVPR 2022"

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0):
        super().__init__()
        self.validate_params(temperature, alpha, beta)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.beta = float(beta)

    @staticmethod
    def validate_params(temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0) -> None:
        def number(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x

        if not number(temperature) or temperature <= 0:
            raise ValueError(f"temperature: {temperature!r} is not allowed; "
                             "use a number > 0 (4 in the paper)")
        if not number(alpha) or alpha < 0:
            raise ValueError(f"alpha: {alpha!r} is not allowed; use a number >= 0 (1 in the paper)")
        if not number(beta) or beta < 0:
            raise ValueError(f"beta: {beta!r} is not allowed; use a number >= 0 (1-8 in the paper)")

    def forward(self, student: ModelOutputs, teacher: ModelOutputs,
                batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        z_s = student.require("logits", self.name)
        z_t = teacher.require("logits", self.name)
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("loss 'dkd' needs labels in the batch "
                             "(the target class splits the distribution)")
        log_p, log_q, c = teacher_student_log_probs(z_t, z_s, self.temperature)  # (..., C) at temperature T
        log_p, log_q = log_p.reshape(-1, c), log_q.reshape(-1, c)
        labels = labels.reshape(-1)
        valid = labels != -100
        mask = student.attention_mask if student.attention_mask is not None else batch.get("attention_mask")
        if mask is not None and z_s.dim() == 3:
            valid = valid & (mask.reshape(-1) != 0)
        if not bool(valid.any()):
            zero = z_s.sum() * 0.0
            return {"tckd": zero, "nckd": zero}
        log_p, log_q, y = log_p[valid], log_q[valid], labels[valid].long()
        target = torch.zeros_like(log_p, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
        neg_inf = torch.finfo(log_p.dtype).min

        def split(lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            log_y = lp.gather(1, y.unsqueeze(1)).squeeze(1)  # log p_y
            others = lp.masked_fill(target, neg_inf)
            log_rest = torch.logsumexp(others, dim=1)  # log (1 - p_y), computed stably
            log_hat = others - log_rest.unsqueeze(1)  # renormalised non-target log-probs (target row: ~-inf)
            return log_y, log_rest, log_hat

        ty, trest, that = split(log_p)
        sy, srest, shat = split(log_q)
        tckd = ty.exp() * (ty - sy) + trest.exp() * (trest - srest)
        p_hat = that.exp().masked_fill(target, 0.0)
        nckd = (p_hat * (that - shat).masked_fill(target, 0.0)).sum(dim=1)
        scale = self.temperature**2
        return {"tckd": self.alpha * scale * tckd.mean(), "nckd": self.beta * scale * nckd.mean()}
