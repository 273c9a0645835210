"""The teacher.blackbox recipe section: validated at load, with the fix in every message."""

from __future__ import annotations

import pytest

from distill.config import RecipeError, recipe_from_dict

ENV = "DISTILL_TEST_BLACKBOX_KEY"


def recipe(blackbox=None, **teacher):
    if blackbox is not None:
        teacher["blackbox"] = blackbox
    return {"teacher": teacher, "student": {"model": "some/student"}, "data": {"train": "train.csv"}}


def test_a_valid_section_loads(monkeypatch):
    monkeypatch.setenv(ENV, "x")
    r = recipe_from_dict(recipe({"base_url": "https://api.example.com/v1", "model": "m", "api_key_env": ENV,
                                 "label_synonyms": {"positive": ["pos"]},
                                 "prices": {"input": 0.1, "output": 0.4},
                                 "max_cost": 2, "soft_labels": True}))
    bb = r.teacher.blackbox
    assert r.teacher.model == "" and bb.max_cost == 2.0 and bb.label_synonyms == {"positive": ["pos"]}
    assert r.to_dict()["teacher"]["blackbox"]["api_key_env"] == ENV
    assert (recipe_from_dict(recipe({"local_model": "path/to/lm"})).teacher.blackbox.local_model
            == "path/to/lm")


@pytest.mark.parametrize("section, match", [
    ({"base_url": "api.example.com", "model": "m"}, r"base_url: 'api.example.com'.*http\(s\) URL"),
    ({"base_url": "ftp://h/v1", "model": "m"}, "base_url"),
    ({"base_url": "http://h/v1"}, "model: '' .*name the model"),
    ({"base_url": "http://h/v1", "model": "m", "local_model": "lm"}, "not both"),
    ({"local_model": "lm", "prompt": "no input here"}, r"no \{text\} placeholder"),
    ({"local_model": "lm", "prompt": "{text} {label}"}, r"unknown placeholder \{label\}"),
    ({"local_model": "lm", "max_cost": 1.0}, "needs teacher.blackbox.prices"),
    ({"local_model": "lm", "prices": {"per_call": 1}}, "input"),
    ({"local_model": "lm", "top_logprobs": 50}, "1 to 20"),
    ({"local_model": "lm", "label_synonyms": {"positive": "pos"}}, "list of non-empty words"),
])
def test_bad_values_fail_with_the_fix(section, match):
    with pytest.raises(RecipeError, match=match):
        recipe_from_dict(recipe(section))


def test_missing_env_var_is_named_with_the_fix(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(RecipeError, match=f"{ENV} is not set; run `export {ENV}=...`"):
        recipe_from_dict(recipe({"base_url": "http://h/v1", "model": "m", "api_key_env": ENV}))


def test_a_key_given_as_the_env_name_is_never_echoed():
    key = "sk-proj-abc123-secret-value"
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(recipe({"base_url": "http://h/v1", "model": "m", "api_key_env": key}))
    assert "name* of an environment variable" in str(info.value) and key not in str(info.value)


def test_teacher_needs_a_model_or_a_blackbox_not_both():
    with pytest.raises(RecipeError, match="teacher.blackbox section"):
        recipe_from_dict(recipe(model=""))
    with pytest.raises(RecipeError, match="leave teacher.model empty"):
        recipe_from_dict(recipe(model="m", blackbox={"local_model": "lm"}))
    with pytest.raises(RecipeError, match="cannot be fine-tuned"):
        recipe_from_dict(recipe(blackbox={"local_model": "lm"}, finetune={"epochs": 1}))
    bad = recipe({"local_model": "lm"})
    bad["student"] = {"from_teacher": True, "layers": [0]}
    with pytest.raises(RecipeError, match="no layers to inherit"):
        recipe_from_dict(bad)


def test_cli_lists_the_label_command_and_fields():
    from distill.cli.main import build_parser, recipe_reference

    assert "label" in build_parser().format_help()
    ref = recipe_reference()
    assert "--teacher.blackbox.api_key_env" in ref and "never the key itself" in ref
