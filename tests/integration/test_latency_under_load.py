"""Latency figures agree with each other when other work shares the cores.

A run whose teacher and students have the *same* architecture (the student inherits all four teacher layers)
is made while a background process starts burning a core just as the students begin training, as happens when
a user's machine gets busy mid-run. The three models must come out within 15% of each other at every batch
size, or, when the timings are too noisy to tell, every figure at that batch size must be marked unreliable
(spread above UNRELIABLE_SPREAD, shown as "?"). Timing each model right after its evaluation (the teacher
before the load, the students during it) fails this: the interleaved timing at the end of the run, on the
same inputs, passes it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import tiny_recipe
from distill.cli.main import main

BURN = "import time\nwhile True:\n    pass\n"


def test_identical_models_time_alike_while_a_core_is_busy(tmp_path, tiny_classifier, sentiment_csv,
                                                           monkeypatch):
    from distill.tasks.text_classification import TextClassificationTask

    burners: list[subprocess.Popen] = []
    train = TextClassificationTask.train

    def busy_train(self, *args, **kwargs):
        if not burners:  # the machine gets busy when the students start
            burners.append(subprocess.Popen([sys.executable, "-c", BURN]))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(TextClassificationTask, "train", busy_train)
    recipe = tiny_recipe(tmp_path, tiny_classifier, sentiment_csv,
                         student={"from_teacher": True, "layers": [0, 1, 2, 3]},
                         eval={"latency_batch_sizes": [1, 32], "latency_repeats": 30,
                               "latency_min_seconds": 3.0, "latency_precision": 0.02,
                               "latency_max_seconds": 60})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    try:
        assert main(["run", str(path)]) == 0
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert burners, "the load never started"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    models = report["models"]
    assert set(models) == {"teacher", "student_kd", "student_no_kd"}
    from distill.evaluation.speed import UNRELIABLE_SPREAD

    for bs in (1, 32):
        ms = {role: m[f"latency_ms_b{bs}"] for role, m in models.items()}
        if max(ms.values()) / min(ms.values()) <= 1.15:
            continue
        # the one way out: timings so noisy (a bimodal distribution when the burner and the timing share a
        # core) that the report marks every figure at this batch size as unreliable, so no reader is misled
        # (seen once in 6 fresh-clone runs: b32 medians 12.97 / 11.03 / 12.81 ms, spreads 0.57-0.66)
        spreads = {role: v[f"b{bs}"]["spread"] for role, v in report["latency"]["models"].items()}
        assert all(x > UNRELIABLE_SPREAD for x in spreads.values()), (
            f"batch {bs}: {ms} differ by more than 15% and not every figure is marked unreliable: {spreads}")
