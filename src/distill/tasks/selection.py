"""Choosing the distillation weight and temperature on the validation split (the recipe's ``select``).

Every candidate trains the same student start for a share of the full budget, reading the teacher from the
store (so the teacher does not run again); the one that scores best on the validation split is trained in
full. Labels alone (kd weight 0) is always a candidate: a teacher that would make the student worse, for
example one that never predicts a class, is then not followed.
"""

from __future__ import annotations

from typing import Any, Protocol

from distill.config import LossConfig, Recipe
from distill.losses import LossContext, build_losses
from distill.training import Distiller


class Selectable(Protocol):
    """What a task offers the selection: training a stage with given losses, and scoring on validation."""

    recipe: Recipe
    log: Any

    def train(self, name: str, distiller: Distiller, data: Any, *, store: Any = None, teacher: Any = None,
              max_steps: int | None = None, specs: list[LossConfig] | None = None) -> Any: ...

    def kd_data(self) -> Any: ...

    def full_steps(self, data: Any) -> int: ...

    def validation_scores(self, model: Any) -> dict[str, float]: ...


def candidate_specs(recipe: Recipe, weight: float, temperature: float | None) -> list[LossConfig]:
    """The recipe's kd and ce terms with the kd weight ``weight`` (ce: 1 - weight) and ``temperature``; kd
    dropped at weight 0, ce at weight 1."""
    kd = next(s for s in recipe.losses if s.name == "kd")
    ce = next(s for s in recipe.losses if s.name == "ce")
    specs = []
    if weight > 0:
        specs.append(LossConfig(name="kd", weight=weight, params={**kd.params, "temperature": temperature}))
    if weight < 1:
        specs.append(LossConfig(name="ce", weight=round(1.0 - weight, 6), params=dict(ce.params)))
    return specs


def why_not(recipe: Recipe) -> str | None:
    """Why the selection does not apply to this recipe (None: it does)."""
    if not recipe.select.enabled:
        return "select.enabled: false"
    if sorted(s.name for s in recipe.losses) != ["ce", "kd"]:
        return "the recipe's losses are not one kd and one ce term; its weights are used as written"
    return None


def select_losses(task: Selectable, ctx: LossContext, store: Any,
                  teacher: Any) -> tuple[list[LossConfig], dict[str, Any]]:
    """Train every candidate for ``select.fraction`` of the budget, score it on the validation split, and
    return the best candidate's losses with the ``select`` section of the report."""
    r = task.recipe
    cfg = r.select
    data = task.kd_data()
    steps = max(1, round(cfg.fraction * task.full_steps(data)))
    task.log(f"choosing the kd weight and temperature on the validation split: {len(cfg.candidates())} "
             f"candidates, {steps} steps each")
    rows = []
    for weight, temperature in cfg.candidates():
        specs = candidate_specs(r, weight, temperature)
        distiller = Distiller(build_losses(specs, ctx))
        name = f"select/w{weight:g}" + (f"-T{temperature:g}" if temperature is not None else "")
        reads = distiller.needs_teacher
        model = task.train(name, distiller, data, store=store if reads else None,
                           teacher=teacher if reads else None, max_steps=steps, specs=specs)
        scores = task.validation_scores(model)
        rows.append({"kd_weight": weight, "temperature": temperature, **scores, "steps": steps})
        task.log(f"  kd weight {weight:g}" + (f", T {temperature:g}" if temperature else " (labels alone)")
                 + f": validation {cfg.metric} {scores[cfg.metric]:.4f}")
    best = max(rows, key=lambda row: row[cfg.metric])  # the first of equals: labels alone wins a tie
    chosen = candidate_specs(r, best["kd_weight"], best["temperature"])
    report = {"metric": cfg.metric, "fraction": cfg.fraction, "steps": steps, "candidates": rows,
              "chosen": {"kd_weight": best["kd_weight"], "temperature": best["temperature"]},
              "chosen_losses": [{"name": s.name, "weight": s.weight, **s.params} for s in chosen]}
    return chosen, report
