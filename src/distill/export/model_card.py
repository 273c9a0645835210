"""The student's README.md: what it is, how it was made, how good it is, and whom to cite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.losses import LOSSES


def render_model_card(recipe: Any, report: dict[str, Any], table: str) -> str:
    losses = recipe.losses
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [distillation, distill]",
        "---",
        "",
        "# Distilled student",
        "",
        f"A {report.get('student_parameters', 0):,}-parameter text classifier distilled with `distill` from "
        f"the teacher `{recipe.teacher.model or (recipe.teacher.blackbox and (recipe.teacher.blackbox.model or recipe.teacher.blackbox.local_model))}`.",
        "",
        "```python",
        "from transformers import pipeline",
        "clf = pipeline('text-classification', model='PATH_TO_THIS_FOLDER')",
        "```",
        "",
        "## Results on the test split",
        "",
        "```",
        table,
        "```",
        "",
        "## How it was trained",
        "",
    ]
    for spec in losses:
        params = ", ".join(f"{k}={v}" for k, v in spec.params.items()) or "defaults"
        lines.append(f"- `{spec.name}` (weight {spec.weight}; {params}): {LOSSES.get(spec.name).formula}")
    s = recipe.student
    origin = f"layers {s.layers} of the teacher" if s.from_teacher else f"`{s.model}`"
    lines += [
        f"- student initialised from {origin}",
        f"- {recipe.train.epochs} epoch(s), batch {recipe.train.batch_size}, learning rate {recipe.train.learning_rate}, "
        f"seed {recipe.train.seed}",
        f"- teacher outputs from the store: {report.get('store_key') or 'no (online teacher)'}",
        "",
        "The full recipe is in `recipe.yaml` beside this card; `distill run recipe.yaml` reproduces the run.",
        "",
        "## Citations",
        "",
    ]
    seen = set()
    for spec in losses:
        cite = LOSSES.get(spec.name).citation
        if cite and cite not in seen:
            seen.add(cite)
            lines.append(f"- {spec.name}: {cite}")
    return "\n".join(lines) + "\n"


def write_model_card(out_dir: str | Path, recipe: Any, report: dict[str, Any], table: str) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_model_card(recipe, report, table), encoding="utf-8")
    return path
