"""Recipe validation: every bad input fails before anything loads, naming the field, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.config import RecipeError, apply_overrides, load_recipe, recipe_from_dict

BASE = {"teacher": {"model": "t"}, "student": {"model": "s"}, "data": {"train": "x.csv"}}


def with_(**sections):
    d = {k: dict(v) for k, v in BASE.items()}
    d.update(sections)
    return d


@pytest.mark.parametrize(
    "recipe, needle",
    [
        (with_(train={"epochs": -1}), "train.epochs: -1"),
        (with_(train={"epoch": 3}), "unknown field train.epoch"),
        (with_(train={"batch_size": "big"}), "train.batch_size: expected an integer, got 'big'"),
        (with_(bogus={}), "unknown field bogus"),
        (with_(student={"from_teacher": True}), "student.layers"),
        (with_(student={"from_teacher": True, "layers": [0, 0]}), "list each layer once"),
        (with_(student={"model": "s", "layers": [1, 1]}), "list each kept layer once"),
        (with_(student={}), "student.model"),
        (with_(losses=[{"name": "kdd"}]), "unknown loss 'kdd'; valid:"),
        (with_(losses=[{"name": "kd", "temprature": 2}]), "losses[0].temprature: loss 'kd' has no parameter"),
        (with_(losses=[{"name": "kd", "temperature": 0}]), "temperature: 0 is not allowed"),
        (with_(losses=[{"name": "kd", "divergence": "kl"}]),
         "divergence: 'kl' is not allowed; choose one of"),
        (with_(losses=[{"name": "kd", "reduction": "mean"}]), "reduction: 'mean' is not allowed"),
        (with_(losses=[]), "at least one loss"),
        (with_(store={"topk": -2}), "store.topk: -2"),
        (with_(store={"capture": ["logits", "attn"]}), "store.capture: 'attn'"),
        (with_(store={"dtype": "int8"}), "store.dtype"),
        (with_(data={"source": "packaged"}), "data.name"),
        (with_(data={"source": "web", "train": "x"}), "data.source: 'web' is not allowed"),
        (with_(train={"fp16": True, "bf16": True}), "not both"),
        ({"teacher": {"model": "t"}}, "missing section 'student'"),
        (with_(task="causal-lm", store={"topk": 32}, data={"train": "x.txt", "augment": {"variants": 2}}),
         "data.augment: 'set' is not allowed; word-replaced variants are made for task: "
         "text-classification or sentence-embedding, not causal-lm"),
    ],
)
def test_bad_recipes_name_field_value_and_fix(recipe, needle):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(recipe)
    assert needle in str(err.value)


def test_loss_params_written_beside_name_are_collected():
    r = recipe_from_dict(with_(losses=[{"name": "kd", "weight": 0.3, "temperature": 4}, "ce"]))
    assert r.losses[0].params == {"temperature": 4} and r.losses[0].weight == 0.3
    assert r.losses[1].name == "ce" and not r.label_free


def test_label_free_when_no_loss_reads_labels():
    assert recipe_from_dict(with_(losses=[{"name": "kd", "divergence": "symmetric_kl"}])).label_free


def test_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    r = load_recipe(path, ["--train.epochs", "3", "--losses.1.weight=0.2", "--data.max_length", "16"])
    assert (r.train.epochs == 3.0 and r.data.max_length == 16 and r.losses[1].weight == 0.2
            and r.losses[0].name == "kd")
    with pytest.raises(RecipeError, match="has no value"):
        apply_overrides(BASE, ["--train.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_round_trip_yaml():
    r = recipe_from_dict(with_(losses=[{"name": "kd", "temperature": 3}]))
    again = recipe_from_dict(yaml.safe_load(r.to_yaml()))
    assert again == r


def test_every_shipped_recipe_loads():
    recipes = sorted((Path(__file__).parents[2] / "src" / "distill" / "recipes").glob("*.yaml"))
    assert recipes, "no shipped recipes found"
    for path in recipes:
        load_recipe(path)


def test_every_field_has_a_docstring():
    import dataclasses

    from distill import config
    from distill._dataclass_io import field_docs

    for cls in (config.Recipe, config.TeacherConfig, config.StudentConfig, config.DataConfig,
                config.LossConfig, config.StoreConfig, config.TrainConfig, config.EvalConfig,
                config.ExportConfig, config.FinetuneConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
