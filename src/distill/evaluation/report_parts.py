"""The pieces every report page shares, whatever the task: the training curves, the run's facts, the versions
footer, and writing a page atomically. The task pages (``html_classification``, ``html_embedding``,
``html_causal_lm``) import from here; ``html_report`` picks the page for a report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distill.evaluation._charts import MODEL_COLOURS, MODEL_TITLES, esc, legend, lines, part_colour
from distill.files import atomic_write_text

REPORT_FILE, HTML_FILE = "report.json", "report.html"
# report["training"] stage -> the model it produced (for colours and titles)
STAGE_ROLES = {"teacher": "teacher", "student": "student_kd", "student_no_kd": "student_no_kd",
               "student_datafree": "student_datafree"}
CURVE_SIZE = (380, 270)  # training curves sit three to a row: a smaller canvas keeps their text readable


def _loss_parts(history: list[dict[str, Any]]) -> list[str]:
    parts: list[str] = []
    for entry in history:
        for k in entry:
            if (k == "loss" or k.startswith("loss/")) and k not in parts:
                parts.append(k)
    return sorted(parts, key=lambda k: (k == "loss", k))  # the total last, so it is drawn on top


def training_charts(training: dict[str, Any]) -> str:
    figures, extra_colours = [], {}
    for stage, info in training.items():
        history = (info or {}).get("log_history") or []
        parts = _loss_parts(history)
        if not parts:
            continue
        series = []
        for name in parts:
            pts = [(float(e["step"]), float(e[name])) for e in history
                   if name in e and "step" in e and isinstance(e[name], (int, float))]
            series.append(("total loss" if name == "loss" else name, pts, part_colour(name, extra_colours)))
        role = STAGE_ROLES.get(stage)
        title = MODEL_TITLES.get(role, stage) if role else stage
        chart = lines(series, "step", "loss", f"training loss parts: {title}", dashed=["total loss"],
                      size=CURVE_SIZE)
        if chart:
            figures.append(f'<figure><figcaption>Training loss <span class="muted">\u00b7 {esc(title)}</span>'
                           f'</figcaption>{legend([(n, c) for n, _, c in series])}{chart}</figure>')
    val = []
    for stage, info in training.items():
        history = (info or {}).get("log_history") or []
        pts = [(float(e.get("epoch", e.get("step", 0))), float(e["eval_accuracy"])) for e in history
               if isinstance(e.get("eval_accuracy"), (int, float))]
        if pts:
            role = STAGE_ROLES.get(stage)
            val.append((MODEL_TITLES.get(role, stage) if role else stage, pts,
                        MODEL_COLOURS.get(role or "", "#495057")))
    if val:
        # the no-KD student comes after the distilled one and is dashed: equal curves both stay visible
        chart = lines(val, "epoch", "validation accuracy", "validation accuracy per epoch", y_as_percent=True,
                      dashed=[MODEL_TITLES["student_no_kd"]], size=CURVE_SIZE)
        figures.append(f'<figure><figcaption>Validation accuracy <span class="muted">\u00b7 per epoch</span>'
                       f'</figcaption>{legend([(n, c) for n, _, c in val])}{chart}</figure>')
    return '<div class="grid3">' + "".join(figures) + "</div>" if figures else ""


# -- classification analysis ------------------------------------------------------------------------------


def _facts(items: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def run_facts(report: dict[str, Any]) -> str:
    items: list[tuple[str, str]] = []
    recipe = report.get("recipe") or {}
    if recipe.get("output_dir"):
        items.append(("output", f"<code>{esc(recipe['output_dir'])}</code>"))
    teacher = (recipe.get("teacher") or {}).get("model")
    if teacher:
        items.append(("teacher", f"<code>{esc(teacher)}</code>"))
    if report.get("teacher_path") and report.get("teacher_path") != teacher:
        items.append(("teacher weights", f"<code>{esc(report['teacher_path'])}</code>"))
    student = recipe.get("student") or {}
    if student.get("from_teacher"):
        items.append(("student", f"teacher layers {esc(student.get('layers'))}"))
    elif student.get("model"):
        items.append(("student", f"<code>{esc(student['model'])}</code>"))
    losses = recipe.get("losses") or []
    if losses:
        items.append(("losses", esc(" + ".join(f"{loss.get('weight', 1)} \u00d7 {loss.get('name')}"
                                               for loss in losses))))
    data = report.get("data") or {}
    if data:
        items.append(("examples", esc(", ".join(f"{v:,} {k}" for k, v in data.items() if v))))
    store = report.get("store") or {}
    key = report.get("store_key") or store.get("key")
    if key:
        size = f" \u00b7 {_bytes(store['bytes'])}, {store.get('num_examples', 0):,} examples" \
            if store.get("bytes") is not None else ""
        items.append(("store key", f"<code>{esc(key)}</code>{esc(size)}"))
    if store.get("path"):
        items.append(("store path", f"<code>{esc(store['path'])}</code>"))
    for stage, info in (report.get("training") or {}).items():
        if isinstance(info, dict) and info.get("seconds") is not None:
            role = STAGE_ROLES.get(stage)
            title = MODEL_TITLES.get(role, stage) if role else stage
            items.append((f"training: {title}",
                          esc(f"{info['seconds']:.0f} s, {info.get('steps', '?')} steps")))
    if report.get("store_build_seconds") is not None:
        items.append(("store build", esc(f"{report['store_build_seconds']:.0f} s")))
    return _facts(items)


def versions_line(report: dict[str, Any]) -> str:
    """The library versions a run used, for a page's footer."""
    v = report.get("versions") or {}
    return " \u00b7 ".join(f"{esc(k)} {esc(v[k])}" for k in ("distill", "torch", "transformers") if k in v)


def write_page(path: str | os.PathLike[str], text: str) -> Path:
    """Write a page atomically (temp file + rename), so a reader never sees half of it. A path that exists
    but is no regular file (/dev/stdout, a pipe) is written in place: renaming over it would replace it."""
    path = Path(path)
    if path.exists() and not path.is_file():
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path
    return atomic_write_text(path, text, durable=False)


def selection_table(report: dict[str, Any]) -> str:
    """The candidates ``select`` tried on the validation split, their scores, and the one chosen (the
    classification metrics, or validation perplexity for a causal LM)."""
    from distill.evaluation._charts import esc, num, pct

    section = report.get("select") or {}
    if not section.get("candidates"):
        return ""
    chosen = section["chosen"]
    lm = section.get("metric") == "perplexity"
    cols = (["validation perplexity"] if lm else ["validation accuracy", "validation macro-F1"])
    rows = []
    for c in section["candidates"]:
        alone = "the text alone" if lm else "labels alone"
        what = alone if not c["kd_weight"] else f"kd {c['kd_weight']:g} + ce {1 - c['kd_weight']:g}"
        picked = (c["kd_weight"], c["temperature"]) == (chosen["kd_weight"], chosen["temperature"])
        mark = " <b>(chosen)</b>" if picked else ""
        t = "–" if c["temperature"] is None else f"{c['temperature']:g}"
        scores = ([num(c["perplexity"], 2)] if lm else [pct(c["accuracy"], 2), pct(c["macro_f1"], 2)])
        rows.append(f"<tr><td>{esc(what)}{mark}</td><td>{t}</td>"
                    + "".join(f"<td>{x}</td>" for x in scores) + "</tr>")
    best = "lowest" if section.get("lower_is_better") else "best"
    outcome = (f"all tied, so the recipe's weights (kd {chosen['kd_weight']:g}) were trained in full"
               if section.get("tied")
               else f"the {best} validation {esc(section['metric'])} was trained in full")
    return (f"<h2>Distillation settings chosen on the validation split</h2><p class=\"muted\">Each candidate "
            f"trained {section['steps']} steps from the same start; {outcome}.</p>"
            "<div class=\"table-wrap\"><table><thead><tr>"
            "<th>losses</th><th>T</th>" + "".join(f"<th>{esc(x)}</th>" for x in cols) + "</tr></thead>"
            "<tbody>" + "".join(rows) + "</tbody></table></div>")


# (key in a teachers-section row, column title, how to show the value)
_TEACHER_COLUMNS = [
    ("weight", "weight", lambda v: f"{v:g}"),
    ("mean_weight", "mean weight", lambda v: f"{v:.3f}"),
    ("dim", "width", lambda v: f"{v}"),
    ("accuracy", "accuracy", lambda v: f"{100 * v:.1f}%"),
    ("macro_f1", "macro-F1", lambda v: f"{v:.3f}"),
    ("answered_fraction", "answered", lambda v: f"{100 * v:.1f}%"),
    ("perplexity", "perplexity", lambda v: f"{v:.3f}"),
    ("bits_per_byte", "bits/byte", lambda v: f"{v:.4f}"),
    ("agreement_with_combined", "agrees with combination", lambda v: f"{100 * v:.1f}%"),
    ("spearman_with_combined", "Spearman with joined vectors", lambda v: f"{v:.3f}"),
]


def teachers_table(report: dict[str, Any]) -> str:
    """Several teachers (any task): each one's scores, weight and agreement with the combination, then the
    agreement between every pair; empty for a run with one teacher."""
    section = report.get("teachers")
    if not section:
        return ""
    members = section["members"]
    cols = [(k, title, fmt) for k, title, fmt in _TEACHER_COLUMNS
            if any(m.get(k) is not None for m in members)]
    head = "".join(f"<th>{esc(title)}</th>" for _, title, _ in cols)
    rows = "".join("<tr><td>" + esc(m["name"]) + "</td>"
                   + "".join(f"<td>{fmt(m[k]) if m.get(k) is not None else '-'}</td>" for k, _, fmt in cols)
                   + "</tr>" for m in members)
    pairs = section.get("agreement") or {}
    note = ("" if not pairs else '<p class="muted small">Agreement between teachers: '
            + ", ".join(f"{esc(k)}: {v:.3f}" for k, v in pairs.items()) + ".</p>")
    return (f'<h2>Teachers</h2><p class="muted">The teacher row above is these teachers combined by '
            f"<code>{esc(section['rule'])}</code>. Mean weight: each teacher's average share over the "
            "training rows.</p>"
            f'<div class="table-wrap"><table><thead><tr><th>teacher</th>{head}</tr></thead><tbody>{rows}'
            f"</tbody></table></div>{note}")
