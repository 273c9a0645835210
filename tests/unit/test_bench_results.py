"""The benchmarks' shared helpers: the machine-readable results file and the multi-seed paired test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"


@pytest.fixture
def common(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("_common", None)
    import _common

    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path / "results")
    return _common


def _report(a_only: int, b_only: int, p: float, diff: float) -> dict:
    return {"significance": {"student_kd_vs_student_no_kd": {
        "discordant": {"a_only": a_only, "b_only": b_only}, "p": p, "difference": diff}}}


def test_results_json_has_every_field_the_issue_names(common):
    path = common.write_json("vision", [0, 1, 2], [{"model": "student_kd", "seed": 0, "accuracy": 0.9}],
                             {"kd_accuracy_mean": 0.9})
    data = json.loads(path.read_text())
    assert path.name == "vision.json"
    assert set(data) == {"benchmark", "date", "commit", "command", "machine", "seeds", "rows", "summary"}
    assert data["benchmark"] == "vision" and data["seeds"] == [0, 1, 2]
    assert data["summary"] == {"kd_accuracy_mean": 0.9}


def test_pooled_comparison_is_mcnemar_on_the_pooled_discordant_examples(common):
    from distill.evaluation.significance import mcnemar_exact

    reports = [_report(10, 4, 0.18, 0.006), _report(9, 5, 0.42, 0.004), _report(12, 3, 0.035, 0.009)]
    out = common.pooled_comparison(reports)
    assert (out["a_only"], out["b_only"]) == (31, 12)
    # pooled: 31 vs 12 discordant examples; each seed alone is not significant at 0.05 except the third
    expected = mcnemar_exact([True] * 31 + [False] * 12, [False] * 31 + [True] * 12)["p"]
    assert out["p"] == expected and out["p"] < 0.01
    assert out["per_seed_p"] == [0.18, 0.42, 0.035]
    assert out["gain"]["n"] == 3 and out["gain"]["mean"] == pytest.approx(0.019 / 3, rel=1e-12)


def test_pooled_comparison_without_discordant_examples_is_p_one(common):
    assert common.pooled_comparison([_report(0, 0, 1.0, 0.0)])["p"] == 1.0


def test_merged_with_earlier_keeps_the_models_not_rerun_tagged_with_their_run(common):
    """Re-running one student of a benchmark keeps the others' rows and summary blocks, each tagged with the
    run they came from (an entry already kept from an older run keeps that older tag)."""
    older = {"command": "old", "commit": "aaa", "date": "2026-11-01 10:00"}
    common.write_json("text_classification", [0], [
        {"student": "minilm6", "seed": 0, "accuracy": 0.85},
        {"student": "minilm3", "seed": 0, "accuracy": 0.70},
        {"student": "static", "seed": 0, "accuracy": 0.60, "from_run": older}],
        {"minilm6": {"kd_accuracy_mean": 0.85}, "minilm3": {"kd_accuracy_mean": 0.70},
         "static": {"kd_accuracy_mean": 0.60, "from_run": older}, "note": "an old note"})
    earlier = json.loads((common.RESULTS_DIR / "text_classification.json").read_text())
    rows, summary = common.merged_with_earlier(
        "text_classification", [{"student": "minilm3", "seed": 0, "accuracy": 0.80}],
        {"minilm3": {"kd_accuracy_mean": 0.80}}, key="student")
    assert summary["minilm3"] == {"kd_accuracy_mean": 0.80}  # this run's block, untagged
    tag = {k: earlier[k] for k in ("command", "commit", "date")}
    assert summary["minilm6"] == {"from_run": tag, "kd_accuracy_mean": 0.85}
    assert summary["static"]["from_run"] == older
    assert summary["note"].startswith("minilm3 from this run") and "an old note" not in summary["note"]
    assert [(r["student"], r["accuracy"]) for r in rows] == [("minilm3", 0.80), ("minilm6", 0.85),
                                                             ("static", 0.60)]
    assert rows[1]["from_run"] == tag and rows[2]["from_run"] == older
    # nothing earlier: this run's figures as they are
    assert common.merged_with_earlier("vision", [{"model": "teacher"}], {"a": {}}, key="model") == (
        [{"model": "teacher"}], {"a": {}})
