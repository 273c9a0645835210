"""A fine-tuned teacher depends on its recipe, not on what ran before it in the process: the new
classification head is initialised from teacher.finetune.seed."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from conftest import tiny_recipe
from distill.config import recipe_from_dict
from distill.runner import finetune


def test_same_teacher_whatever_the_global_random_state(tmp_path, tiny_encoder, sentiment_csv):
    weights = []
    for run, seed in (("a", 1), ("b", 2)):
        teacher = {"model": str(tiny_encoder), "finetune": {"epochs": 1, "batch_size": 32}}
        recipe = tiny_recipe(tmp_path / run, tiny_encoder, sentiment_csv, teacher=teacher)
        torch.manual_seed(seed)  # e.g. other work earlier in the same process
        torch.randn(seed * 7)
        finetune(recipe_from_dict(recipe), log=lambda *a: None)
        weights.append(load_file(str(tmp_path / run / "run" / "teacher" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_a_mixed_precision_teacher_is_another_teacher(tmp_path, tiny_encoder, sentiment_csv):
    """train.bf16 / fp16 also set the teacher's fine-tuning precision: such a teacher gets its own
    fingerprint, so a float32 run never reuses it (nor it a float32 teacher)."""
    from distill.data.splits import load_splits
    from distill.teachers.finetune import finetune_fingerprint

    teacher = {"model": str(tiny_encoder), "finetune": {"epochs": 1, "batch_size": 32}}
    prints = {}
    for name, train in (("fp32", {}), ("bf16", {"bf16": True}), ("fp16", {"fp16": True})):
        recipe = recipe_from_dict(tiny_recipe(tmp_path / name, tiny_encoder, sentiment_csv, teacher=teacher,
                                              train=train))
        prints[name] = finetune_fingerprint(recipe, load_splits(recipe.data))
    assert len(set(prints.values())) == 3
