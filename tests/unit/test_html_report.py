"""report.html and the run comparison, from hand-made reports (no models, no browser)."""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest

from distill.evaluation._charts import nice_ticks
from distill.evaluation.compare import (
    aggregate,
    format_comparison,
    recipe_differences,
    render_comparison,
    run_names,
)
from distill.evaluation.html_report import render_report, verdict, write_html_report
from distill.evaluation.predictions import analyse, prediction_rows, softmax

EVIL = '<script>alert("x")</script> & "quoted"'


def make_report(student_acc=0.80, seed=42, latency=5.0):
    history = [
        {"loss": 0.9, "loss/kd": 0.6, "loss/ce": 1.2, "learning_rate": 1e-4, "epoch": 0.5, "step": 10},
        {"loss": 0.5, "loss/kd": 0.3, "loss/ce": 0.7, "learning_rate": 5e-5, "epoch": 1.0, "step": 20},
        {"eval_loss": 0.6, "eval_accuracy": 0.78, "eval_macro_f1": 0.77, "epoch": 1.0, "step": 20},
        {"train_runtime": 3.0, "train_loss": 0.7, "epoch": 1.0, "step": 20},
    ]
    return {
        "models": {
            "teacher": {"accuracy": 0.90, "macro_f1": 0.89, "parameters": 20_000_000, "size_mb": 80.0,
                        "latency_ms_b1": 12.0, "latency_ms_b32": 200.0},
            "student_kd": {"accuracy": student_acc, "macro_f1": student_acc - 0.01, "teacher_agreement": 0.85,
                           "parameters": 5_000_000, "size_mb": 20.0, "latency_ms_b1": latency,
                           "latency_ms_b32": 60.0},
            "student_no_kd": {"accuracy": 0.75, "macro_f1": 0.74, "teacher_agreement": 0.80,
                              "parameters": 5_000_000, "size_mb": 20.0, "latency_ms_b1": 4.0,
                              "latency_ms_b32": 55.0},
        },
        "training": {"student": {"seconds": 3.0, "steps": 20, "log_history": history},
                     "student_no_kd": {"seconds": 2.0, "steps": 20, "log_history": [
                         {"loss": 0.8, "loss/ce": 0.8, "epoch": 0.5, "step": 10},
                         {"eval_accuracy": 0.74, "epoch": 1.0, "step": 20}]}},
        "summary": {"accuracy_retained": student_acc / 0.90, "speedup_b1": 12.0 / latency,
                    "speedup_b32": 200 / 60, "size_ratio": 4.0, "kd_gain_accuracy": student_acc - 0.75,
                    "kd_gain_macro_f1": 0.05},
        "task": "text-classification",
        "labels": ["negative", "positive"],
        "data": {"train": 100, "unlabeled": 0, "validation": 10, "test": 4},
        "store_key": "abc123storekey",
        "store": {"key": "abc123storekey", "path": "/tmp/stores/abc123storekey", "bytes": 2048,
                  "num_examples": 100},
        "recipe": {"output_dir": "runs/sst", "teacher": {"model": "my/teacher"},
                   "student": {"from_teacher": True, "layers": [0, 3]},
                   "losses": [{"name": "kd", "weight": 0.5}, {"name": "ce", "weight": 0.5}],
                   "train": {"seed": seed, "epochs": 1}},
        "versions": {"distill": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0"},
        "created": "2026-11-27T12:00:00+0000",
    }


def make_predictions():
    import pandas as pd

    frame = pd.DataFrame({"text": ["good film", EVIL, "dull plot", "fine cast"], "label": [1, 0, 0, -1]})
    logits = {
        "teacher": [[-2.0, 2.0], [3.0, -3.0], [1.0, -1.0], [0.0, 1.0]],
        "student_kd": [[-1.0, 1.0], [-1.0, 1.0], [0.5, -0.5], [0.0, 2.0]],
        "student_no_kd": [[1.0, -1.0], [2.0, -2.0], [0.0, 1.0], [0.0, 1.0]],
    }
    import numpy as np

    probs = {k: softmax(np.array(v)) for k, v in logits.items()}
    return prediction_rows(frame, ["negative", "positive"], probs)


def test_predictions_and_analysis():
    rows = make_predictions()
    assert rows[1]["text"] == EVIL and rows[3]["label"] is None
    assert (rows[0]["teacher"]["pred"] == "positive"
            and math.isclose(sum(rows[0]["teacher"]["probs"]), 1, abs_tol=1e-4))
    a = analyse(rows, ["negative", "positive"])
    # unlabelled rows count in no confusion matrix; rows = gold, columns = prediction
    assert a["confusion"]["teacher"] == [[2, 0], [0, 1]]
    assert a["confusion"]["student_no_kd"] == [[1, 1], [1, 0]]
    assert a["disagreement_rate"] == 0.25
    # drop in the teacher's class probability: row 1 .998 -> .119, row 2 .881 -> .731, row 0 .982 -> .881;
    # on row 3 the student is surer of the teacher's class than the teacher, so it is left out
    assert [d["index"] for d in a["disagreements"]] == [1, 2, 0]
    assert all(d["gap"] > 0 for d in a["disagreements"])
    assert a["disagreements"][0]["student_kd"]["pred"] == "positive"


def test_render_has_table_charts_and_sections():
    report = make_report()
    report["analysis"] = analyse(make_predictions(), report["labels"])
    html = render_report(report)
    assert html.startswith("<!DOCTYPE html>")
    assert '<table class="models">' in html
    for title in ("teacher", "student (distilled)", "student (no KD)"):
        assert f"{title}</td>" in html
    # scatter, size, latency at b32, two loss charts, validation accuracy
    assert html.count('<svg class="chart"') == 6
    assert "loss/kd" in html and "loss/ce" in html
    assert "The student keeps <b>88.9%</b> of the teacher's accuracy at <b>2.4\u00d7</b> the speed" in html
    assert "+5.00 points</b> over the no-KD student" in html
    assert html.count('<table class="cm">') == 3 and 'class="disagreements"' in html
    assert ("abc123storekey" in html and "2.0 KB" in html and "transformers 5.24.0" in html
            and "layers:" in html)
    assert "20.0 MB \u00b7 5.0M params" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "<script" not in html


def test_render_escapes_user_text():
    report = make_report()
    report["labels"] = ["<b>neg</b>", "pos"]
    report["recipe"]["output_dir"] = "runs/<script>x</script>"
    report["recipe"]["teacher"]["model"] = '"><img src=x onerror=alert(1)>'
    rows = make_predictions()
    for r in rows:
        r["label"] = None if r["label"] is None else {"negative": "<b>neg</b>", "positive": "pos"}[r["label"]]
        for role in ("teacher", "student_kd", "student_no_kd"):
            r[role]["pred"] = {"negative": "<b>neg</b>", "positive": "pos"}[r[role]["pred"]]
    html = render_report(report, predictions=rows)  # the analysis is computed from the rows
    assert "<script" not in html and "<img" not in html and "<b>neg</b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quoted&quot;" in html
    assert "&lt;b&gt;neg&lt;/b&gt;" in html


def test_render_survives_a_sparse_report():
    html = render_report({"models": {"teacher": {"accuracy": 0.5, "macro_f1": 0.5}}})
    assert "No distilled student" in html and "<table" in html


def test_verdict_wording_when_distillation_hurts_and_student_is_slower():
    report = make_report(student_acc=0.70, latency=24.0)
    text = verdict(report)
    assert "but runs <b>2.0\u00d7 slower</b> (batch 1)" in text
    assert "\u22125.00 points</b> behind the no-KD student" in text


def test_write_html_report_reads_the_run_folder(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(make_report()))
    with open(tmp_path / "predictions.jsonl", "w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in make_predictions())
    path = write_html_report(tmp_path)
    html = path.read_text()
    assert path.name == "report.html" and 'class="disagreements"' in html and not list(tmp_path.glob("*.tmp"))


def test_compare_means_and_std():
    reports = [make_report(0.80, seed=1, latency=5.0), make_report(0.82, seed=2, latency=6.0),
               make_report(0.84, seed=3, latency=7.0)]
    agg = aggregate(reports)
    kd = agg["student_kd"]
    assert kd["accuracy"]["mean"] == pytest.approx(0.82) and kd["accuracy"]["std"] == pytest.approx(0.02)
    assert (kd["latency_ms_b1"]["mean"] == pytest.approx(6.0)
            and kd["latency_ms_b1"]["std"] == pytest.approx(1.0))
    assert agg["teacher"]["accuracy"] == {"mean": pytest.approx(0.9), "std": 0.0, "n": 3,
                                          "ci95": [pytest.approx(0.9), pytest.approx(0.9)]}
    # t(0.975, 2) = 4.3027: mean ± 4.3027 * 0.02 / sqrt(3)
    assert kd["accuracy"]["ci95"][1] == pytest.approx(0.82 + 4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert "teacher_agreement" not in agg["teacher"]
    assert recipe_differences(reports) == {"train.seed": [1, 2, 3]}
    names = ["s1", "s2", "s3"]
    text = format_comparison(names, reports)
    assert re.search(r"student \(distilled\)\s+3\s+82\.00 ± 2\.00 \[77\.03, 86\.97\]", text)
    assert "s2: student (distilled)" in text and "recipe fields that differ: train.seed" in text
    assert ("distillation +7.00 points vs the no-KD student over 3 runs (std 2.00; 95% CI of the mean "
            "+2.03 to +11.97): the interval excludes 0") in text
    html = render_comparison(names, [dict(r, recipe={**r["recipe"], "output_dir": EVIL}) for r in reports],
                             ["s1/report.html", None, None])
    assert "82.00%" in html and "± 2.00 pts" in html and '<a href="s1/report.html">' in html
    assert "<script" not in html and html.count('<svg class="chart"') == 2


def test_compare_of_two_runs_has_sample_std():
    agg = aggregate([make_report(0.80), make_report(0.90)])
    assert agg["student_kd"]["accuracy"]["std"] == pytest.approx(math.sqrt(0.005))


def test_run_names_are_short_and_unique():
    assert run_names(["/x/seed1/run", "/x/seed2/run"]) == ["seed1/run", "seed2/run"]
    assert run_names(["/x/a", "/x/b"]) == ["a", "b"]


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (0.7634, 0.8412), (0.0, 263.3), (5.0, 5.0), (0.0, 0.0)])
def test_nice_ticks_cover_the_range(lo, hi):
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 8
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1


def test_write_page_never_renames_over_a_special_file(tmp_path):
    import os
    import threading

    from distill.evaluation.html_report import write_page

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_page(fifo, "<p>hi</p>")
    reader.join(10)
    assert got == ["<p>hi</p>"] and not fifo.is_file()
    assert write_page(tmp_path / "sub" / "page.html", "x").read_text() == "x"


def _significant_report(p_kd=0.31, spread=0.05):
    from distill.evaluation.report import summarise

    report = make_report(0.80)
    for m in report["models"].values():
        m["latency_spread_b1"] = m["latency_spread_b32"] = spread
    report["significance"] = {
        "student_kd_vs_student_no_kd": {"metric": "accuracy", "n": 2114, "difference": 0.0019,
                                        "ci95": [-0.006, 0.0095], "p": p_kd, "test": "exact McNemar",
                                        "significant": p_kd < 0.05},
        "student_kd_vs_teacher": {"metric": "accuracy", "n": 2114, "difference": -0.1, "ci95": [-0.12, -0.08],
                                  "p": 1e-6, "test": "exact McNemar", "significant": True}}
    report["latency"] = {"reliable": spread <= 0.25, "noisy": [] if spread <= 0.25 else ["teacher@b1"],
                         "speedup": {"student_kd": {"b1": {"ratio": 2.4, "ci95": [2.2, 2.6]}}}}
    report["summary"] = summarise(report["models"], report["latency"], report["significance"])
    return report


def test_verdict_words_the_kd_gain_by_its_test():
    text = verdict(_significant_report(p_kd=0.31))
    assert "not distinguishable from the no-KD student at this test size (2,114 test examples)" in text
    assert "p = 0.31" in text and "95% CI -0.60 to +0.95" in text
    assert "significantly better than the no-KD student" in verdict(_significant_report(p_kd=0.001))


def test_unreliable_latency_is_marked_in_table_verdict_and_page():
    from distill.evaluation.report import format_table

    report = _significant_report(spread=0.6)
    assert report["summary"]["speedup_b1"] == 2.4  # the interleaved figure, not the ratio of two medians
    assert "latency unreliable" in verdict(report)
    table = format_table(report["models"], report["summary"], report)
    assert "?" in table.splitlines()[2] and "latency unreliable" in table
    html = render_report(report)
    assert ("unreliable: busy machine" in html and "Is the difference real?" in html
            and "exact McNemar" in html)
    quiet = _significant_report(spread=0.05)
    assert "unreliable" not in format_table(quiet["models"], quiet["summary"], quiet)
    assert "unreliable" not in render_report(quiet)
