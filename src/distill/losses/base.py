"""What every loss is: a small ``nn.Module`` over :class:`~distill.outputs.ModelOutputs`.

A loss never holds a model (that breaks under DDP and makes the loss untestable alone). It may hold
trainable *distillation parameters* such as projectors; the trainer optimises them with the student and
they are dropped at export.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from distill._dataclass_io import RecipeError
from distill.outputs import ModelOutputs
from distill.registry import Registry


@dataclass(frozen=True)
class LossContext:
    """Facts about the two models that some losses need to build themselves (e.g. projector widths)."""

    student_hidden_size: int | None = None
    teacher_hidden_size: int | None = None
    student_num_layers: int | None = None
    teacher_num_layers: int | None = None
    num_classes: int | None = None
    same_tokenizer: bool = True


class DistillLoss(nn.Module):
    """Base class. Subclasses set the class attributes and implement :meth:`forward`.

    ``forward(student, teacher, batch)`` returns a scalar tensor or a dict of named scalar parts (summed by
    the trainer, each logged under ``<loss name>/<part>``).
    """

    name: ClassVar[str] = ""
    teacher_needs: ClassVar[tuple[str, ...]] = ()
    """Teacher output fields this loss reads (``logits``, ``hidden_states``, ``embeddings``, ...)."""
    student_needs: ClassVar[tuple[str, ...]] = ()
    needs_labels: ClassVar[bool] = False
    zero_at_identity: ClassVar[bool] = True
    """False for losses that are not zero when student outputs equal the teacher's (e.g. label CE)."""
    formula: ClassVar[str] = ""
    citation: ClassVar[str] = ""

    @classmethod
    def build(cls, params: dict[str, Any], ctx: LossContext) -> "DistillLoss":
        return cls(**params)

    def teacher_layers(self) -> list[int]:
        """Teacher hidden-state indices this loss reads (so the store keeps only those)."""
        return []

    def qkv_layers(self, side: str) -> list[int] | None:
        """Layers (1-based) whose query/key/value projections this loss reads from ``side`` (``student`` or
        ``teacher``), so only those are hooked and stored. ``None``: every layer (depth unknown at build)."""
        return []

    @property
    def needs_teacher_fit(self) -> bool:
        """True when the loss must see the teacher's embeddings of the whole training text before training
        (e.g. the PCA basis of ``embedding`` with ``projector: pca``); the pipeline then calls
        :meth:`fit_teacher` with them, read from the teacher-output store."""
        return False

    def fit_teacher(self, teacher_embeddings: torch.Tensor) -> torch.Tensor | None:  # pragma: no cover
        raise NotImplementedError(f"loss {self.name!r} fits nothing to the teacher")

    def forward(  # pragma: no cover - abstract
        self, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError


def project(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a learned projector in its own parameters' dtype (float32 unless the distiller was cast) and
    return the wider of that and ``x``'s dtype, so float64 outputs (kept by
    :func:`~distill.outputs.upcast`) stay float64 through the rest of the loss."""
    weight = next(module.parameters(), None)
    if weight is None or x.dtype == weight.dtype:
        return module(x)
    return module(x.to(weight.dtype)).to(torch.promote_types(x.dtype, weight.dtype))


LOSSES: Registry[type[DistillLoss]] = Registry("loss")


def register_loss(cls: type[DistillLoss]) -> type[DistillLoss]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    return LOSSES.register(cls.name)(cls)


def loss_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The parameters a recipe may set for loss ``name`` (those filled from :class:`LossContext` excluded)."""
    sig = inspect.signature(LOSSES.get(name).__init__)
    return {
        k: p for k, p in sig.parameters.items()
        if k != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and k not in LossContext.__dataclass_fields__
    }


def reject_context(context: dict[str, Any]) -> None:
    """For ``validate_params``: widths and depths come from the models (:class:`LossContext`), never from
    the recipe."""
    if context:
        raise ValueError(f"{', '.join(sorted(context))}: set from the models, not in the recipe")


def check_params(name: str, params: dict[str, Any], path: str) -> None:
    """Fail early on a parameter the loss does not take, or a value its constructor rejects."""
    allowed = loss_parameters(name)
    for key in params:
        if key not in allowed:
            valid = ", ".join(allowed) or "(none)"
            raise RecipeError(f"{path}.{key}: loss {name!r} has no parameter {key!r}; valid: {valid}")
    cls = LOSSES.get(name)
    validate = getattr(cls, "validate_params", None)
    if validate is not None:
        try:
            validate(**params)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"{path}: {exc}") from None
