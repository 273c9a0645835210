"""The student's README.md: what it is, how it was made, how good it is, and whom to cite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.losses import LOSSES


def render_model_card(recipe: Any, report: dict[str, Any], table: str) -> str:
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
    s = recipe.student
    origin = f"layers {s.layers} of the teacher" if s.from_teacher else f"`{s.model}`"
    lines += training_and_citations(recipe, report, origin, "teacher outputs")
    return "\n".join(lines) + "\n"


def training_and_citations(recipe: Any, report: dict[str, Any], origin: str, stored: str) -> list[str]:
    """The card's shared tail: each loss with its formula, the student's start, the schedule, whether the
    teacher came from the store, how to reproduce the run, and the papers to cite."""
    lines = []
    for spec in recipe.losses:
        params = ", ".join(f"{k}={v}" for k, v in spec.params.items()) or "defaults"
        lines.append(f"- `{spec.name}` (weight {spec.weight}; {params}): {LOSSES.get(spec.name).formula}")
    lines += [
        f"- student initialised from {origin}",
        f"- {recipe.train.epochs} epoch(s), batch {recipe.train.batch_size}, learning rate {recipe.train.learning_rate}, "
        f"seed {recipe.train.seed}",
        f"- {stored} from the store: {report.get('store_key') or 'no (online teacher)'}",
        "",
        "The full recipe is in `recipe.yaml` beside this card; `distill run recipe.yaml` reproduces the run.",
        "",
        "## Citations",
        "",
    ]
    seen = set()
    for spec in recipe.losses:
        cite = LOSSES.get(spec.name).citation
        if cite and cite not in seen:
            seen.add(cite)
            lines.append(f"- {spec.name}: {cite}")
    return lines


def write_model_card(out_dir: str | Path, recipe: Any, report: dict[str, Any], table: str) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_model_card(recipe, report, table), encoding="utf-8")
    return path


def render_embedding_model_card(recipe: Any, report: dict[str, Any], table: str) -> str:
    s = recipe.student
    origin = ("static token vectors taken from the teacher" + (f", PCA to {s.static_dim}" if s.static_dim else "")
              if s.static else f"layers {s.layers} of the teacher" if s.from_teacher else f"`{s.model}`")
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [distillation, distill, sentence-transformers, feature-extraction]",
        "---",
        "",
        "# Distilled sentence encoder",
        "",
        f"A {report.get('student_parameters', 0):,}-parameter sentence encoder distilled with `distill` from the "
        f"teacher `{recipe.teacher.model}` on the recipe's own text.",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer('PATH_TO_THIS_FOLDER')",
        "vectors = model.encode(['a first sentence', 'another one'])",
        "```",
        "",
        "## Agreement with the teacher on held-out sentences",
        "",
        "Spearman: correlation of pairwise cosine similarities with the teacher's; recall@k: share of the "
        "teacher's k nearest neighbours the student also ranks in its top k; probe: logistic-regression accuracy "
        "on frozen embeddings of the packaged labelled sets; sent/s: CPU encode speed at batch 32.",
        "",
        "```",
        table,
        "```",
        "",
        "## How it was trained",
        "",
    ]
    lines += training_and_citations(recipe, report, origin, "teacher embeddings")
    return "\n".join(lines) + "\n"


def write_embedding_model_card(out_dir: str | Path, recipe: Any, report: dict[str, Any], table: str) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_embedding_model_card(recipe, report, table), encoding="utf-8")
    return path
