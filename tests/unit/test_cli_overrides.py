"""Every field `distill run --help` lists is accepted on the command line, in both override forms
(``--FIELD VALUE`` and ``FIELD=VALUE``), and anything else is refused before a recipe is read."""

from __future__ import annotations

import re

import pytest
import yaml

from distill.cli.main import bad_overrides, main, recipe_fields, recipe_reference
from distill.config import load_recipe

LISTED = re.findall(r"^\s+--([\w.]+) \(", recipe_reference(), flags=re.M)


def test_the_help_lists_top_level_and_nested_fields():
    assert {"output_dir", "task", "train.epochs", "teacher.model", "eval.latency_repeats"} <= set(LISTED)
    assert len(LISTED) > 50


@pytest.mark.parametrize("field", LISTED)
def test_every_listed_field_is_accepted_in_both_forms(field):
    assert bad_overrides([f"--{field}", "1"]) == []
    assert bad_overrides([f"--{field}=1"]) == []
    assert bad_overrides([f"{field}=1"]) == []


@pytest.mark.parametrize("field", recipe_fields())
def test_every_top_level_field_is_an_override_root(field):
    assert bad_overrides([f"--{field}", "x"]) == [] and bad_overrides([f"{field}=x"]) == []


def test_values_that_look_like_flags_are_values():
    assert bad_overrides(["--train.seed", "-1", "--output_dir", "--weird-dir"]) == []


def test_unknown_flags_and_stray_words_are_refused():
    assert (bad_overrides(["--foo", "1", "bar", "-x", "nosuch.field=3"])
            == ["--foo", "bar", "-x", "nosuch.field=3"])


def _recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"model": "t"}, "student": {"model": "s"},
                                    "data": {"train": "x.csv"}}))
    return path


@pytest.mark.parametrize("form", [["--output_dir", "runs/x"], ["output_dir=runs/x"], ["--output_dir=runs/x"]])
def test_top_level_overrides_reach_the_recipe(tmp_path, form):
    assert load_recipe(_recipe(tmp_path), form).output_dir == "runs/x"
    recipe = load_recipe(_recipe(tmp_path), ["--task", "sentence-embedding"])
    assert recipe.task == "sentence-embedding"


def test_cli_refuses_an_unknown_flag_with_the_fields(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(_recipe(tmp_path)), "--epochs", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognised arguments: --epochs" in err and "top-level fields: teacher, student" in err


def test_cli_names_a_bad_nested_field(tmp_path, capsys):
    assert main(["cache", str(_recipe(tmp_path)), "--info", "--train.epoch", "3"]) == 2
    assert "epoch" in capsys.readouterr().err
