"""End to end through the CLI on tiny random Llama models: top-k store + DDK, then sequence-level KD +
on-policy (online teacher); perplexities, samples, export loadable by pipeline('text-generation')."""

from __future__ import annotations

import importlib.util
import json
import re
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
        "select": {"enabled": False},  # the losses as written (the selection has its own test below)
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
    _check_model_card(d / "run_ddk", report, teacher, data)


def _check_model_card(out, report, teacher, data):
    """The student's README.md: teacher, student layers and parameters, data and domains, losses, the
    perplexity table (teacher / distilled / no KD, per domain), tokens/s, and loading code."""
    card = (out / "student" / "README.md").read_text()
    models = report["models"]
    assert "pipeline_tag: text-generation" in card
    assert f"`{teacher}`" in card and f"{models['teacher']['parameters']:,} parameters" in card
    assert "2 layers" in card and "layers [0, 3] of the teacher" in card
    assert f"{models['student_kd']['parameters']:,} parameters" in card
    assert f"`{data}`" in card and "`film`" in card and "`play`" in card
    assert "`kd` (weight 1.0" in card and "`ce` (weight 0.5" in card and "Hinton" in card
    table = card.split("## Held-out perplexity")[1].split("##")[0]
    assert "| model | perplexity | bits/byte | ppl film | ppl play | tokens/s | parameters |" in table
    for role, title in (("teacher", "teacher"), ("student_kd", "distilled student"),
                        ("student_no_kd", "same student, no KD")):
        m = models[role]
        row = next(line for line in table.splitlines() if line.startswith(f"| {title} |"))
        assert f"| {m['perplexity']:,.2f} | {m['bits_per_byte']:,.4f} |" in row
        assert (f"| {m['perplexity_by_domain']['film']:,.2f} | "
                f"{m['perplexity_by_domain']['play']:,.2f} |") in row
        assert f"| {m['tokens_per_second']:,.0f} |" in row
    assert "AutoModelForCausalLM.from_pretrained(" in card and "pipeline('text-generation'" in card
    # the snippet works: run it on this folder
    snippet = card.split("```python")[1].split("```")[0].replace("PATH_TO_THIS_FOLDER", str(out / "student"))
    exec(snippet.replace("max_new_tokens=32", "max_new_tokens=3, do_sample=False"), {})  # noqa: S102


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


def test_head_codec_store_through_the_cli(setup, capsys):
    """store.codec head8: the teacher's final hidden states are coded, every logit is rebuilt when read; the
    fidelity is measured against the teacher once and shown by cache --info."""
    from distill.cli.main import main

    d, teacher, data = setup
    recipe = _recipe(d, teacher, data, "run_codec")
    recipe["store"] = {"dir": str(d / "codec_stores"), "topk": 0, "codec": "head8"}
    recipe["train"]["epochs"] = 1
    path = d / "codec.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) in (0, None)
    report = json.loads((d / "run_codec" / "report.json").read_text())
    fid = report["store_fidelity"]
    assert fid["tokens"] > 0 and fid["kl_error"] < 0.01 and fid["top1_agreement"] > 0.9
    assert report["store"]["spec"]["codec"] == "head8"
    # the per-token cost excludes the codec file (the teacher's output layer, paid once)
    assert report["store"]["bytes_per_token"] < 100
    html = (d / "run_codec" / "report.html").read_text()
    assert "Teacher store" in html and "codec head8" in html and "of the teacher&#x27;s entropy" in html
    capsys.readouterr()
    assert main(["cache", str(path), "--info"]) == 0
    out = capsys.readouterr().out
    assert "fidelity" in out and "8 bits each on average" in out and "once for the codec" in out
    assert re.search(r"8 rows, rows \d+-\d+", out)  # which rows were compared
    # 69 training rows: the last 8 overlap the 64 calibration rows, and the report says so
    assert "inside the codec's calibration rows" in out


def test_cache_info_never_generates(setup, capsys, monkeypatch):
    """With sequence-level KD the store key covers the teacher's continuations: --info says they are not
    generated yet instead of generating them, and once `distill cache` made them it reads them from disk."""
    from distill.cli.main import main
    from distill.teachers import generate
    from distill.teachers.sources import PretrainedTeacher

    def refuse(*args, **kwargs):
        raise AssertionError("cache --info ran the teacher")

    d, teacher, data = setup
    path = d / "cache_skd.yaml"
    recipe = _recipe(d, teacher, data, "run_cache_skd", sequence_kd={"prompt_tokens": 4, "max_new_tokens": 4})
    recipe["store"]["dir"] = str(d / "cache_skd_stores")
    path.write_text(yaml.safe_dump(recipe))
    with monkeypatch.context() as m:
        m.setattr(generate, "generate_ids", refuse)
        m.setattr(PretrainedTeacher, "load", refuse)
        assert main(["cache", str(path), "--info"]) == 0
    out = capsys.readouterr().out
    assert "not been generated yet" in out and "teacher-generations" in out
    assert not (d / "cache_skd_stores" / "teacher-generations").exists()
    assert main(["cache", str(path)]) == 0  # generates the continuations and builds the store
    assert "writes continuations" in capsys.readouterr().out
    with monkeypatch.context() as m:
        m.setattr(generate, "generate_ids", refuse)
        m.setattr(PretrainedTeacher, "load", refuse)
        assert main(["cache", str(path), "--info"]) == 0
    out = capsys.readouterr().out
    assert "teacher continuations found" in out
    assert "no store yet" not in out and "not been generated" not in out


def test_sequence_kd_and_on_policy_online(setup):
    from distill.runner import run

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
    card = (d / "run_gkd" / "student" / "README.md").read_text()
    assert "sequence-level KD:" in card and "on-policy (GKD)" in card and "no (online teacher)" in card
    assert "same student, no KD" not in card  # eval.baseline: false, so no no-KD row


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


def test_select_chooses_the_kd_weight_on_validation_perplexity(setup, capsys):
    """``select`` on a causal LM: labels-free candidates (the text alone, kd 0.5 and 0.9 at T=1) each train a
    share of the budget from the store, the lowest validation perplexity is trained in full and shown in the
    report, the page and the card; bits per byte and the verdict come with every run."""
    from distill.cli.main import main
    from distill.evaluation.perplexity import perplexity

    d, teacher, data = setup
    recipe = _recipe(d, teacher, data, "run_select")
    recipe["losses"] = [{"name": "kd", "weight": 0.5, "temperature": 1.0}, {"name": "ce", "weight": 0.5}]
    recipe["select"] = {"fraction": 0.5}
    recipe["causal_lm"]["curve_steps"] = [1, 2]
    path = d / "select.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) in (0, None)
    out = capsys.readouterr().out
    report = json.loads((d / "run_select" / "report.json").read_text())
    sel = report["select"]
    assert sel["metric"] == "perplexity" and sel["lower_is_better"] is True
    assert [(c["kd_weight"], c["temperature"]) for c in sel["candidates"]] == [(0.0, None), (0.5, 1.0),
                                                                                (0.9, 1.0)]
    best = min(sel["candidates"], key=lambda c: c["perplexity"])
    assert sel["chosen"] == {"kd_weight": best["kd_weight"], "temperature": best["temperature"]}
    total = report["training"]["student"]["steps"]
    assert all(c["steps"] == max(1, round(0.5 * total)) for c in sel["candidates"])
    # the candidates' validation perplexity is the one perplexity() gives their saved models
    from distill.config import recipe_from_dict
    from distill.tasks.causal_lm import CausalLMTask, load_causal_lm

    task = CausalLMTask(recipe_from_dict(recipe), log=lambda *_: None)
    task.resolve_teacher()
    task.load_rows()
    cand = sel["candidates"][1]
    from distill.stages import process_state

    # scored where the run scored it: the trained candidate was on the training device (a GPU where there is
    # one), and a GPU's float32 logits differ from the CPU's by ~1e-7 relative
    device = process_state().device
    model = load_causal_lm(str(d / "run_select" / "select" / "w0.5-T1")).to(device)
    again = perplexity(model, task.val_rows, task.pad_id, task.domains, 16, task.vocab_size)["perplexity"]
    assert again == pytest.approx(cand["perplexity"], rel=1e-9 if device.type == "cpu" else 1e-6)
    # the chosen losses trained the shipped student
    chosen = sel["chosen_losses"]
    assert [c["name"] for c in chosen] == (["ce"] if best["kd_weight"] == 0 else ["kd", "ce"])
    for role in ("teacher", "student_kd", "student_no_kd"):
        m = report["models"][role]
        assert m["bits_per_byte"] > 0 and set(m["bits_per_byte_by_domain"]) == {"film", "play"}
        # one tokenizer: bits per byte is the per-token NLL in bits times tokens / bytes
        import math

        assert m["bits_per_byte"] == pytest.approx(
            math.log2(m["perplexity"]) * m["eval_tokens"] / m["eval_bytes"], rel=1e-9)
    cmp = report["significance"]["student_kd_vs_student_no_kd"]
    assert cmp["bits_per_byte_difference"] == pytest.approx(
        report["models"]["student_kd"]["bits_per_byte"] - report["models"]["student_no_kd"]["bits_per_byte"],
        rel=1e-6, abs=1e-12)
    assert report["verdict"][0].startswith("Held-out perplexity") and report["verdict"][0] in out
    assert "Chosen on the validation chunks' perplexity among 3 candidates" in report["verdict"][-1]
    # the learning curves: both students scored on the held-out rows at steps 1 and 2, compared pairwise
    curve = report["curve"]
    assert [c["step"] for c in curve] == [1, 2]
    kd_curve = report["training"]["student"]["curve"]
    assert curve[1]["kd_perplexity"] == kd_curve[1]["perplexity"]
    assert curve[1]["no_kd_perplexity"] == report["training"]["student_no_kd"]["curve"][1]["perplexity"]
    assert all(0 <= c["p"] <= 1 and c["perplexity_ratio"] > 0 for c in curve)
    assert "Held-out perplexity while training" in report["verdict"][-2]
    html = (d / "run_select" / "report.html").read_text()
    assert "Distillation settings chosen on the validation split" in html and "validation perplexity" in html
    assert "Learning curve" in html and "held-out perplexity while training" in html
    card = (d / "run_select" / "student" / "README.md").read_text()
    assert "chosen on the validation split among 3 candidates" in card


def test_two_language_model_teachers_are_mixed_token_by_token(setup, capsys):
    """Two teachers on one tokenizer: each runs once into its own top-k store; the student reads their
    per-token mixture; the teacher row is the mixture's perplexity, the teachers section each one's; a rule
    change trains the student again and runs no teacher."""
    from distill.cli.main import main

    d, teacher, data = setup
    tok = lm_helpers.make_lm_tokenizer(d / "tok_b")
    other = lm_helpers.make_llama(d / "teacher_b", tok, layers=2, hidden=24, seed=5)
    recipe = _recipe(d, teacher, data, "run_multi")
    recipe.pop("teacher")
    recipe["teachers"] = [{"model": str(teacher), "name": "deep"}, {"model": str(other), "name": "wide"}]
    path = d / "multi.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) in (0, None)
    report = json.loads((d / "run_multi" / "report.json").read_text())
    section = report["teachers"]
    assert [m["name"] for m in section["members"]] == ["deep", "wide"]
    assert [round(m["mean_weight"], 6) for m in section["members"]] == [0.5, 0.5]
    mixture = report["models"]["teacher"]["perplexity"]
    alone = [m["perplexity"] for m in section["members"]]
    # a 50/50 mixture's log-likelihood is at least the mean of the members' (Jensen): its perplexity is at
    # most the geometric mean of theirs
    assert mixture <= (alone[0] * alone[1]) ** 0.5 + 1e-6
    assert report["models"]["teacher"]["teachers"] == 2
    html = (d / "run_multi" / "report.html").read_text()
    assert "<h2>Teachers</h2>" in html and "perplexity" in html
    capsys.readouterr()
    assert main(["run", str(path), "--combine", "entropy"]) in (0, None)
    out = capsys.readouterr().out
    assert "running the teacher once" not in out  # both stores reused
    assert "student: already trained" not in out
    again = json.loads((d / "run_multi" / "report.json").read_text())
    assert again["teachers"]["rule"] == "entropy"
    assert again["models"]["teacher"]["perplexity"] != pytest.approx(mixture)


def test_language_model_teachers_need_one_tokenizer(setup):
    from distill._dataclass_io import RecipeError
    from distill.config import recipe_from_dict
    from distill.tasks import task_for

    d, teacher, data = setup
    tok = lm_helpers.make_lm_tokenizer(d / "tok_c", extra=("zebra", "quokka"))
    other = lm_helpers.make_llama(d / "teacher_c", tok, layers=2)
    recipe = _recipe(d, teacher, data, "run_multi_bad")
    recipe.pop("teacher")
    recipe["teachers"] = [{"model": str(teacher)}, {"model": str(other), "name": "c"}]
    with pytest.raises(RecipeError, match="another tokenizer"):
        task_for(recipe_from_dict(recipe))
    recipe["teachers"][1] = {"model": str(teacher), "name": "again"}
    recipe["causal_lm"]["sequence_kd"] = {"max_new_tokens": 4}
    with pytest.raises(RecipeError, match="sequence_kd"):
        task_for(recipe_from_dict(recipe))
