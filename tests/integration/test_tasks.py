"""The task layer: a new task is one class and one registry entry (shown with a toy task defined only here,
run through the ``distill`` command), unknown tasks list the valid ones, and every command other than ``run``
answers for every task, or refuses with the reason, without training anything it does not need."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_recipe
from distill.cli.main import main
from distill.config import RecipeError, recipe_from_dict
from distill.tasks import TASKS, register_task, task_for
from distill.tasks.base import Plan, Task


# -- a toy task: 2-D points, a fixed linear teacher, a linear student ----------------------------------------
class _Linear(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor):
        from distill.outputs import ModelOutputs

        return ModelOutputs(logits=self.proj(x))


class _ToyTeacher:
    path = "toy-teacher"

    def __init__(self):
        self.net = _Linear(0)
        with torch.no_grad():
            self.net.proj.weight.copy_(torch.tensor([[3.0, -1.0], [-3.0, 1.0]]))
        self.loaded = True

    def model(self):
        return self.net

    def fingerprint(self) -> str:
        return "toy"

    def release(self) -> None:
        pass


class ToyTask(Task):
    """Everything a task needs, and nothing else: plan, teacher, data, training, evaluation, report."""

    name = "toy-points"

    def make_plan(self) -> Plan:
        from distill.losses import LossContext, build_losses

        rng = np.random.default_rng(0)
        x = torch.tensor(rng.normal(size=(400, 2)), dtype=torch.float32)
        ctx = LossContext(num_classes=2)
        build_losses(self.recipe.losses, ctx)
        return Plan(self.recipe, {"train": x[:300], "test": x[300:]}, None, None, True, ctx)

    def prepare_teacher(self) -> None:
        self.teacher = _ToyTeacher()

    def kd_data(self) -> torch.Tensor:
        return self.plan.splits["train"]

    def labelled_data(self) -> torch.Tensor:
        return self.plan.splits["train"][:30]  # a few labels

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.net(x).logits.argmax(-1)  # the ground truth is the teacher's rule

    def train(self, name: str, distiller: Any, data: torch.Tensor, *, store: Any = None,
              teacher: torch.nn.Module | None = None, max_steps: int | None = None) -> torch.nn.Module:
        student = _Linear(1)
        opt = torch.optim.SGD(list(student.parameters()) + list(distiller.parameters()), lr=0.5)
        batch = {"labels": self._labels(data)}
        for _ in range(30):
            with torch.no_grad():
                t_out = teacher(data) if teacher is not None else None
            loss, _ = distiller(student(data), t_out, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.report["training"][name] = {"steps": 30}
        return student

    def evaluate(self, role: str, model: torch.nn.Module) -> dict[str, Any]:
        x = self.plan.splits["test"]
        with torch.no_grad():
            acc = float((model(x).logits.argmax(-1) == self._labels(x)).float().mean())
        self.report["models"][role] = {"accuracy": acc, "macro_f1": acc}
        return self.report["models"][role]

    def finish(self) -> dict[str, Any]:
        from distill.evaluation import format_table, summarise

        summary = summarise(self.report["models"])
        self.report.update(self.common_report(), summary=summary)
        self.write_outputs(format_table(self.report["models"], summary, self.report))
        return self.report


@pytest.fixture()
def toy_task():
    register_task("toy-points")(ToyTask)
    yield ToyTask
    TASKS.unregister("toy-points")


def test_a_task_defined_in_one_class_runs_through_the_cli(tmp_path, toy_task):
    recipe = {"task": "toy-points", "output_dir": str(tmp_path / "run"), "teacher": {"model": "toy"},
              "student": {"model": "toy"}, "data": {"train": "unused"}, "store": {"enabled": False},
              "losses": [{"name": "kd", "weight": 1.0, "temperature": 1.0}]}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["task"] == "toy-points"
    assert set(report["models"]) == {"teacher", "student_kd", "student_no_kd"}
    assert report["models"]["teacher"]["accuracy"] == 1.0
    # the distilled student learned the teacher's rule from 300 unlabelled points; the baseline had 30 labels
    assert report["models"]["student_kd"]["accuracy"] > 0.9
    assert (tmp_path / "run" / "report.html").exists()
    # the commands it does not implement refuse with the reason
    assert main(["cache", str(path)]) == 2
    assert main(["label", str(path)]) == 2


def test_an_unknown_task_lists_the_valid_ones(tiny_encoder, sentiment_csv, tmp_path):
    data = tiny_recipe(tmp_path, tiny_encoder, sentiment_csv, task="nosuch-task")
    with pytest.raises(RecipeError,
                       match="task: 'nosuch-task' is not allowed; choose from .*text-classification"):
        recipe_from_dict(data)


# -- every command on every task: answer, or refuse with the reason ------------------------------------------
def _cli(tmp_path, recipe: dict, *args: str) -> int:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return main([args[0], str(path), *args[1:]])


def test_text_classification_commands(tmp_path, tiny_classifier, sentiment_csv, capsys):
    recipe = tiny_recipe(tmp_path, tiny_classifier, sentiment_csv)
    assert _cli(tmp_path, recipe, "finetune") == 2
    assert "teacher.finetune: not set" in capsys.readouterr().err
    assert _cli(tmp_path, recipe, "label") == 2
    assert "only for black-box teachers" in capsys.readouterr().err
    assert _cli(tmp_path, recipe, "cache", "--info") == 0
    assert "no store yet" in capsys.readouterr().out
    assert not (tmp_path / "run" / "student").exists()  # nothing trained


def test_finetune_then_cache_info_on_a_teacher_to_fine_tune(tmp_path, tiny_encoder, sentiment_csv, capsys):
    recipe = tiny_recipe(tmp_path, tiny_encoder, sentiment_csv,
                         teacher={"model": str(tiny_encoder), "finetune": {"epochs": 1, "batch_size": 32}})
    assert _cli(tmp_path, recipe, "cache", "--info") == 0
    assert "has not been fine-tuned yet" in capsys.readouterr().out
    assert not (tmp_path / "run" / "teacher").exists()  # --info fine-tunes nothing
    assert _cli(tmp_path, recipe, "finetune") == 0
    assert "teacher saved to" in capsys.readouterr().out
    assert (tmp_path / "run" / "teacher" / "distill_finetune.json").exists()
    assert not (tmp_path / "run" / "student").exists()
    assert _cli(tmp_path, recipe, "cache", "--info") == 0
    assert "no store yet for key" in capsys.readouterr().out


def _image_recipe(tmp_path) -> dict:
    return {"task": "image-classification", "output_dir": str(tmp_path / "run"),
            "teacher": {"model": "packaged:cnn-small", "finetune": {"epochs": 1, "batch_size": 64}},
            "student": {"model": "packaged:cnn-tiny"},
            "data": {"source": "packaged", "name": "digits", "max_train_examples": 200},
            "store": {"topk": 3, "dir": str(tmp_path / "stores")}, "train": {"epochs": 1}}


def test_image_commands_train_only_what_they_need(tmp_path, capsys):
    recipe = _image_recipe(tmp_path)
    assert _cli(tmp_path, recipe, "cache", "--info") == 0
    assert "has not been trained yet" in capsys.readouterr().out
    assert not (tmp_path / "run" / "teacher").exists()  # --info trains nothing
    assert _cli(tmp_path, recipe, "label") == 2
    capsys.readouterr()
    assert _cli(tmp_path, recipe, "finetune") == 0  # trains the CNN teacher, nothing else
    assert "teacher saved to" in capsys.readouterr().out
    assert (tmp_path / "run" / "teacher" / "distill_done.json").exists()
    assert not (tmp_path / "run" / "student").exists()
    assert _cli(tmp_path, recipe, "cache", "--info") == 0
    assert "no store yet" in capsys.readouterr().out
    assert _cli(tmp_path, recipe, "cache") == 0  # the augmented-view store, from the trained teacher
    assert "augmented views" in capsys.readouterr().out
    assert _cli(tmp_path, recipe, "cache", "--info") == 0
    out = capsys.readouterr().out
    assert "top-3 of 10" in out and not (tmp_path / "run" / "student").exists()


def test_blackbox_commands_refuse_with_the_reason(tmp_path, sentiment_csv, capsys):
    recipe = {"output_dir": str(tmp_path / "run"), "data": {"train": str(sentiment_csv)},
              "teacher": {"blackbox": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
              "student": {"model": "unused/student"}}
    for command, reason in (("cache", "`distill label RECIPE` collects them"),
                            ("finetune", "cannot be fine-tuned")):
        assert _cli(tmp_path, recipe, command) == 2
        assert reason in capsys.readouterr().err


def test_every_task_builds_from_the_registry():
    from distill.tasks.blackbox_classification import BlackBoxClassificationTask
    from distill.tasks.causal_lm import CausalLMTask
    from distill.tasks.image_classification import ImageClassificationTask
    from distill.tasks.sentence_embedding import SentenceEmbeddingTask
    from distill.tasks.text_classification import TextClassificationTask

    expected = {"text-classification": TextClassificationTask,
                "blackbox-classification": BlackBoxClassificationTask,
                "sentence-embedding": SentenceEmbeddingTask, "causal-lm": CausalLMTask,
                "image-classification": ImageClassificationTask}
    for name, cls in expected.items():
        assert TASKS.get(name) is cls and cls.name == name and issubclass(cls, Task)


def test_task_for_picks_black_box_classification(tmp_path, sentiment_csv, tiny_student):
    recipe = recipe_from_dict({"output_dir": str(tmp_path / "run"), "data": {"train": str(sentiment_csv)},
                               "teacher": {"blackbox": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
                               "student": {"model": str(tiny_student)}})
    assert task_for(recipe).name == "blackbox-classification"


def test_augmented_variants_go_to_the_distilled_student_only(tmp_path, tiny_classifier, sentiment_csv):
    """data.augment: variants of the labelled sentences are labelled by the teacher through the store; the
    no-KD student never sees them; the report counts them."""
    from distill.runner import run

    recipe = recipe_from_dict(tiny_recipe(tmp_path, tiny_classifier, sentiment_csv,
                                          data={"train": str(sentiment_csv), "max_length": 32,
                                                "augment": {"variants": 2, "rate": 0.5}}))
    report = run(recipe)
    n_aug = report["data"]["augmented"]
    assert 0 < n_aug <= 2 * report["data"]["train"]
    assert report["training"]["student"]["rows"] == report["data"]["train"] + n_aug
    assert report["training"]["student_no_kd"]["rows"] == report["data"]["train"]
    assert report["store"]["num_examples"] == report["data"]["train"] + n_aug
    assert list((tmp_path / "stores" / "augmented-text").glob("*.jsonl"))
