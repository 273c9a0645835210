"""The distiller: weighted sum of the recipe's losses over student and teacher outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.losses import DistillLoss
from distill.outputs import ModelOutputs


class Distiller(nn.Module):
    """Holds the loss modules (and their trainable projectors), never the models.

    ``forward(student, teacher, batch)`` returns ``(total, parts)`` where ``parts`` maps
    ``name`` or ``name/part`` to the *unweighted* detached value (a 0-dim tensor on the loss's device, so
    logging never forces a device sync), for logging.
    """

    def __init__(self, losses: list[tuple[str, float, DistillLoss]]):
        super().__init__()
        self.names = [n for n, _, _ in losses]
        self.weights = [float(w) for _, w, _ in losses]
        self.losses = nn.ModuleList(m for _, _, m in losses)
        self.keys = self._unique_keys(self.names)
        """The name each loss is logged under (``kd``; ``kd1``, ``kd2`` when a recipe names one loss
        twice)."""

    @staticmethod
    def _unique_keys(names: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        keys = []
        for n in names:
            seen[n] = seen.get(n, 0) + 1
            keys.append(n if names.count(n) == 1 else f"{n}{seen[n]}")
        return keys

    @property
    def needs_teacher(self) -> bool:
        return any(m.teacher_needs for m in self.losses)

    @property
    def needs_labels(self) -> bool:
        return any(m.needs_labels for m in self.losses)

    def needs(self, field: str, side: str = "teacher") -> bool:
        attr = "teacher_needs" if side == "teacher" else "student_needs"
        return any(field in getattr(m, attr) for m in self.losses)

    def teacher_layers(self) -> list[int]:
        return sorted({i for m in self.losses for i in m.teacher_layers()})

    def qkv_layers(self, side: str = "teacher") -> list[int] | str | None:
        """Layers (1-based) whose query/key/value projections the losses read from ``side``: None when no loss
        reads ``qkv`` there, ``"all"`` when a loss could not tell (built without the models' depths)."""
        if not self.needs("qkv", side):
            return None
        layers: set[int] = set()
        for m in self.losses:
            attr = "teacher_needs" if side == "teacher" else "student_needs"
            if "qkv" not in getattr(m, attr):
                continue
            got = m.qkv_layers(side)
            if got is None:
                return "all"
            layers.update(got)
        return sorted(layers)

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for key, weight, loss in zip(self.keys, self.weights, self.losses):
            value = loss(student, teacher, batch)
            if isinstance(value, dict):
                for part, v in value.items():
                    parts[f"{key}/{part}"] = v.detach()
                value = sum(value.values())
            parts[key] = value.detach()
            total = weight * value if total is None else total + weight * value
        assert total is not None  # a recipe has at least one loss (validated)
        return total, parts
