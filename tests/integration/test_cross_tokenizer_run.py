"""A causal-LM run whose student has another tokenizer than the teacher (word-level teacher, byte-pair
student, tiny random Llamas): through the CLI with the alm loss, the teacher's one-log-probability-per-token
store, bits per byte for all three models, a rerun that reuses the store, and the named refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from distill._dataclass_io import RecipeError

_spec = importlib.util.spec_from_file_location(
    "lm_helpers", Path(__file__).parents[1] / "unit" / "causal_lm" / "lm_helpers.py")
lm_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lm_helpers)


def make_bpe_tokenizer(path, texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=60,
                                                        special_tokens=["<pad>", "<unk>", "<s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>")
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    return tok


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cross_run")
    rows = lm_helpers.make_corpus(80)
    t_tok = lm_helpers.make_lm_tokenizer(d / "t_tok")
    teacher = lm_helpers.make_llama(d / "teacher", t_tok, layers=4)
    s_tok = make_bpe_tokenizer(d / "s_tok", [r["text"] for r in rows])
    student = lm_helpers.make_llama(d / "student", s_tok, layers=2, seed=1)
    data = d / "corpus.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    return d, teacher, student, data


def _recipe(d, teacher, student, data, name, losses=None, **causal_lm):
    return {
        "task": "causal-lm", "output_dir": str(d / name),
        "teacher": {"model": str(teacher)}, "student": {"model": str(student)},
        "data": {"train": str(data), "test_fraction": 0.2, "validation_fraction": 0.1},
        "losses": losses or [{"name": "alm", "weight": 1.0}, {"name": "ce", "weight": 0.5}],
        "causal_lm": {"chunk_length": 24, "domain_column": "domain", "sample_prompts": ["the king"],
                      "sample_tokens": 4, **causal_lm},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 2, "save_steps": 50,
                  "eval_batch_size": 16, "warmup_ratio": 0.0},
        "store": {"dir": str(d / "stores")},
    }


def test_cross_tokenizer_run_through_the_cli(setup, capsys):
    from transformers import AutoTokenizer

    from distill.cli.main import main

    d, teacher, student, data = setup
    path = d / "cross.yaml"
    path.write_text(yaml.safe_dump(_recipe(d, teacher, student, data, "run")))
    assert main(["run", str(path)]) in (0, None)
    first = capsys.readouterr().out + capsys.readouterr().err
    report = json.loads((d / "run" / "report.json").read_text())
    models = report["models"]
    assert set(models) == {"teacher", "student_kd", "student_no_kd"}
    for m in models.values():
        assert 0 < m["bits_per_byte"] < 20 and m["perplexity"] > 1
    ct = report["cross_tokenizer"]
    assert ct["aligned_groups"] > 0 and ct["student_tokens"] != ct["teacher_tokens"]
    assert ct["loss"] == ["alm"] and set(ct["bits_per_byte"]) == set(models)
    assert report["store"]["kind"] == "token_logprobs" and report["store"]["usable_groups"] > 0
    assert "teacher log-probabilities: shard" in first
    assert any("bits per byte do" in line for line in report["verdict"])
    # the student keeps its own tokenizer and loads with from_pretrained
    saved = AutoTokenizer.from_pretrained(str(d / "run" / "student"))
    assert saved.get_vocab() == AutoTokenizer.from_pretrained(str(student)).get_vocab()
    # the distilled student trained with the alm term (logged), the baseline without it
    history = report["training"]["student"]
    assert history["steps"] > 0

    # a second run with another output folder reads the teacher from the store: the teacher never runs
    path2 = d / "cross2.yaml"
    path2.write_text(yaml.safe_dump(_recipe(d, teacher, student, data, "run2")))
    assert main(["run", str(path2)]) in (0, None)
    second = capsys.readouterr().out
    assert "teacher log-probabilities: shard" not in second
    report2 = json.loads((d / "run2" / "report.json").read_text())
    assert report2["store"]["key"] == report["store"]["key"]
    assert report2["models"]["student_kd"]["bits_per_byte"] == pytest.approx(
        models["student_kd"]["bits_per_byte"], rel=1e-5)


def test_token_level_kd_across_tokenizers_names_alm(setup):
    from distill.config import recipe_from_dict
    from distill.tasks import task_for

    d, teacher, student, data = setup
    raw = _recipe(d, teacher, student, data, "kd", losses=[{"name": "kd"}, {"name": "ce"}])
    raw["store"]["topk"] = 8
    with pytest.raises(RecipeError, match="alm"):
        task_for(recipe_from_dict(raw))


@pytest.mark.parametrize(("section", "value", "field"), [
    ("sequence_kd", {"max_new_tokens": 4}, "causal_lm.sequence_kd"),
    ("ddk", {"interval": 2}, "causal_lm.ddk"),
])
def test_cross_tokenizer_refuses_what_it_does_not_do_yet(setup, section, value, field):
    from distill.config import recipe_from_dict
    from distill.tasks import task_for

    d, teacher, student, data = setup
    raw = _recipe(d, teacher, student, data, "x", **{section: value})
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        task_for(recipe_from_dict(raw))


def test_cross_tokenizer_refuses_a_position_by_position_loss(setup):
    from distill.config import recipe_from_dict
    from distill.tasks import task_for

    d, teacher, student, data = setup
    raw = _recipe(d, teacher, student, data, "x", losses=[{"name": "alm"}, {"name": "kd"}])
    with pytest.raises(RecipeError, match=r"losses\[1\]\.name: 'kd'"):
        task_for(recipe_from_dict(raw))


def test_cache_and_cache_info_for_a_cross_tokenizer_recipe(setup, capsys):
    from distill.cli.main import main

    d, teacher, student, data = setup
    raw = _recipe(d, teacher, student, data, "cache_only")
    raw["data"]["test_fraction"] = 0.25  # other windows than the run above: a store of its own
    path = d / "cache.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["cache", str(path), "--info"]) == 0
    assert "no store yet" in capsys.readouterr().out
    assert main(["cache", str(path)]) == 0
    built = capsys.readouterr().out
    assert "token_logprobs" in built and "usable_groups" in built
    assert main(["cache", str(path), "--info"]) == 0
    info = capsys.readouterr().out
    assert "token_logprobs" in info and "no store yet" not in info


def test_hybrid_kl_run_reads_the_teachers_top_k_on_the_shared_vocabulary(setup):
    from distill.cli.main import main

    d, teacher, student, data = setup
    raw = _recipe(d, teacher, student, data, "hybrid",
                  losses=[{"name": "hybrid_kl", "weight": 1.0}, {"name": "ce", "weight": 0.5}])
    raw["store"]["topk"] = 4
    raw["train"]["epochs"] = 1
    path = d / "hybrid.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) in (0, None)
    report = json.loads((d / "hybrid" / "report.json").read_text())
    store = report["store"]
    # word-level teacher vs BPE student: whole words the BPE learnt as one token are shared
    assert store["topk"] == 4 and store["shared_student_tokens"] > 0
    assert report["cross_tokenizer"]["loss"] == ["hybrid_kl"]
    assert all(0 < m["bits_per_byte"] < 20 for m in report["models"].values())


def test_hybrid_kl_without_a_top_k_store_names_store_topk(setup):
    from distill.config import recipe_from_dict
    from distill.tasks import task_for

    d, teacher, student, data = setup
    raw = _recipe(d, teacher, student, data, "x", losses=[{"name": "hybrid_kl"}, {"name": "ce"}])
    with pytest.raises(RecipeError, match=r"store\.topk: 0"):
        task_for(recipe_from_dict(raw))
