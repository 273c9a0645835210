"""An interrupted student training resumes from its last checkpoint instead of starting over."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from conftest import tiny_recipe
from distill.config import recipe_from_dict
from distill.tasks import task_for


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
        task_for(recipe).run()
    ckpts = sorted((tmp_path / "run" / "checkpoints" / "student").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-4"]

    monkeypatch.setattr(trainer_mod.DistillTrainer, "__init__", original_init)
    logs = []
    report = task_for(recipe, logs.append).run()
    assert any("resuming from" in m and "checkpoint-4" in m for m in logs)
    steps = report["training"]["student"]["steps"]
    assert steps == 2 * -(-report["data"]["train"] // 16)  # 2 epochs of batch 16: the full budget, once

    # the resumed student equals one trained without interruption (same seed, data order and RNG state)
    import dataclasses

    import torch
    from transformers import AutoModelForSequenceClassification

    fresh = dataclasses.replace(recipe, output_dir=str(tmp_path / "fresh"))
    task_for(fresh, lambda m: None).run()
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student").state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fresh" / "student").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_changed_inputs_are_never_served_from_a_stale_stage(tmp_path, tiny_classifier, sentiment_csv):
    import dataclasses

    base = recipe_from_dict(tiny_recipe(tmp_path, tiny_classifier, sentiment_csv, eval={"baseline": False}))
    task_for(base, lambda m: None).run()
    logs: list[str] = []
    task_for(base, logs.append).run()
    assert any("student: already trained" in m for m in logs)

    # a different max length changes what the student sees: it must be retrained, not reused
    changed = dataclasses.replace(base, data=dataclasses.replace(base.data, max_length=12))
    logs.clear()
    task_for(changed, logs.append).run()
    assert not any("already trained" in m for m in logs)
    assert any("student: training" in m for m in logs)

    # checkpoints left by another recipe are discarded, not resumed
    stale = tmp_path / "run" / "checkpoints" / "student" / "checkpoint-3"
    stale.mkdir(parents=True)
    (stale.parent / "distill_stage.json").write_text('{"fingerprint": "someone-else"}')
    import shutil

    shutil.rmtree(tmp_path / "run" / "student")
    logs.clear()
    task_for(changed, logs.append).run()
    assert any("discarding checkpoints of a different recipe" in m for m in logs)
    assert not any("resuming from" in m for m in logs)
