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


CLASS_GAP = 0.02
"""A class is named in a warning when a model's F1 on it trails the other model's by more than this."""


def class_warnings(models: dict[str, dict[str, Any]], labels: list[str],
                   significance: dict[str, Any] | None = None) -> list[str]:
    """What a user must not miss before shipping the distilled student: every class on which the teacher is
    worse than the no-KD student (distillation can copy that blind spot), every class on which the distilled
    student is worse than the no-KD student, and a distilled student significantly worse overall."""
    out = []
    t, s, b = models.get("teacher", {}), models.get("student_kd", {}), models.get("student_no_kd", {})
    support = b.get("per_class_support") or s.get("per_class_support") or []

    def gaps(worse: dict[str, Any], better: dict[str, Any]) -> list[str]:
        f_w, f_b = worse.get("per_class_f1"), better.get("per_class_f1")
        r_w, r_b = worse.get("per_class_recall"), better.get("per_class_recall")
        if not f_w or not f_b:
            return []
        named = []
        for c, name in enumerate(labels):
            if c < len(f_w) and f_w[c] < f_b[c] - CLASS_GAP:
                n = support[c] if c < len(support) else 0
                named.append(f"{name!r} (F1 {f_w[c]:.2f} vs {f_b[c]:.2f}; recall {round(r_w[c] * n)}/{n} vs "
                             f"{round(r_b[c] * n)}/{n})")
        return named

    if t and b and (named := gaps(t, b)):
        out.append("the teacher is worse than the no-KD student on " + ", ".join(named)
                   + ": distillation can pass that blind spot on")
    if s and b and (named := gaps(s, b)):
        out.append("the distilled student is worse than the no-KD student on " + ", ".join(named))
    cmp = (significance or {}).get(comparison_key("student_kd", "student_no_kd"))
    if cmp and cmp["significant"] and cmp["difference"] < 0:
        out.append(f"the distilled student is significantly less accurate than the no-KD student "
                   f"({100 * cmp['difference']:+.2f} points, p = {cmp['p']:.2g}): ship the no-KD student, or "
                   "change the recipe (see the per-class table)")
    return out


def per_class_table(models: dict[str, dict[str, Any]], labels: list[str]) -> str:
    """Recall and F1 of every model on every class (text), support last."""
    roles = [r for r in ROLES if models.get(r, {}).get("per_class_f1")]
    if not roles or not labels:
        return ""
    header = ["class"] + [f"{TITLES[r]} R/F1" for r in roles] + ["n"]
    support = models[roles[0]].get("per_class_support") or []
    rows = []
    for c, name in enumerate(labels):
        cells = [str(name)]
        for r in roles:
            m = models[r]
            cells.append(f"{m['per_class_recall'][c]:.2f}/{m['per_class_f1'][c]:.2f}")
        rows.append(cells + [str(support[c]) if c < len(support) else "-"])
    widths = [max(len(x[i]) for x in [header] + rows) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def describe_choice(section: dict[str, Any] | None) -> str | None:
    """One sentence on what the selection chose, for verdicts and cards."""
    if not section or "chosen" not in section:
        return None
    c = section["chosen"]
    n = len(section.get("candidates", []))
    if section.get("tied"):
        return (f"the {n} candidates tied on the validation split ({section['metric']} after "
                f"{section['steps']} steps each), so the recipe's weights were kept: kd weight "
                f"{c['kd_weight']:g}"
                + (f", temperature {c['temperature']:g}" if c.get("temperature") else ""))
    what = ("labels alone (kd weight 0)" if not c["kd_weight"]
            else f"kd weight {c['kd_weight']:g}, temperature {c['temperature']:g}")
    return f"chosen on the validation split ({section['metric']}, {n} candidates): {what}"


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
    cal = (report.get("blackbox") or {}).get("calibration") or {}
    if cal.get("test_after"):
        b, a = cal["test_before"], cal["test_after"]
        out.append(f"teacher calibrated ({cal['method']}) before distillation: its test accuracy "
                   f"{b['accuracy']:.4f} -> {a['accuracy']:.4f}, macro-F1 {b['macro_f1']:.4f} -> "
                   f"{a['macro_f1']:.4f}")
    bb = report.get("blackbox") or {}
    if ens := bb.get("ensemble"):
        accs = ", ".join(f"{m['name']} {m['test']['accuracy']:.4f}" for m in ens["members"] if m.get("test"))
        pairs = ", ".join(f"{k} {v:.1%}" for k, v in ens["pairwise_agreement"].items() if v is not None)
        out.append(f"teacher = {len(ens['members'])} members combined by {ens['combine']}"
                   + (f" (test accuracy {accs}" + (f"; combined {ens['test']['accuracy']:.4f}"
                                                   if ens.get("test") else "") + ")" if accs else "")
                   + (f"; agreement {pairs}" if pairs else ""))
    if ab := bb.get("abstention"):
        what = "left out" if ab["mode"] == "drop" else "kept as soft targets without a hard label"
        out.append(f"{ab['below']} of {ab['texts']} teacher-labelled texts were below confidence "
                   f"{ab['min_confidence']:g} and were {what}")
    if choice := describe_choice(report.get("select")):
        out.append(f"distillation settings {choice}")
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
    report = {**(report or {}), "models": models, "summary": summary}
    if report.get("labels") and (classes := per_class_table(models, list(report["labels"]))):
        out += ["", "per class (recall/F1):", classes]
    out += [""] + [f"WARNING: {w}" for w in report.get("warnings") or []] if report.get("warnings") else []
    extras = verdict_sentences(report)
    return "\n".join(out + ([""] + ["; ".join(extras)] if extras else []))


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write report.json atomically (temp file + rename)."""
    return atomic_write(path, lambda fh: json.dump(report, fh, indent=2, default=str))


def format_teachers(section: dict[str, Any]) -> str:
    """A plain-text table of the ``teachers`` section (printed after the run, and in the model card)."""
    lines = [f"teachers (combined by {section['rule']}):",
             "| teacher | weight | mean weight | accuracy | macro-F1 | agrees with combination |",
             "|---|---|---|---|---|---|"]
    for m in section["members"]:
        mean_w = "-" if m.get("mean_weight") is None else f"{m['mean_weight']:.3f}"
        lines.append(f"| {m['name']} | {m['weight']:g} | {mean_w} | {m['accuracy']:.4f} | "
                     f"{m['macro_f1']:.4f} | {m['agreement_with_combined']:.3f} |")
    pairs = "; ".join(f"{k}: {v:.3f}" for k, v in section["agreement"].items())
    lines.append(f"agreement between teachers: {pairs}")
    return "\n".join(lines)
