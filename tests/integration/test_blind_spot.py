"""A teacher with a blind spot: it never predicts one class. Distilling from it teaches the student the same
blind spot; the run must not ship that silently. The validation-based choice (labels alone is a candidate)
keeps the class, and the report names the class where the teacher trails the no-KD student."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import torch
import yaml

from conftest import NEGATIVE, NEUTRAL, POSITIVE, tiny_recipe
from distill.cli.main import main

LABELS = ["negative", "neutral", "positive"]


def _rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Three classes: sentiment words decide positive / negative; a text without any is neutral (20%)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        r = rng.random()
        label = "neutral" if r < 0.2 else "positive" if r < 0.6 else "negative"
        words = rng.choices(NEUTRAL, k=rng.randint(4, 8))
        if label != "neutral":
            words += rng.choices(POSITIVE if label == "positive" else NEGATIVE, k=2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def blind_teacher(tmp_path_factory, tiny_encoder):
    """A classifier fine-tuned by ``distill finetune`` on the three classes, then made blind to 'neutral'."""
    tmp = tmp_path_factory.mktemp("blind")
    data = tmp / "three.csv"
    pd.DataFrame(_rows(600)).to_csv(data, index=False)
    recipe = tiny_recipe(tmp, tiny_encoder, data,
                         teacher={"model": str(tiny_encoder),
                                  "finetune": {"epochs": 4, "learning_rate": 3e-3, "batch_size": 16}},
                         data={"train": str(data), "labels": LABELS, "max_length": 32})
    (tmp / "ft.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["finetune", str(tmp / "ft.yaml")]) == 0
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(tmp / "run" / "teacher")
    with torch.no_grad():
        teacher.classifier.bias[LABELS.index("neutral")] = -1e4  # never predicts it
    out = tmp / "blind_teacher"
    teacher.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tmp / "run" / "teacher").save_pretrained(out)
    return out, data


def _run(tmp_path, teacher, data, student, select: bool) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tiny_recipe(tmp_path, teacher, data,
                         data={"train": str(data), "labels": LABELS, "max_length": 32},
                         # a student of its own (the teacher's head would carry the blind spot into both)
                         student={"from_teacher": False, "model": str(student), "layers": None},
                         losses=[{"name": "kd", "weight": 0.9, "temperature": 2.0},
                                 {"name": "ce", "weight": 0.1}],
                         train={"epochs": 4, "batch_size": 16, "learning_rate": 3e-3, "logging_steps": 5},
                         select={"enabled": select, "kd_weights": [0.0, 0.9], "fraction": 0.5})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0
    return json.loads((tmp_path / "run" / "report.json").read_text())


def test_a_blind_teacher_is_named_and_not_copied(tmp_path, blind_teacher, tiny_encoder, capsys):
    teacher, data = blind_teacher
    neutral = LABELS.index("neutral")

    copied = _run(tmp_path / "as_written", teacher, data, tiny_encoder, select=False)
    models = copied["models"]
    assert models["teacher"]["per_class_recall"][neutral] == 0.0
    assert models["student_no_kd"]["per_class_recall"][neutral] > 0.5
    # kd weight 0.9 from a blind teacher: the student learns the blind spot, and the report says so
    kd_recall = models["student_kd"]["per_class_recall"][neutral]
    assert kd_recall < models["student_no_kd"]["per_class_recall"][neutral]
    # the warning names every class the teacher is worse on; 'neutral' must be among them
    named = [w for w in copied["warnings"] if w.startswith("the teacher is worse than the no-KD student on")]
    assert len(named) == 1 and "'neutral' (F1 0.00 vs" in named[0]
    printed = [ln for ln in capsys.readouterr().out.splitlines()
               if ln.startswith("WARNING: the teacher is worse than the no-KD student on")]
    assert printed and "'neutral' (F1 0.00 vs" in printed[0]
    card = (tmp_path / "as_written" / "run" / "student" / "README.md").read_text()
    assert "WARNING" in card and "per class" in card
    html = (tmp_path / "as_written" / "run" / "report.html").read_text()
    assert "Before shipping" in html and "Per class" in html

    shipped = _run(tmp_path / "selected", teacher, data, tiny_encoder, select=True)
    chosen = shipped["select"]["chosen"]
    assert chosen["kd_weight"] == 0.0  # labels alone beat following the blind teacher on validation macro-F1
    recall = shipped["models"]["student_kd"]["per_class_recall"][neutral]
    assert recall > 0.5  # the shipped student recovers the class
    cmp = shipped["significance"]["student_kd_vs_student_no_kd"]
    # and it is not significantly worse than the baseline
    assert not (cmp["significant"] and cmp["difference"] < 0)
    assert "Distillation settings chosen on the validation split" in (
        tmp_path / "selected" / "run" / "report.html").read_text()
