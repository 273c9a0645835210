"""``distill methods``: the table lists every registered loss; each loss's snippet is a recipe that loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.cli.main import main
from distill.cli.methods import loss_defaults, method_detail, methods_table, yaml_snippet
from distill.config import load_recipe
from distill.losses import LOSSES, check_params

DEMO = Path(__file__).parents[2] / "src" / "distill" / "recipes" / "demo_sentiment.yaml"


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_snippet_passes_check_params_and_loads_as_a_recipe(name: str, tmp_path: Path) -> None:
    entry = yaml.safe_load(yaml_snippet(name))["losses"][0]
    assert entry["name"] == name and entry["weight"] == 1.0
    params = {k: v for k, v in entry.items() if k not in ("name", "weight")}
    assert params == loss_defaults(name)
    check_params(name, params, "losses[0]")
    recipe = yaml.safe_load(DEMO.read_text())
    recipe["losses"] = yaml.safe_load(yaml_snippet(name))["losses"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path)
    assert loaded.losses[0].name == name and loaded.losses[0].params == params


def test_table_lists_every_loss_with_its_signal_defaults_and_paper(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert out == methods_table()
    blocks = {block.split()[0]: block for block in out.split("\n\n")[:-1]}
    assert list(blocks) == list(LOSSES)
    for name, cls in LOSSES.items():
        first = blocks[name].splitlines()[0]
        assert all(need in first for need in cls.teacher_needs), first
        assert "formula:" in blocks[name] and "defaults:" in blocks[name]
        assert cls.citation.split()[0] in blocks[name]
    assert "relation_heads=48" in out and "[teacher qkv]" in out


def test_one_method_shows_docstring_and_snippet(capsys) -> None:
    assert main(["methods", "minilm_v2"]) == 0
    out = capsys.readouterr().out
    assert out == method_detail("minilm_v2")
    assert "re-split" in out and "Wang et al." in out and out.rstrip().endswith(
        "- {name: minilm_v2, weight: 1.0, relation_heads: 48, relations: [qq, kk, vv], teacher_layer: last, "
        "student_layer: last}")


def test_unknown_method_is_an_error_listing_the_valid_ones(capsys) -> None:
    assert main(["methods", "minilm3"]) == 2
    err = capsys.readouterr().err
    assert "unknown loss 'minilm3'" in err and "minilm_v2" in err
