"""Save the student so that ``AutoModelForSequenceClassification.from_pretrained(out)`` and
``pipeline("text-classification", model=out)`` just work."""

from __future__ import annotations

from pathlib import Path


def save_student(model, tokenizer, out_dir: str | Path, labels: list[str] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if labels:
        model.config.id2label = {i: n for i, n in enumerate(labels)}
        model.config.label2id = {n: i for i, n in enumerate(labels)}
    # only the student: projectors and other distillation parameters live in the distiller, not here
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
