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

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.config import Recipe
from distill.config.recipe import teacher_name


@dataclass
class Member:
    """One teacher of several: its name, fixed weight, where it comes from and its tokenizer; a black-box
    member has its answers (:class:`distill.teachers.blackbox.annotate.BlackBoxLabels`) instead of weights."""

    name: str
    weight: float
    source: Any
    tokenizer: Any
    answers: Any = None

    @property
    def blackbox(self) -> bool:
        return self.answers is not None


def answer_arrays(run: Any, n: int, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A black-box teacher's answers to ``n`` rows (``run``: its :class:`LabelRun` over them, None when it was
    not asked) as (n, C) probabilities (soft labels, else one-hot of the label; uniform where it gave no
    answer) and the (n,) mask of answered rows."""
    probs = np.full((n, num_labels), 1.0 / num_labels)
    answered = np.zeros(n, dtype=bool)
    for i, item in enumerate(run.items if run is not None else []):
        if item.label is None:
            continue
        answered[i] = True
        if item.probs is not None:
            probs[i] = item.probs
        else:
            probs[i] = 0.0
            probs[i, item.label] = 1.0
    return probs, answered


def check_combinable(recipe: Recipe, shared: str = "logits") -> None:
    """Several teachers share only their outputs (``shared``: class logits, or sentence ``embeddings``):
    refuse, by name, a loss that reads anything else of a teacher (hidden states, attention, feature maps:
    the teachers' layers do not correspond)."""
    from distill._dataclass_io import RecipeError
    from distill.losses import LOSSES

    for i, spec in enumerate(recipe.losses):
        other = sorted(set(LOSSES.get(spec.name).teacher_needs) - {shared})
        if other:
            use = "kd and ce" if shared == "logits" else "embedding, similarity_matrix or affinity"
            raise RecipeError(f"losses[{i}].name: {spec.name} reads the teacher's {other[0]}, which several "
                              f"teachers cannot share (their layers differ); with teachers: use losses that "
                              f"read {shared}, e.g. {use}")


def member_recipes(recipe: Recipe) -> list[tuple[str, float, Recipe]]:
    """(name, weight, the recipe with ``teacher`` set to that member) per teacher; a member fine-tuned here
    goes to ``<output_dir>/teacher_<name>`` unless its ``finetune.output_dir`` says otherwise."""
    from pathlib import Path

    out = []
    for t in recipe.teachers:
        name = t.name or teacher_name(t)
        folder = str(Path(recipe.output_dir) / f"teacher_{name}")
        one = copy.copy(recipe)  # not re-validated: the student may inherit from the first teacher only
        one.teacher, one.teachers = t, []
        if t.finetune is not None and not t.finetune.output_dir:
            one.teacher = dataclasses.replace(t, finetune=dataclasses.replace(t.finetune, output_dir=folder))
        if t.blackbox is not None:  # its labels files (and response store) in a folder of its own
            one.output_dir = folder
        out.append((name, float(t.weight), one))
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


class MixtureLM(torch.nn.Module):
    """Several causal LMs on one tokenizer as one model: ``forward`` returns, at every position, the
    members' next-token distributions combined by ``rule`` (temperature 1) as log-probabilities in
    ``.logits``. What the report scores as "the teacher" of a multi-teacher language-model run."""

    def __init__(self, models: list[torch.nn.Module], weights: list[float], rule: str):
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.weights, self.rule = list(weights), rule

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        from types import SimpleNamespace

        from distill.store.ensemble import combine_log_probs

        lp = torch.stack([torch.log_softmax(m(input_ids=input_ids, attention_mask=attention_mask,
                                                **kwargs).logits.float(), -1) for m in self.members])
        return SimpleNamespace(logits=combine_log_probs(lp, self.rule, self.weights))


def combined_test_logits(member_logits: dict[str, np.ndarray], rule: str, weights: list[float],
                         answered: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The combination's (N, C) log-probabilities on the test split: the members' test logits combined by
    ``rule`` at temperature 1, without labels (the test labels are what it is scored on). ``answered``: per
    black-box member, the test rows it answered (the others get its weight there)."""
    from distill.store.ensemble import combine_log_probs

    lp = torch.stack([torch.log_softmax(torch.as_tensor(z, dtype=torch.float64), -1)
                      for z in member_logits.values()])
    answered = answered or {}
    mask = torch.stack([torch.as_tensor(answered.get(name, np.ones(len(z), dtype=bool)))
                        for name, z in member_logits.items()])
    return combine_log_probs(lp, rule, weights, answered=mask).numpy()


def members_report(members: list[Member], member_logits: dict[str, np.ndarray], combined: np.ndarray,
                   labels: np.ndarray, rule: str, mean_weights: dict[str, float] | None,
                   answered: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The report's ``teachers`` section: each member's test accuracy, macro-F1, agreement with the
    combination and average weight on the training rows; agreement between every pair of members. A
    black-box member's unanswered test rows count as wrong (prediction -1)."""
    from sklearn.metrics import f1_score

    from distill.store.ensemble import agreement

    answered = answered or {}
    preds = {name: np.where(answered.get(name, True), z.argmax(-1), -1) for name, z in member_logits.items()}
    combo = combined.argmax(-1)
    rows = []
    for m in members:
        pred = preds[m.name]
        row = {"name": m.name, "path": m.source.path, "weight": m.weight,
               "accuracy": float(np.mean(pred == labels)),
               "macro_f1": float(f1_score(labels, pred, labels=sorted(set(labels.tolist())), average="macro",
                                          zero_division=0)),
               "agreement_with_combined": float(np.mean(pred == combo)),
               "mean_weight": None if mean_weights is None else mean_weights.get(m.name)}
        if m.blackbox:
            row["answered_fraction"] = float(np.mean(answered[m.name]))
        rows.append(row)
    return {"rule": rule, "members": rows, "agreement": agreement(preds)}
