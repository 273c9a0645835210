"""The validation-based choice of the kd weight: the best candidate wins, labels alone wins a real tie with
a better one, and a selection whose candidates all score the same keeps the recipe's weights (and says so)."""

from __future__ import annotations

from typing import Any

from conftest import tiny_recipe
from distill.config.recipe import recipe_from_dict
from distill.evaluation.report import describe_choice
from distill.losses import LossContext
from distill.tasks.selection import select_losses


class FakeTask:
    """Trains nothing: the 'model' is the losses' kd weight, and the validation score is looked up."""

    def __init__(self, recipe: Any, scores: dict[float, float]) -> None:
        self.recipe = recipe
        self.scores = scores
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def kd_data(self) -> list[int]:
        return list(range(100))

    def full_steps(self, data: Any) -> int:
        return 50

    def train(self, name, distiller, data, *, store=None, teacher=None, max_steps=None, specs=None):
        return next((s.weight for s in specs if s.name == "kd"), 0.0)

    def validation_scores(self, weight: float) -> dict[str, float]:
        return {"accuracy": self.scores[weight], "macro_f1": self.scores[weight]}


def _recipe(tmp_path):
    d = tiny_recipe(tmp_path, "teacher", tmp_path / "x.csv", select={"enabled": True})
    d["losses"] = [{"name": "kd", "weight": 0.7, "temperature": 3.0}, {"name": "ce", "weight": 0.3}]
    return recipe_from_dict(d)


def test_the_best_candidate_is_chosen(tmp_path):
    task = FakeTask(_recipe(tmp_path), {0.0: 0.60, 0.5: 0.71, 0.9: 0.65})
    specs, report = select_losses(task, LossContext(num_classes=2), None, None)
    assert report["chosen"] == {"kd_weight": 0.5, "temperature": 2.0}
    assert {s.name: s.weight for s in specs} == {"kd": 0.5, "ce": 0.5}
    assert "tied" not in report
    assert "kd weight 0.5" in describe_choice(report)


def test_labels_alone_wins_a_tie_at_the_top(tmp_path):
    task = FakeTask(_recipe(tmp_path), {0.0: 0.70, 0.5: 0.70, 0.9: 0.65})
    specs, report = select_losses(task, LossContext(num_classes=2), None, None)
    assert report["chosen"]["kd_weight"] == 0.0
    assert [s.name for s in specs] == ["ce"]


def test_all_candidates_tied_keeps_the_recipe_weights(tmp_path):
    task = FakeTask(_recipe(tmp_path), {0.0: 0.33, 0.5: 0.33, 0.9: 0.33})
    specs, report = select_losses(task, LossContext(num_classes=2), None, None)
    assert report["tied"] is True
    assert report["chosen"] == {"kd_weight": 0.7, "temperature": 3.0, "from": "recipe"}
    assert {s.name: s.weight for s in specs} == {"kd": 0.7, "ce": 0.3}
    assert any("could not tell them apart" in line for line in task.lines)
    sentence = describe_choice(report)
    assert "tied" in sentence and "recipe's weights" in sentence and "0.7" in sentence


def test_the_html_table_says_the_tie(tmp_path):
    from distill.evaluation.report_parts import selection_table

    task = FakeTask(_recipe(tmp_path), {0.0: 0.33, 0.5: 0.33, 0.9: 0.33})
    _, report = select_losses(task, LossContext(num_classes=2), None, None)
    html = selection_table({"select": report})
    assert "all tied" in html and "(chosen)" not in html
