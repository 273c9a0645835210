"""train.report_to: resolved when the TrainingArguments are built, checked against transformers'
integrations."""

from __future__ import annotations

import importlib.util

import pytest

from distill._dataclass_io import RecipeError
from distill.config import TrainConfig
from distill.training.args import logging_dir, report_to, training_arguments


def test_default_is_tensorboard_when_installed():
    expected = ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    assert report_to(TrainConfig()) == expected


def test_explicit_list_reaches_training_arguments(tmp_path):
    args = training_arguments(TrainConfig(report_to=[]), str(tmp_path / "checkpoints" / "student"))
    assert args.report_to == []
    with pytest.raises(RecipeError, match="train.report_to: 'tensorbored' is not a transformers integration"):
        report_to(TrainConfig(report_to=["tensorbored"]))


def test_logs_go_next_to_the_checkpoints_not_inside(tmp_path):
    assert logging_dir(tmp_path / "run" / "checkpoints" / "student") == tmp_path / "run" / "logs" / "student"
    assert logging_dir(tmp_path / "run" / "teacher.checkpoints") == tmp_path / "run" / "logs" / "teacher"
