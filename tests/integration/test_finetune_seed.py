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
