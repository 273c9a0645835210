"""Several teachers through the ``distill`` command on tiny models: each teacher runs once into its own store,
the report shows each one, the combination and their agreement, and changing the combination rule retrains
the student without running any teacher again."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import make_bert, tiny_recipe
from distill._dataclass_io import RecipeError
from distill.cli.main import main
from distill.config import recipe_from_dict


@pytest.fixture(scope="module")
def second_teacher(tiny_dir, tiny_tokenizer):
    """Another classifier of another shape (2 layers, 48 wide) over the same classes."""
    return make_bert(tiny_dir / "classifier_b", tiny_tokenizer, layers=2, hidden=48, heads=4, classifier=True,
                     seed=7)


def multi_recipe(tmp, classifier, other, encoder, data, **sections):
    teachers = [{"model": str(classifier), "name": "a"},
                {"model": str(other), "name": "b", "weight": 2.0},
                {"model": str(encoder), "name": "tuned",
                 "finetune": {"epochs": 2, "learning_rate": 3e-3, "batch_size": 16}}]
    recipe = tiny_recipe(tmp, classifier, data, teachers=teachers, **sections)
    recipe.pop("teacher")
    return recipe


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, tiny_classifier, second_teacher, tiny_encoder, sentiment_csv):
    tmp = tmp_path_factory.mktemp("multi")
    recipe = multi_recipe(tmp, tiny_classifier, second_teacher, tiny_encoder, sentiment_csv,
                          student={"from_teacher": True, "layers": [0, 3]})
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0
    return tmp, path


def test_report_shows_each_teacher_the_combination_and_agreement(multi_run):
    tmp, _ = multi_run
    report = json.loads((tmp / "run" / "report.json").read_text())
    section = report["teachers"]
    assert section["rule"] == "mean_probs"
    assert [m["name"] for m in section["members"]] == ["a", "b", "tuned"]
    assert set(section["agreement"]) == {"a | b", "a | tuned", "b | tuned"}
    for m in section["members"]:
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["agreement_with_combined"] <= 1
    # fixed weights 1, 2, 1: shares 0.25, 0.5, 0.25 on every row
    assert [round(m["mean_weight"], 6) for m in section["members"]] == [0.25, 0.5, 0.25]
    teacher = report["models"]["teacher"]
    assert teacher["teachers"] == 3 and "latency_ms_b1" in teacher
    # the combination is the sum of its members: parameters add up
    assert teacher["parameters"] > report["models"]["student_kd"]["parameters"]
    assert (tmp / "run" / "teacher_tuned" / "config.json").exists()  # the fine-tuned member, under its name
    assert len(report["store"]["members"]) == 3
    card = (tmp / "run" / "student" / "README.md").read_text()
    assert "## Teachers" in card and "combined by `mean_probs`" in card
    assert "<h2>Teachers</h2>" in (tmp / "run" / "report.html").read_text()


def test_changing_the_rule_runs_no_teacher_again(multi_run, capsys):
    tmp, path = multi_run
    assert main(["run", str(path), "--combine", "confidence"]) == 0
    out = capsys.readouterr().out
    assert out.count("teacher outputs found in the store") == 3
    assert "running the teacher once" not in out
    assert "student: already trained" not in out  # a new target: the student trains again
    report = json.loads((tmp / "run" / "report.json").read_text())
    weights = [m["mean_weight"] for m in report["teachers"]["members"]]
    assert report["teachers"]["rule"] == "confidence" and sum(weights) == pytest.approx(1.0)
    assert len(set(round(w, 4) for w in weights)) == 3  # per-example weights: no longer the fixed shares


def test_cache_info_lists_every_teachers_store(multi_run, capsys):
    _, path = multi_run
    assert main(["cache", str(path), "--info"]) == 0
    out = capsys.readouterr().out
    assert "teacher a:" in out and "teacher b:" in out and "teacher tuned:" in out
    assert main(["cache", str(path)]) == 0  # every store is there already: described, not rebuilt
    out = capsys.readouterr().out
    assert out.count("key") >= 3 and "running the teacher once" not in out


@pytest.mark.parametrize("change, match", [
    (lambda r: r.update(teachers=r["teachers"][:1]), "at least two teachers"),
    (lambda r: r.update(combine="median"), "combine: 'median'"),
    (lambda r: r["teachers"][1].update(name="a"), "give each teacher its own name"),
    (lambda r: r.update(store={"enabled": False}), "store.enabled"),
    (lambda r: r.update(task="causal-lm", losses=[{"name": "alm"}]), "cross-tokenizer losses"),
    (lambda r: r["teachers"][1].update(weight=0), r"teachers\[1\]: teacher.weight"),
    (lambda r: r.update(store={"reconstruct": "topk"}), "store.reconstruct"),
    (lambda r: r.update(task="sentence-embedding", losses=[{"name": "embedding"}]),
     r"teachers\[2\].finetune"),
    (lambda r: r.update(teacher={"model": "someone/else"}), "leave teacher out"),
])
def test_bad_multi_teacher_recipes_are_refused_by_name(tmp_path, tiny_classifier, second_teacher,
                                                      tiny_encoder, sentiment_csv, change, match):
    recipe = multi_recipe(tmp_path, tiny_classifier, second_teacher, tiny_encoder, sentiment_csv)
    change(recipe)
    with pytest.raises(RecipeError, match=match):
        recipe_from_dict(recipe)


def test_losses_reading_teacher_layers_are_refused(tmp_path, tiny_classifier, second_teacher, tiny_encoder,
                                                   sentiment_csv):
    from distill.tasks import task_for

    recipe = multi_recipe(tmp_path, tiny_classifier, second_teacher, tiny_encoder, sentiment_csv,
                          losses=[{"name": "kd"}, {"name": "hidden", "layer_map": "uniform"}])
    with pytest.raises(RecipeError, match="hidden"):
        task_for(recipe_from_dict(recipe))


def image_recipe(tmp_path, combine="mean_probs"):
    teachers = [{"model": "packaged:cnn-small", "name": "small",
                 "finetune": {"epochs": 4, "learning_rate": 0.005, "batch_size": 32}},
                {"model": "packaged:cnn-tiny", "name": "tiny",
                 "finetune": {"epochs": 4, "learning_rate": 0.005, "batch_size": 32, "seed": 3}}]
    return recipe_from_dict({
        "task": "image-classification", "teachers": teachers, "combine": combine,
        "student": {"model": "packaged:cnn-tiny"},
        "data": {"source": "packaged", "name": "digits", "max_train_examples": 300},
        "losses": [{"name": "kd", "weight": 0.7, "temperature": 4.0}, {"name": "ce", "weight": 0.3}],
        "store": {"topk": 3, "dir": str(tmp_path / "stores")},
        "vision": {"augment": {"pad": 1}},
        "train": {"epochs": 2, "batch_size": 32, "learning_rate": 0.005},
        "eval": {"latency_batch_sizes": [1], "latency_repeats": 2, "latency_min_seconds": 0,
                 "latency_precision": 0},
        "output_dir": str(tmp_path / "run"),
    })


def test_image_run_with_two_teachers(tmp_path):
    from distill.runner import run

    report = run(image_recipe(tmp_path))
    section = report["teachers"]
    assert [m["name"] for m in section["members"]] == ["small", "tiny"]
    assert set(section["agreement"]) == {"small | tiny"}
    assert report["models"]["teacher"]["teachers"] == 2 and report["models"]["teacher"]["latency_ms_b1"] > 0
    assert (tmp_path / "run" / "teacher_small").is_dir() and (tmp_path / "run" / "teacher_tiny").is_dir()
    assert [round(m["mean_weight"], 6) for m in section["members"]] == [0.5, 0.5]
    from distill.tasks import task_for

    logs: list[str] = []
    again = task_for(image_recipe(tmp_path, combine="entropy"), logs.append).run()
    assert sum("already trained, reusing" in line for line in logs) == 2  # no teacher trained again
    assert not any("views written" in line for line in logs)  # nor any store built again
    assert again["teachers"]["rule"] == "entropy"
    assert sum(m["mean_weight"] for m in again["teachers"]["members"]) == pytest.approx(1.0)


def test_image_datafree_with_several_teachers_is_refused(tmp_path):
    from distill.config.tasks import DataFreeConfig
    from distill.tasks import task_for

    recipe = image_recipe(tmp_path)
    recipe.vision.datafree = DataFreeConfig()
    with pytest.raises(RecipeError, match="vision.datafree"):
        task_for(recipe)


def test_a_model_teacher_and_a_black_box_teacher(tmp_path, monkeypatch, tiny_classifier, tiny_student):
    """A mixed pair: the black-box teacher answers over HTTP (every text with "flat" fails, so it has gaps);
    where it has no answer the model teacher alone is the target, and the report says how much it answered."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "blackbox"))
    import pandas as pd
    from _chat_server import FakeChatServer

    from conftest import make_sentiment_rows
    from distill.runner import run

    data = tmp_path / "reviews.csv"
    pd.DataFrame(make_sentiment_rows(120, seed=5)).to_csv(data, index=False)
    with FakeChatServer() as server:
        server.fail_prompts.add("flat")
        recipe = tiny_recipe(tmp_path, tiny_classifier, data)
        recipe.pop("teacher")
        recipe["student"] = {"model": str(tiny_student)}
        recipe["teachers"] = [
            {"model": str(tiny_classifier), "name": "model"},
            {"name": "api", "blackbox": {"base_url": server.url, "model": "fake-llm", "soft_labels": True,
                                         "max_retries": 0, "timeout": 5}}]
        report = run(recipe_from_dict(recipe))
    members = {m["name"]: m for m in report["teachers"]["members"]}
    assert 0.3 < members["api"]["answered_fraction"] < 1.0  # "flat" texts got no answer
    assert members["api"]["accuracy"] > members["model"]["accuracy"]  # the rule-based API reads the words
    # equal fixed weights, but the model teacher carries the rows the API did not answer
    assert members["model"]["mean_weight"] > 0.5 > members["api"]["mean_weight"] > 0
    assert (tmp_path / "run" / "teacher_api" / "teacher_labels.jsonl").exists()
    assert report["models"]["teacher"]["teachers"] == 2 and "latency_ms_b1" in report["models"]["teacher"]


def test_a_black_box_teacher_cannot_come_first(tmp_path, tiny_classifier, sentiment_csv):
    recipe = tiny_recipe(tmp_path, tiny_classifier, sentiment_csv)
    recipe.pop("teacher")
    recipe["teachers"] = [{"name": "api", "blackbox": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
                          {"model": str(tiny_classifier)}]
    with pytest.raises(RecipeError, match="put a model teacher first"):
        recipe_from_dict(recipe)
    # after a model teacher it may join, even when the student inherits the first teacher's layers
    from distill.tasks.multi_teacher import member_recipes

    recipe["teachers"].reverse()
    members = member_recipes(recipe_from_dict(recipe))
    assert members[1][2].teacher.blackbox is not None and members[1][2].student.from_teacher
