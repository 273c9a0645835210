"""The comparison every run ends with: teacher vs distilled student vs the no-KD student."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROLES = ("teacher", "student_kd", "student_no_kd", "student_datafree")  # the last: image runs, vision.datafree
TITLES = {"teacher": "teacher", "student_kd": "student (distilled)", "student_no_kd": "student (no KD)",
          "student_datafree": "student (data-free)"}


def summarise(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Derived figures: the student's share of the teacher's accuracy, the gain over the baseline, speed-up."""
    out: dict[str, Any] = {}
    t, s, b = models.get("teacher"), models.get("student_kd"), models.get("student_no_kd")
    if t and s:
        out["accuracy_retained"] = s["accuracy"] / t["accuracy"] if t["accuracy"] else None
        for key in [k for k in s if k.startswith("latency_ms_b")]:
            if t.get(key) and s.get(key):
                out[f"speedup_{key.removeprefix('latency_ms_')}"] = t[key] / s[key]
        if t.get("parameters") and s.get("parameters"):
            out["size_ratio"] = t["parameters"] / s["parameters"]
    if s and b:
        out["kd_gain_accuracy"] = s["accuracy"] - b["accuracy"]
        out["kd_gain_macro_f1"] = s["macro_f1"] - b["macro_f1"]
    return out


def format_table(models: dict[str, dict[str, Any]], summary: dict[str, Any]) -> str:
    cols = [("accuracy", "acc", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}"),
            ("teacher_agreement", "agree", "{:.3f}"), ("parameters", "params", "{:,}"),
            ("size_mb", "MB", "{:.1f}")]
    lat = sorted({k for m in models.values() for k in m if k.startswith("latency_ms_b")},
                 key=lambda k: int(k.removeprefix("latency_ms_b")))
    cols += [(k, f"ms@{k.removeprefix('latency_ms_')}", "{:.1f}") for k in lat]
    header = ["model"] + [c[1] for c in cols]
    rows = []
    for role in ROLES:
        if role not in models:
            continue
        m = models[role]
        rows.append([TITLES[role]] + [fmt.format(m[k]) if m.get(k) is not None else "-" for k, _, fmt in cols])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    extras = []
    if summary.get("accuracy_retained") is not None:
        extras.append(f"student keeps {100 * summary['accuracy_retained']:.1f}% of the teacher's accuracy")
    if "kd_gain_accuracy" in summary:
        extras.append(f"distillation {'+' if summary['kd_gain_accuracy'] >= 0 else ''}"
                      f"{100 * summary['kd_gain_accuracy']:.2f} points vs the no-KD student")
    speed = [f"{v:.1f}x at {k.removeprefix('speedup_')}" for k, v in summary.items() if k.startswith("speedup_")]
    if speed:
        extras.append("CPU speed-up " + ", ".join(speed))
    if summary.get("size_ratio"):
        extras.append(f"{summary['size_ratio']:.1f}x fewer parameters")
    return "\n".join(out + ([""] + ["; ".join(extras)] if extras else []))


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write report.json atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
