"""An interrupted student training resumes from its last checkpoint instead of starting over."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from conftest import tiny_recipe
from distill.config import recipe_from_dict
from distill.pipeline import Run


class Boom(RuntimeError):
    pass


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Boom()


def test_interrupted_training_resumes(tmp_path, tiny_classifier, sentiment_csv, monkeypatch):
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tiny_classifier, sentiment_csv,
                                          train={"save_steps": 4, "epochs": 2}, eval={"baseline": False}))
    from distill.training import trainer as trainer_mod

    original_init = trainer_mod.DistillTrainer.__init__

    def init_with_crash(self, *a, **kw):
        original_init(self, *a, **kw)
        self.add_callback(StopAt(6))

    monkeypatch.setattr(trainer_mod.DistillTrainer, "__init__", init_with_crash)
    with pytest.raises(Boom):
        Run(recipe)()
    ckpts = sorted((tmp_path / "run" / "checkpoints" / "student").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-4"]

    monkeypatch.setattr(trainer_mod.DistillTrainer, "__init__", original_init)
    logs = []
    report = Run(recipe, log=logs.append)()
    assert any("resuming from" in m and "checkpoint-4" in m for m in logs)
    steps = report["training"]["student"]["steps"]
    assert steps == report["training"]["student"]["log_history"][-1]["step"]
