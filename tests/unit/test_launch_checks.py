"""Launch checks that run before anything loads."""

from __future__ import annotations

import pytest
import torch

from distill._dataclass_io import RecipeError
from distill.training import args as args_mod


def test_more_processes_than_gpus_is_refused_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RecipeError, match=r"4 processes on this node but 2 visible GPU.*CUDA_VISIBLE"):
        args_mod.check_processes_per_gpu()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    args_mod.check_processes_per_gpu()  # one GPU each: fine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    args_mod.check_processes_per_gpu()  # no GPU: every process on the CPU over gloo
