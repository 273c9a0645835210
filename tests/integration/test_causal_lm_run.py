"""End to end through the CLI on tiny random Llama models: top-k store + DDK, then sequence-level KD +
on-policy (online teacher); perplexities, samples, export loadable by pipeline('text-generation')."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

_spec = importlib.util.spec_from_file_location(
    "lm_helpers", Path(__file__).parents[1] / "unit" / "causal_lm" / "lm_helpers.py")
lm_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lm_helpers)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_run")
    tok = lm_helpers.make_lm_tokenizer(d / "tok")
    teacher = lm_helpers.make_llama(d / "teacher", tok, layers=4)
    data = d / "corpus.csv"
    pd.DataFrame(lm_helpers.make_corpus(80)).to_csv(data, index=False)
    return d, teacher, data


def _recipe(d, teacher, data, name, **causal_lm):
    return {
        "task": "causal-lm", "output_dir": str(d / name),
        "teacher": {"model": str(teacher)},
        "student": {"from_teacher": True, "layers": [0, 3]},
        "data": {"train": str(data), "test_fraction": 0.2, "validation_fraction": 0.15},
        "losses": [{"name": "kd", "weight": 1.0, "temperature": 1.0}, {"name": "ce", "weight": 0.5}],
        "causal_lm": {"chunk_length": 16, "domain_column": "domain", "sample_prompts": ["the king"],
                      "sample_tokens": 5, **causal_lm},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 2, "save_steps": 50,
                  "eval_batch_size": 16, "warmup_ratio": 0.0},
        "store": {"dir": str(d / "stores"), "topk": 8},
    }


def test_store_ddk_run_through_the_cli(setup):
    from distill.cli.main import main

    d, teacher, data = setup
    path = d / "store_ddk.yaml"
    path.write_text(yaml.safe_dump(_recipe(d, teacher, data, "run_ddk", ddk={"interval": 2, "alpha": 0.5,
                                                                          "eval_chunks": 4})))
    assert main(["run", str(path)]) in (0, None)
    report = json.loads((d / "run_ddk" / "report.json").read_text())
    models = report["models"]
    assert set(models) == {"teacher", "student_kd", "student_no_kd"}
    for m in models.values():
        assert m["perplexity"] > 1 and set(m["perplexity_by_domain"]) == {"film", "play"}
        assert m["tokens_per_second"] > 0
    assert report["store"]["bytes_per_token"] > 0 and report["store"]["spec"]["topk"] == 8
    hist = report["ddk"]["history"]
    assert len(hist) >= 2 and all(abs(sum(h["weights"]) - 1) < 1e-9 for h in hist)
    assert all(min(h["weights"]) >= 0.25 - 1e-9 for h in hist)  # floor (1 - alpha) / N
    # same budget for the baseline
    assert report["training"]["student_no_kd"]["steps"] == report["training"]["student"]["steps"]
    assert report["samples"]["student_kd"][0]["prompt"] == "the king"
    html = (d / "run_ddk" / "report.html").read_text()
    assert "DDK domain weights" in html and "Sample generations" in html
    from transformers import pipeline

    gen = pipeline("text-generation", model=str(d / "run_ddk" / "student"), device="cpu")
    assert isinstance(gen("the king", max_new_tokens=3, do_sample=False)[0]["generated_text"], str)


def test_cache_and_cache_info_through_the_cli(setup, capsys):
    from distill.cli.main import main

    d, teacher, data = setup
    path = d / "cache.yaml"
    recipe = _recipe(d, teacher, data, "run_cache")
    recipe["store"]["dir"] = str(d / "cache_stores")
    path.write_text(yaml.safe_dump(recipe))
    assert main(["cache", str(path), "--info"]) == 0
    assert "no store yet" in capsys.readouterr().out
    assert main(["cache", str(path)]) == 0
    built = capsys.readouterr().out
    assert "causal-lm" in built and "running the teacher" in built
    assert main(["cache", str(path), "--info"]) == 0
    assert "no store yet" not in capsys.readouterr().out
    assert not (d / "run_cache" / "student").exists()  # caching trains nothing


def test_sequence_kd_and_on_policy_online(setup):
    from distill.pipeline import run

    d, teacher, data = setup
    recipe = _recipe(d, teacher, data, "run_gkd",
                     sequence_kd={"prompt_tokens": 4, "max_new_tokens": 6},
                     on_policy={"lmbda": 0.5, "max_new_tokens": 6, "prompt_tokens": 4})
    recipe["store"] = {"enabled": False}
    recipe["losses"] = [{"name": "kd", "divergence": "jsd", "beta": 0.5, "temperature": 1.0}]
    recipe["eval"] = {"baseline": False}
    recipe["train"]["epochs"] = 1
    path = d / "gkd.yaml"
    path.write_text(yaml.safe_dump(recipe))
    report = run(str(path))
    tr = report["training"]["student"]
    assert tr["on_policy_batches"] > 0
    assert report["sequence_kd"]["rows"] > 0 and Path(report["sequence_kd"]["file"]).exists()
    assert report["data"]["kd_rows"] > report["data"]["train"]
    # generated once: a second run reads the continuations from disk
    from distill.teachers.generate import teacher_continuations  # noqa: F401
    assert report["models"]["student_kd"]["perplexity"] > 1


def test_bad_causal_lm_recipes_fail_early(setup):
    from distill.config import RecipeError, recipe_from_dict

    d, teacher, data = setup
    r = _recipe(d, teacher, data, "bad", on_policy={"lmbda": 0.5})
    with pytest.raises(RecipeError, match="store.enabled"):
        recipe_from_dict(r)
    r = _recipe(d, teacher, data, "bad")
    r["store"] = {"topk": 0}
    with pytest.raises(RecipeError, match="store.topk"):
        recipe_from_dict(r)
    r = _recipe(d, teacher, data, "bad", ddk={"interval": 2})
    r["causal_lm"]["domain_column"] = None
    with pytest.raises(RecipeError, match="domain_column"):
        recipe_from_dict(r)
