"""report.html for ``task: sentence-embedding`` runs: agreement with the teacher, probe accuracy and encode
speed for the teacher, the distilled student and the student before distillation (same look as the
classification page, built from the same chart primitives)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill.evaluation._charts import esc, hbars, megabytes, num, page, scatter, speed
from distill.evaluation.embedding import EMBED_ROLES, EMBED_TITLES, significance_sentence
from distill.evaluation.report_parts import run_facts, teachers_table, training_charts, versions_line

COLOURS = {"teacher": "#3b5bdb", "student_kd": "#e8590c", "student_untrained": "#74808c"}


def _verdict(report: dict[str, Any]) -> str:
    models, summary = report.get("models", {}), report.get("summary", {})
    s = models.get("student_kd")
    if not s:
        return "No student was evaluated."
    bits = [f"the distilled student's similarities rank like the teacher's with Spearman "
            f"<b>{s['spearman']:.3f}</b>",
            f"it finds <b>{100 * s['recall_at_k']:.0f}%</b> of the teacher's nearest neighbours"]
    if summary.get("speedup"):
        bits.append(f"and encodes <b>{summary['speedup']:.1f}\u00d7</b> as many sentences per second")
    text = "; ".join(bits[:2]) + (" " + bits[2] if len(bits) > 2 else "") + "."
    if summary.get("kd_gain_spearman") is not None:
        text += (f" Distillation changed Spearman by <b>{summary['kd_gain_spearman']:+.3f}</b> "
                 "from the student's start")
        sentence = significance_sentence(report)
        text += f" ({esc(sentence)})." if sentence else "."
    return text[0].upper() + text[1:]


def _table(models: dict[str, dict[str, Any]], k: int) -> str:
    probe_keys = sorted({key for m in models.values() for key in m
                         if key.startswith("probe_") and key != "probe_mean"})
    head = ["model", "Spearman", f"recall@{k}"] \
        + [p.removeprefix("probe_").replace("_", " ") for p in probe_keys] \
        + ["probe mean", "sentences/s", "parameters", "MB", "dim"]
    teacher = models.get("teacher", {})
    rows = []
    for role in EMBED_ROLES:
        m = models.get(role)
        if m is None:
            continue
        cells = [f'<td class="model"><i class="sw" style="background:{COLOURS[role]}"></i>'
                 f'{esc(EMBED_TITLES[role])}</td>',
                 f"<td>{num(m.get('spearman'), 3)}</td>", f"<td>{num(m.get('recall_at_k'), 3)}</td>"]
        cells += [f"<td>{num(m.get(p), 3)}</td>" for p in probe_keys + ["probe_mean"]]
        note = ""
        if role != "teacher" and teacher.get("sentences_per_second") and m.get("sentences_per_second"):
            note = '<span class="delta">{} {}</span>'.format(
                *speed(m["sentences_per_second"] / teacher["sentences_per_second"]))
        cells.append(f"<td>{num(m.get('sentences_per_second'), 0)}{note}</td>")
        cells.append(f"<td>{num(m.get('parameters'), 0)}</td><td>{megabytes(m.get('size_mb'))}</td>"
                     f"<td>{m.get('dim', '–')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="table-wrap"><table class="models"><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _charts(models: dict[str, dict[str, Any]]) -> str:
    roles = [r for r in EMBED_ROLES if r in models]
    points = [(EMBED_TITLES[r], models[r]["sentences_per_second"], models[r]["spearman"], COLOURS[r],
               f"{EMBED_TITLES[r]}: Spearman {models[r]['spearman']:.3f}, "
               f"{models[r]['sentences_per_second']:.0f} sentences/s")
              for r in roles
              if models[r].get("sentences_per_second") and models[r].get("spearman") is not None]
    out = []
    if points:
        out.append('<figure><figcaption>Agreement against speed <span class="muted">\u00b7 right is faster'
                   "</span></figcaption>"
                   + scatter(points, "sentences per second (CPU, batch 32)", "Spearman vs teacher",
                             "agreement against encode speed", y_as_percent=False) + "</figure>")
    bars = [(EMBED_TITLES[r], models[r]["probe_mean"], COLOURS[r], f"{100 * models[r]['probe_mean']:.1f}%")
            for r in roles if models[r].get("probe_mean") is not None]
    if bars:
        out.append('<figure><figcaption>Probe accuracy <span class="muted">\u00b7 mean over the labelled sets'
                   "</span></figcaption>" + hbars(bars, "probe accuracy") + "</figure>")
    return '<div class="grid" style="margin-top:16px">' + "".join(out) + "</div>" if out else ""


def render_embedding_report(report: dict[str, Any]) -> str:
    models = report.get("models") or {}
    recipe = report.get("recipe") or {}
    k = (recipe.get("eval") or {}).get("retrieval_k", 10)
    name = Path(str(recipe.get("output_dir") or "run")).name or "run"
    sub = " \u00b7 ".join(esc(x) for x in (report.get("task", ""), report.get("created", "")) if x)
    training = {("student" if stage == "student_trained" else stage): info
                for stage, info in (report.get("training") or {}).items()}
    body = [
        (f'<header class="top"><div class="eyebrow">distill report</div><h1>{esc(name)}</h1>'
         f'<div class="muted">{sub}</div></header>'),
        f'<div class="verdict">{_verdict(report)}</div>',
        "<h2>Teacher vs students</h2>",
        _table(models, k),
        ('<p class="muted small" style="margin-top:8px">Held-out sentences. Spearman: rank correlation of '
         "the model's pairwise cosine similarities with the teacher's; recall@k: share of the teacher's k "
         "nearest neighbours the model also ranks in its top k; probe: logistic regression on frozen "
         "embeddings (80/20 split); sentences/s: CPU encoding at batch 32, tokenising included.</p>"),
        teachers_table(report),
        _charts(models),
    ]
    curves = training_charts(training)
    if curves:
        body += ["<h2>Training</h2>", curves]
    body += ["<h2>Run</h2>", f'<div class="panel">{run_facts(report)}</div>']
    if recipe:
        body += ["<h2>Recipe</h2>", f"<pre><code>{esc(yaml.safe_dump(recipe, sort_keys=False))}</code></pre>"]
    body.append(f"<footer>{versions_line(report)}</footer>")
    return page(f"distill report \u00b7 {name}", "\n".join(body))
