"""report.html for classification runs (text, black-box-labelled and image): the verdict with its paired
tests, the teacher / distilled student / no-KD student table, quality against latency, size, the training
curves of every loss part and the validation accuracy, confusion matrices, the test examples where the student
departs most from the teacher, the recipe and the library versions. Everything taken from the report (texts,
labels, paths, recipe values) is HTML-escaped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill.evaluation._charts import (
    MODEL_COLOURS,
    MODEL_TITLES,
    ROLES,
    count,
    esc,
    hbars,
    megabytes,
    num,
    page,
    pct,
    scatter,
    signed_points,
    speed,
)
from distill.evaluation.report_parts import (
    run_facts,
    selection_table,
    teachers_table,
    training_charts,
    versions_line,
)
from distill.evaluation.speed import UNRELIABLE_SPREAD


def _latency_keys(models: dict[str, dict[str, Any]]) -> list[str]:
    keys = {k for m in models.values() for k in m if k.startswith("latency_ms_b")}
    return sorted(keys, key=lambda k: int(k.removeprefix("latency_ms_b")))


def _batch(key: str) -> str:
    return key.removeprefix("latency_ms_b")


# -- the verdict ------------------------------------------------------------------------------------------
def verdict(report: dict[str, Any]) -> str:
    """One sentence: the student's share of the teacher's accuracy, its speed-up, and what KD added, with the
    paired test's interval and p, worded by what the test set can tell (see distill.evaluation.significance);
    a speed-up measured on a busy machine says so."""
    from distill.evaluation.report import comparison_key
    from distill.evaluation.significance import describe
    from distill.evaluation.speed import unreliable_note

    models, summary = report.get("models", {}), report.get("summary", {})
    sig = report.get("significance") or {}
    if "student_kd" not in models:
        return "No distilled student was evaluated in this run."
    bits = []
    if summary.get("accuracy_retained") is not None:
        bits.append(f"the student keeps <b>{pct(summary['accuracy_retained'])}</b> of the teacher's accuracy")
    else:
        bits.append(f"the student reaches <b>{pct(models['student_kd'].get('accuracy'))}</b> accuracy")
    speed_keys = sorted((k for k in summary if k.startswith("speedup_b")), key=lambda k: int(k[9:]))
    if speed_keys:
        k = speed_keys[0]
        times, word = speed(summary[k])
        if word == "faster":
            bits[-1] += f" at <b>{esc(times)}</b> the speed (batch {esc(k[9:])})"
        else:
            bits[-1] += f" but runs <b>{esc(times)} slower</b> (batch {esc(k[9:])})"
        note = unreliable_note(report.get("latency"))
        if note:
            bits[-1] += f' <span class="warn">({esc(note)})</span>'
    cmp = sig.get(comparison_key("student_kd", "student_no_kd"))
    if cmp:
        bits.append("distillation: " + esc(describe(cmp, "the distilled student", "the no-KD student")))
    elif "kd_gain_accuracy" in summary:
        gain = summary["kd_gain_accuracy"]
        word = "over" if gain >= 0 else "behind"
        bits.append(f"distillation <b>{signed_points(gain)} points</b> {word} the no-KD student")
    text = "; ".join(bits)
    return text[0].upper() + text[1:] + "."


def warnings_box(report: dict[str, Any]) -> str:
    """What must not be missed before shipping the student (distill.evaluation.report.class_warnings)."""
    warnings = report.get("warnings") or []
    if not warnings:
        return ""
    items = "".join(f"<li>{esc(w[0].upper() + w[1:])}.</li>" for w in warnings)
    return f'<div class="panel warn-box"><b class="warn">Before shipping</b><ul>{items}</ul></div>'


def per_class_section(report: dict[str, Any]) -> str:
    """Recall and F1 of every model on every class, with the support."""
    models, labels = report.get("models") or {}, report.get("labels") or []
    roles = [r for r in ROLES if (models.get(r) or {}).get("per_class_f1")]
    if not roles or not labels:
        return ""
    support = models[roles[0]].get("per_class_support") or []
    head = "".join(f"<th>{esc(MODEL_TITLES[r])}<br>recall / F1</th>" for r in roles)
    rows = []
    for c, name in enumerate(labels):
        cells = "".join(f"<td>{pct(models[r]['per_class_recall'][c], 1)} / "
                        f"{pct(models[r]['per_class_f1'][c], 1)}</td>" for r in roles)
        n = support[c] if c < len(support) else "–"
        rows.append(f"<tr><td>{esc(name)}</td>{cells}<td>{n}</td></tr>")
    return ('<h2>Per class</h2><div class="table-wrap"><table><thead><tr><th>class</th>' + head
            + "<th>test rows</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def significance_table(report: dict[str, Any]) -> str:
    """Every paired comparison of the run: difference, 95% interval, test and p."""
    from distill.evaluation.significance import format_p

    rows = []
    for key, cmp in (report.get("significance") or {}).items():
        a, _, b = key.partition("_vs_")
        scale, unit = (100.0, " pts") if cmp.get("metric") == "accuracy" else (1.0, "")
        lo, hi = cmp["ci95"]
        verdict_word = ("significant" if cmp["significant"] else "not distinguishable")
        rows.append(f"<tr><td>{esc(MODEL_TITLES.get(a, a))} vs {esc(MODEL_TITLES.get(b, b))}</td>"
                    f"<td>{esc(cmp.get('metric', ''))}</td><td>{scale * cmp['difference']:+.2f}{unit}</td>"
                    f"<td>{scale * lo:+.2f} to {scale * hi:+.2f}</td><td>{esc(cmp.get('test', ''))}</td>"
                    f"<td>{esc(format_p(cmp['p']))}</td><td>{verdict_word}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Is the difference real?</h2><p class=\"muted\">Paired comparisons on the same test "
            "examples; 95% interval by paired bootstrap; significant means p &lt; 0.05.</p>"
            '<div class="table-wrap"><table><thead><tr><th>comparison</th><th>metric</th><th>difference</th>'
            "<th>95% interval</th><th>test</th><th>p</th><th>reading</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def _cards(report: dict[str, Any]) -> str:
    models, summary = report.get("models", {}), report.get("summary", {})
    s = models.get("student_kd", {})
    cards = []
    if summary.get("accuracy_retained") is not None:
        cards.append((pct(summary["accuracy_retained"]), "of the teacher's accuracy"))
    for k in sorted((k for k in summary if k.startswith("speedup_b")), key=lambda k: int(k[9:])):
        times, word = speed(summary[k])
        cards.append((times, f"{word} at batch {k[9:]} (CPU)"))
    if summary.get("size_ratio"):
        cards.append((f"{summary['size_ratio']:.1f}\u00d7", "fewer parameters"))
    if "kd_gain_accuracy" in summary:
        cards.append((signed_points(summary["kd_gain_accuracy"]), "accuracy points from distillation"))
    if s.get("teacher_agreement") is not None:
        cards.append((pct(s["teacher_agreement"]), "agreement with the teacher"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        for v, k in cards
    ) + "</div>"


# -- the table --------------------------------------------------------------------------------------------
def model_table(models: dict[str, dict[str, Any]]) -> str:
    lat = _latency_keys(models)
    head = (["model", "accuracy", "macro-F1", "agreement", "parameters", "MB"]
            + [f"ms @ b{_batch(k)}" for k in lat])
    teacher = models.get("teacher", {})
    rows = []
    for role in ROLES:
        m = models.get(role)
        if m is None:
            continue
        cells = [(f'<td class="model"><i class="sw" style="background:{MODEL_COLOURS[role]}"></i>'
                 f'{esc(MODEL_TITLES[role])}</td>')]
        for key in ("accuracy", "macro_f1"):
            delta = ""
            if role != "teacher" and teacher.get(key) is not None and m.get(key) is not None:
                delta = f'<span class="delta">{signed_points(m[key] - teacher[key])} vs teacher</span>'
            cells.append(f"<td>{pct(m.get(key), 2)}{delta}</td>")
        cells.append(f"<td>{pct(m.get('teacher_agreement'), 1) if role != 'teacher' else '–'}</td>")
        cells.append(f"<td>{num(m.get('parameters'), 0)}</td><td>{megabytes(m.get('size_mb'))}</td>")
        for k in lat:
            note = ""
            if role != "teacher" and teacher.get(k) and m.get(k):
                note = '<span class="delta">{} {}</span>'.format(*speed(teacher[k] / m[k]))
            spread = m.get(k.replace("latency_ms_", "latency_spread_"))
            if spread is not None:
                note += f'<span class="delta">± {100 * spread / 2:.0f}%</span>'
                if spread > UNRELIABLE_SPREAD:
                    note += '<span class="delta warn">unreliable: busy machine</span>'
            cells.append(f"<td>{num(m.get(k), 1)}{note}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="table-wrap"><table class="models"><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


# -- charts -----------------------------------------------------------------------------------------------
def quality_latency_chart(models: dict[str, dict[str, Any]]) -> str:
    key = ("latency_ms_b1" if any("latency_ms_b1" in m for m in models.values())
           else next(iter(_latency_keys(models)), None))
    points = [(MODEL_TITLES[r], m[key], m["accuracy"], MODEL_COLOURS[r],
               f"{MODEL_TITLES[r]}: {pct(m['accuracy'], 2)} accuracy, {m[key]:.1f} ms")
              for r in ROLES
              if (m := models.get(r)) and key and m.get(key) is not None and m.get("accuracy") is not None]
    if not points:
        return ""
    chart = scatter(points, f"CPU latency at batch {_batch(key)} (ms) \u2014 left is faster", "test accuracy",
                    "accuracy against latency", xfmt_suffix="")
    return (f'<figure><figcaption>Quality vs latency <span class="muted">\u00b7 up and to the left is better'
            f'</span></figcaption>{chart}</figure>')


def size_chart(models: dict[str, dict[str, Any]]) -> str:
    items = [(MODEL_TITLES[r], m["size_mb"], MODEL_COLOURS[r],
              f"{megabytes(m['size_mb'])} MB \u00b7 {count(m['parameters'])} params" if m.get("parameters")
              else f"{megabytes(m['size_mb'])} MB")
             for r in ROLES if (m := models.get(r)) and m.get("size_mb") is not None]
    if not items:
        return ""
    return f'<figure><figcaption>Size <span class="muted">\u00b7 weights as saved</span></figcaption>' \
           f'{hbars(items, "model size in MB")}</figure>'


def latency_chart(models: dict[str, dict[str, Any]]) -> str:
    lat = _latency_keys(models)
    if len(lat) < 2:  # batch 1 is already in the scatter
        return ""
    key = lat[-1]
    items = [(MODEL_TITLES[r], m[key], MODEL_COLOURS[r], f"{m[key]:.1f} ms")
             for r in ROLES if (m := models.get(r)) and m.get(key) is not None]
    return (f'<figure><figcaption>Latency <span class="muted">\u00b7 CPU, batch {esc(_batch(key))}, median'
            f'</span></figcaption>{hbars(items, f"latency at batch {_batch(key)}")}</figure>')


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def confusion_tables(analysis: dict[str, Any]) -> str:
    confusion, labels = analysis.get("confusion"), analysis.get("labels") or []
    if not confusion:
        return ""
    blocks = []
    for role in ROLES:
        m = confusion.get(role)
        if not m:
            continue
        r, g, b = _hex_rgb(MODEL_COLOURS[role])
        head = '<tr><th class="rowhead">gold \u2193 / predicted \u2192</th>' + "".join(
            f"<th>{esc(label)}</th>" for label in labels) + "</tr>"
        body = []
        for i, row in enumerate(m):
            total = sum(row) or 1
            cells = []
            for j, hits in enumerate(row):
                share = hits / total
                alpha = 0.08 + 0.82 * share if hits else 0.03
                fg = "#fff" if alpha > 0.55 else "#1f2328"
                cells.append(f'<td style="background:rgba({r},{g},{b},{alpha:.2f});color:{fg}" '
                             f'title="{esc(labels[i])} predicted as {esc(labels[j])}: {hits} '
                             f'({share:.0%} of the row)">{hits}</td>')
            body.append(f'<tr><th class="rowhead">{esc(labels[i])}</th>{"".join(cells)}</tr>')
        correct = sum(m[i][i] for i in range(len(m)))
        total = sum(map(sum, m)) or 1
        blocks.append(f'<div class="panel"><h3><i class="sw" style="background:{MODEL_COLOURS[role]}"></i> '
                      f'{esc(MODEL_TITLES[role])}</h3><table class="cm">{head}{"".join(body)}</table>'
                      f'<div class="cm-note">{correct:,} of {total:,} correct; '
                      "shade = share of the gold row</div></div>")
    return '<div class="grid3">' + "".join(blocks) + "</div>"


def _tag(pred: str, gold: str | None) -> str:
    cls = "none" if gold is None else "ok" if pred == gold else "bad"
    return f'<span class="tag {cls}">{esc(pred)}</span>'


def disagreement_table(analysis: dict[str, Any]) -> str:
    rows = analysis.get("disagreements") or []
    if not rows:
        return '<p class="muted">The distilled student never puts less probability than the teacher on the ' \
               "teacher's class.</p>"
    roles = [r for r in ROLES if r in rows[0]]
    head = ["text", "gold"] + [MODEL_TITLES[r] for r in roles] + ["gap"]
    max_gap = max(r["gap"] for r in rows) or 1.0
    body = []
    for row in rows:
        text = esc(row["text"])
        if row.get("text_pair"):
            text += f'<span class="pair">{esc(row["text_pair"])}</span>'
        cells = [f'<td class="text">{text}</td>',
                 f'<td>{esc(row["label"]) if row["label"] is not None else "–"}</td>']
        for role in roles:
            p = row[role]
            sub = f"{p['prob']:.0%} sure" if role == "teacher" else \
                f"{p['prob']:.0%} sure; {p['prob_teacher_class']:.0%} on teacher's class"
            cells.append(f'<td>{_tag(p["pred"], row["label"])}<span class="prob">{esc(sub)}</span></td>')
        width = 60 * row["gap"] / max_gap
        cells.append(f'<td><i class="gapbar" style="width:{width:.0f}px"></i>{row["gap"]:.2f}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="table-wrap"><table class="disagreements"><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table></div>")


# -- facts ------------------------------------------------------------------------------------------------


# -- the page ---------------------------------------------------------------------------------------------
def render_classification_report(report: dict[str, Any],
                                 predictions: list[dict[str, Any]] | None = None) -> str:
    """The page of a classification run, text or image (``predictions`` rows, as in predictions.jsonl, are
    used to compute the analysis when the report does not hold it already)."""
    models = report.get("models") or {}
    recipe = report.get("recipe") or {}
    analysis = report.get("analysis")
    if not analysis and predictions and report.get("labels"):
        from distill.evaluation.predictions import analyse

        analysis = analyse(predictions, list(report["labels"]))
    name = Path(str(recipe.get("output_dir") or "run")).name or "run"
    task = report.get("task", "")
    sub = " \u00b7 ".join(esc(x) for x in (task, report.get("created", "")) if x)
    body = [
        (f'<header class="top"><div class="eyebrow">distill report</div><h1>{esc(name)}</h1>'
        f'<div class="muted">{sub}</div></header>'),
        warnings_box(report),
        f'<div class="verdict">{verdict(report)}</div>',
        _cards(report),
        "<h2>Teacher vs students</h2>",
        model_table(models),
        teachers_table(report),
        ('<p class="muted small" style="margin-top:8px">Test split; agreement = share of test examples where '
        "the model predicts the teacher's class; latency is the median CPU forward pass over rounds that "
        "time every model in turn, in random order, on the same inputs (± half the interquartile range, as a "
        "share of the median).</p>"),
        significance_table(report),
        per_class_section(report),
        selection_table(report),
    ]
    scatter_fig, bars = quality_latency_chart(models), size_chart(models) + latency_chart(models)
    if scatter_fig or bars:
        body += ['<div class="grid" style="margin-top:16px">', scatter_fig,
                 f'<div class="stack">{bars}</div>', "</div>"]
    curves = training_charts(report.get("training") or {})
    if curves:
        body += ["<h2>Training</h2>", curves]
    if analysis:
        cms = confusion_tables(analysis)
        if cms:
            body += ["<h2>Confusion matrices</h2>", cms]
        if "disagreements" in analysis:
            rate = analysis.get("disagreement_rate")
            note = (" The distilled student predicts another class than the teacher on "
                    f"{pct(rate)} of the test set.") \
                if rate is not None else ""
            body += ["<h2>Where the student departs from the teacher</h2>",
                     ('<p class="muted">Test examples with the largest drop from the teacher\'s probability '
                     "of its own class to the distilled student's probability of that class."
                     f"{esc(note)}</p>"),
                     disagreement_table(analysis)]
    body += ["<h2>Run</h2>", f'<div class="panel">{run_facts(report)}</div>']
    if recipe:
        body += ["<h2>Recipe</h2>", f"<pre><code>{esc(yaml.safe_dump(recipe, sort_keys=False))}</code></pre>"]
    body.append(f"<footer>{versions_line(report)}</footer>")
    return page(f"distill report \u00b7 {name}", "\n".join(body))
