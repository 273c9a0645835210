"""Per-example test predictions: the ``predictions.jsonl`` file and the small analysis kept in report.json
(a confusion matrix per model and the examples where the student departs most from the teacher)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from distill.files import atomic_write

FILENAME = "predictions.jsonl"
# above this a matrix would dominate report.json; predictions.jsonl still has it all
MAX_CONFUSION_CLASSES = 50


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, computed stably in float64."""
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def prediction_rows(frame, labels: list[str], probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per test example: text (and text pair), gold label (None when unlabelled) and, per model,
    the predicted label and the class probabilities (rounded to 5 decimals to keep the file small)."""
    rows = []
    gold = np.asarray(frame["label"])
    pairs = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
    for i, text in enumerate(frame["text"].tolist()):
        row: dict[str, Any] = {"index": i, "text": text}
        if pairs is not None:
            row["text_pair"] = pairs[i]
        row["label"] = labels[gold[i]] if gold[i] >= 0 else None
        for role, p in probs.items():
            row[role] = {"pred": labels[int(p[i].argmax())], "probs": [round(float(x), 5) for x in p[i]]}
        rows.append(row)
    return rows


def write_predictions(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines, atomically (temp file + rename)."""
    return atomic_write(path, lambda fh: fh.writelines(json.dumps(row, ensure_ascii=False) + "\n"
                                                       for row in rows))


def read_predictions(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def analyse(rows: list[dict[str, Any]], labels: list[str], student: str = "student_kd",
            teacher: str = "teacher", top: int = 20) -> dict[str, Any]:
    """Confusion matrices (rows: gold label, columns: prediction) and the ``top`` examples where the
    teacher's probability of its own class exceeds the student's probability of that class the most."""
    roles = [r for r in ("teacher", "student_kd", "student_no_kd") if rows and r in rows[0]]
    index = {name: i for i, name in enumerate(labels)}
    out: dict[str, Any] = {"labels": labels, "num_examples": len(rows)}
    if len(labels) <= MAX_CONFUSION_CLASSES:
        confusion = {}
        for role in roles:
            m = np.zeros((len(labels), len(labels)), dtype=np.int64)
            for row in rows:
                if row["label"] is not None:
                    m[index[row["label"]], index[row[role]["pred"]]] += 1
            confusion[role] = m.tolist()
        out["confusion"] = confusion
    if teacher in roles and student in roles:
        t = np.array([r[teacher]["probs"] for r in rows])  # (N, C)
        s = np.array([r[student]["probs"] for r in rows])  # (N, C)
        t_cls = t.argmax(-1)
        gap = t[np.arange(len(rows)), t_cls] - s[np.arange(len(rows)), t_cls]  # (N,)
        out["disagreement_rate"] = float((s.argmax(-1) != t_cls).mean())
        picked = [int(i) for i in np.argsort(-gap, kind="stable")[:top] if gap[i] > 0]
        examples = []
        for i in picked:
            row = rows[i]
            item: dict[str, Any] = {"index": row["index"], "text": row["text"], "label": row["label"],
                                    "gap": round(float(gap[i]), 5)}
            if "text_pair" in row:
                item["text_pair"] = row["text_pair"]
            for role in roles:
                p = row[role]["probs"]
                item[role] = {"pred": row[role]["pred"], "prob": p[index[row[role]["pred"]]],
                              "prob_teacher_class": p[int(t_cls[i])]}
            examples.append(item)
        out["disagreements"] = examples
    return out
