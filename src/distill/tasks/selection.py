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
    task.log(f"choosing the kd weight and temperature on the validation split: {len(cfg.candidates(r.task))} "
             f"candidates, {steps} steps each")
    rows = []
    metric = cfg.metric_for(r.task)
    lower_is_better = metric == "perplexity"
    for weight, temperature in cfg.candidates(r.task):
        specs = candidate_specs(r, weight, temperature)
        distiller = Distiller(build_losses(specs, ctx))
        name = f"select/w{weight:g}" + (f"-T{temperature:g}" if temperature is not None else "")
        reads = distiller.needs_teacher
        model = task.train(name, distiller, data, store=store if reads else None,
                           teacher=teacher if reads else None, max_steps=steps, specs=specs)
        scores = task.validation_scores(model)
        rows.append({"kd_weight": weight, "temperature": temperature, **scores, "steps": steps})
        task.log(f"  kd weight {weight:g}" + (f", T {temperature:g}" if temperature else " (no teacher)")
                 + f": validation {metric} {scores[metric]:.4f}")
    sign = -1.0 if lower_is_better else 1.0
    report = {"metric": metric, "lower_is_better": lower_is_better, "fraction": cfg.fraction, "steps": steps,
              "candidates": rows}
    values = [row[metric] for row in rows]
    if len(rows) > 1 and max(values) - min(values) <= 1e-9:
        # Every candidate scored the same: the short trainings told nothing apart (typically too few steps
        # for any of them to leave the majority class). Picking "the first of equals" would be noise, so the
        # recipe's own weights stand, and the report says why.
        chosen = list(r.losses)
        kd = next(s for s in chosen if s.name == "kd")
        report["tied"] = True
        report["chosen"] = {"kd_weight": kd.weight, "temperature": kd.params.get("temperature"),
                            "from": "recipe"}
        task.log(f"  every candidate scored {values[0]:.4f}: the validation split could not tell them apart "
                 f"in {steps} steps, so the recipe's weights are kept (raise select.fraction for a real "
                 "choice)")
    else:
        best = max(rows, key=lambda row: sign * row[metric])  # the first of equals: labels alone wins a tie
        chosen = candidate_specs(r, best["kd_weight"], best["temperature"])
        report["chosen"] = {"kd_weight": best["kd_weight"], "temperature": best["temperature"]}
    report["chosen_losses"] = [{"name": s.name, "weight": s.weight, **s.params} for s in chosen]
    return chosen, report


class SelectsLosses:
    """For a task: ``select_distiller`` runs the selection (when it applies) and keeps the chosen losses in
    ``kd_specs``, which the distilled student's training stage is keyed by; ``losses_key`` is what a
    training stage's fingerprint records of its losses."""

    kd_specs: list[LossConfig]
    report: dict[str, Any]
    plan: Any

    def select_distiller(self, distiller: Distiller, store: Any, teacher: Any) -> Distiller:
        """``select``: the kd weight and temperature chosen on the validation split (weight 0 included)."""
        if (reason := why_not(self.recipe)) is not None:  # type: ignore[attr-defined]
            self.report["select"] = {"skipped": reason}
            return distiller
        specs, self.report["select"] = select_losses(self, self.plan.loss_context, store,  # type: ignore[arg-type]
                                                     teacher)
        self.kd_specs = specs
        return Distiller(build_losses(specs, self.plan.loss_context))

    def full_steps(self, data: Any) -> int:
        """Optimisation steps of a full training on ``data`` (``train.max_steps`` when set)."""
        import math

        t = self.recipe.train  # type: ignore[attr-defined]
        if t.max_steps > 0:
            return t.max_steps
        per_epoch = math.ceil(len(data) / (t.batch_size * t.gradient_accumulation_steps))
        return max(1, per_epoch * math.ceil(t.epochs))

    def losses_key(self, name: str, specs: list[LossConfig] | None) -> Any:
        """The given losses, the distilled student's, or "ce" for the baseline (the formats finished runs
        were keyed with)."""
        if specs is not None:
            return [spec.__dict__ for spec in specs]
        return [spec.__dict__ for spec in self.kd_specs] if name == "student" else "ce"
