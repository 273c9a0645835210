"""Several teachers in one classification run (``teachers:`` in a recipe).

Each teacher is prepared on its own (fine-tuned first when its section asks, into
``<output_dir>/teacher_<name>`` unless it names a folder), runs once into its own store (keyed by its weights
and tokenizer), and is scored on the test split on its own. The students read the combination
(:class:`distill.store.ensemble.TeacherEnsemble`) by the recipe's ``combine`` rule. The report's
``teacher`` row is that combination (its test predictions combined by the same rule, label-free; its latency
is every member run in turn), and its ``teachers`` section shows each member, its weight and how often the
members agree with each other and with the combination.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.config import Recipe
from distill.config.recipe import teacher_name
from distill.teachers.sources import PretrainedTeacher


@dataclass
class Member:
    """One teacher of several: its name, fixed weight, weights on disk and tokenizer."""

    name: str
    weight: float
    source: PretrainedTeacher
    tokenizer: Any


def check_combinable(recipe: Recipe, losses: list[Any]) -> None:
    """Several teachers share only their class distributions: refuse, by name, a loss that reads anything
    else of a teacher (hidden states, attention, feature maps: the teachers' layers do not correspond)."""
    from distill._dataclass_io import RecipeError

    for (_, _, loss), spec in zip(losses, recipe.losses, strict=True):
        other = sorted(set(loss.teacher_needs) - {"logits"})
        if other:
            raise RecipeError(f"losses: {spec.name} reads the teacher's {other[0]}, which several teachers "
                              "cannot share (their layers differ); with teachers: use losses that read "
                              "logits, e.g. kd and ce")


def member_recipes(recipe: Recipe) -> list[tuple[str, float, Recipe]]:
    """(name, weight, the recipe with ``teacher`` set to that member) per teacher; a member fine-tuned here
    goes to ``<output_dir>/teacher_<name>`` unless its ``finetune.output_dir`` says otherwise."""
    from pathlib import Path

    out = []
    for t in recipe.teachers:
        name = t.name or teacher_name(t.model)
        if t.finetune is not None and not t.finetune.output_dir:
            t = dataclasses.replace(t, finetune=dataclasses.replace(
                t.finetune, output_dir=str(Path(recipe.output_dir) / f"teacher_{name}")))
        out.append((name, float(t.weight), dataclasses.replace(recipe, teacher=t, teachers=[])))
    return out


class MemberModels(torch.nn.Module):
    """The members run one after another on their own inputs (keywords prefixed ``t<i>_``): what serving the
    ensemble costs, timed like any model."""

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, **inputs: torch.Tensor) -> list[Any]:
        return [m(**{k.split("_", 1)[1]: v for k, v in inputs.items() if k.startswith(f"t{i}_")})
                for i, m in enumerate(self.members)]


def combined_test_logits(member_logits: dict[str, np.ndarray], rule: str, weights: list[float]) -> np.ndarray:
    """The combination's (N, C) log-probabilities on the test split: the members' test logits combined by
    ``rule`` at temperature 1, without labels (the test labels are what it is scored on)."""
    from distill.store.ensemble import combine_log_probs

    lp = torch.stack([torch.log_softmax(torch.as_tensor(z, dtype=torch.float64), -1)
                      for z in member_logits.values()])
    return combine_log_probs(lp, rule, weights).numpy()


def members_report(members: list[Member], member_logits: dict[str, np.ndarray], combined: np.ndarray,
                   labels: np.ndarray, rule: str, mean_weights: dict[str, float] | None) -> dict[str, Any]:
    """The report's ``teachers`` section: each member's test accuracy, macro-F1, agreement with the
    combination and average weight on the training rows; agreement between every pair of members."""
    from distill.evaluation import classification_metrics
    from distill.store.ensemble import agreement

    preds = {name: z.argmax(-1) for name, z in member_logits.items()}
    combo = combined.argmax(-1)
    rows = []
    for m in members:
        metrics = classification_metrics(member_logits[m.name], labels)
        rows.append({"name": m.name, "path": m.source.path, "weight": m.weight,
                     "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                     "agreement_with_combined": float(np.mean(preds[m.name] == combo)),
                     "mean_weight": None if mean_weights is None else mean_weights.get(m.name)})
    return {"rule": rule, "members": rows, "agreement": agreement(preds)}
