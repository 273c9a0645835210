"""The comparison every run ends with: teacher vs distilled student vs the no-KD student."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.files import atomic_write

# the last: image runs, vision.datafree
ROLES = ("teacher", "student_kd", "student_no_kd", "student_datafree")
TITLES = {"teacher": "teacher", "student_kd": "student (distilled)", "student_no_kd": "student (no KD)",
          "student_datafree": "student (data-free)"}


# the paired comparisons a classification report carries: (model A, model B), A - B
COMPARISONS = (("student_kd", "student_no_kd"), ("student_kd", "teacher"), ("student_no_kd", "teacher"),
               ("student_datafree", "student_kd"))


def comparison_key(a: str, b: str) -> str:
    return f"{a}_vs_{b}"


def classification_significance(correct: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Paired comparisons of the models' test predictions (``correct[role]``: one bool per test example):
    accuracy difference, paired bootstrap 95% interval and exact McNemar p for every pair of
    :data:`COMPARISONS` whose two models were evaluated."""
    from distill.evaluation.significance import compare_accuracy

    return {comparison_key(a, b): compare_accuracy(correct[a], correct[b], seed=seed)
            for a, b in COMPARISONS if a in correct and b in correct}


def summarise(models: dict[str, dict[str, Any]], latency: dict[str, Any] | None = None,
              significance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Derived figures: the student's share of the teacher's accuracy, the gain over the baseline with its
    interval and p, speed-up (from the interleaved timing when ``latency`` is given)."""
    out: dict[str, Any] = {}
    t, s, b = models.get("teacher"), models.get("student_kd"), models.get("student_no_kd")
    paired = (latency or {}).get("speedup", {}).get("student_kd", {})
    if t and s:
        out["accuracy_retained"] = s["accuracy"] / t["accuracy"] if t["accuracy"] else None
        for key in [k for k in s if k.startswith("latency_ms_b")]:
            b_key = key.removeprefix("latency_ms_")
            if b_key in paired:
                out[f"speedup_{b_key}"] = paired[b_key]["ratio"]
            elif t.get(key) and s.get(key):
                out[f"speedup_{b_key}"] = t[key] / s[key]
        if t.get("parameters") and s.get("parameters"):
            out["size_ratio"] = t["parameters"] / s["parameters"]
    if s and b:
        out["kd_gain_accuracy"] = s["accuracy"] - b["accuracy"]
        out["kd_gain_macro_f1"] = s["macro_f1"] - b["macro_f1"]
    for name, a_role, b_role in (("kd_vs_no_kd", "student_kd", "student_no_kd"),
                                 ("kd_vs_teacher", "student_kd", "teacher")):
        cmp = (significance or {}).get(comparison_key(a_role, b_role))
        if cmp:
            out[f"{name}_p"] = cmp["p"]
            out[f"{name}_ci95"] = cmp["ci95"]
            out[f"{name}_significant"] = cmp["significant"]
    if latency is not None:
        out["latency_reliable"] = bool(latency.get("reliable", True))
    return out


def _latency_cell(m: dict[str, Any], key: str) -> str:
    """``82.2 ±4%``: the median and the interquartile range as a share of it; ``?`` marks an unreliable
    one."""
    from distill.evaluation.speed import UNRELIABLE_SPREAD

    value = m.get(key)
    if value is None:
        return "-"
    spread = m.get(key.replace("latency_ms_", "latency_spread_"))
    if spread is None:
        return f"{value:.1f}"
    return f"{value:.1f} ±{100 * spread / 2:.0f}%" + ("?" if spread > UNRELIABLE_SPREAD else "")


def verdict_sentences(report: dict[str, Any]) -> list[str]:
    """The verdict of a classification run in plain sentences: retention, what distillation added (with its
    interval and p, worded by what the test can tell), speed and size."""
    from distill.evaluation.significance import describe
    from distill.evaluation.speed import unreliable_note

    summary = report.get("summary", {})
    sig = report.get("significance") or {}
    out = []
    if summary.get("accuracy_retained") is not None:
        text = f"the student keeps {100 * summary['accuracy_retained']:.1f}% of the teacher's accuracy"
        cmp = sig.get(comparison_key("student_kd", "teacher"))
        if cmp:
            text += f" ({describe(cmp, 'student', 'the teacher')})"
        out.append(text)
    if "kd_gain_accuracy" in summary:
        cmp = sig.get(comparison_key("student_kd", "student_no_kd"))
        if cmp:
            out.append("distillation: " + describe(cmp, "the distilled student", "the no-KD student"))
        else:
            out.append(f"distillation {'+' if summary['kd_gain_accuracy'] >= 0 else ''}"
                       f"{100 * summary['kd_gain_accuracy']:.2f} points vs the no-KD student")
    speed = [f"{v:.1f}x at {k.removeprefix('speedup_')}" for k, v in summary.items()
             if k.startswith("speedup_")]
    if speed:
        note = unreliable_note(report.get("latency"))
        out.append("CPU speed-up " + ", ".join(speed) + (f" [{note}]" if note else ""))
    if summary.get("size_ratio"):
        out.append(f"{summary['size_ratio']:.1f}x fewer parameters")
    return out


def format_table(models: dict[str, dict[str, Any]], summary: dict[str, Any],
                 report: dict[str, Any] | None = None) -> str:
    """The three-way table, then the verdict (from ``report`` when given: it carries the significance and the
    latency section)."""
    cols = [("accuracy", "acc", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}"),
            ("teacher_agreement", "agree", "{:.3f}"), ("parameters", "params", "{:,}"),
            ("size_mb", "MB", "{:.1f}")]
    lat = sorted({k for m in models.values() for k in m if k.startswith("latency_ms_b")},
                 key=lambda k: int(k.removeprefix("latency_ms_b")))
    header = ["model"] + [c[1] for c in cols] + [f"ms@{k.removeprefix('latency_ms_')}" for k in lat]
    rows = []
    for role in ROLES:
        if role not in models:
            continue
        m = models[role]
        rows.append([TITLES[role]] + [fmt.format(m[k]) if m.get(k) is not None else "-" for k, _, fmt in cols]
                    + [_latency_cell(m, k) for k in lat])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if any(m.get(k.replace("latency_ms_", "latency_spread_")) is not None
           for m in models.values() for k in lat):
        out.append("(ms: median over interleaved rounds, ± half the interquartile range as a share of the "
                   "median; ? = too noisy to trust)")
    extras = verdict_sentences({**(report or {}), "models": models, "summary": summary})
    return "\n".join(out + ([""] + ["; ".join(extras)] if extras else []))


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write report.json atomically (temp file + rename)."""
    return atomic_write(path, lambda fh: json.dump(report, fh, indent=2, default=str))
