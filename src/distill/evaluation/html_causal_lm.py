"""report.html for ``task: causal-lm`` runs: held-out perplexity per domain for the teacher, the distilled
student and the no-KD student, speed and size, the DDK domain weights over time, and sample generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill.evaluation._charts import esc, megabytes, num, page
from distill.evaluation.report_parts import (
    run_facts,
    selection_table,
    teachers_table,
    training_charts,
    versions_line,
)

ROLES = ("teacher", "student_kd", "student_no_kd")
TITLES = {"teacher": "teacher", "student_kd": "distilled student", "student_no_kd": "student, no KD"}


def _verdict(report: dict[str, Any]) -> str:
    from distill.evaluation.perplexity import lm_verdict

    return " ".join(esc(x) for x in lm_verdict(report))


def _curve(report: dict[str, Any]) -> str:
    """The learning curves (``causal_lm.curve_steps``): held-out perplexity of both students per step, the
    chart and the paired test at each step."""
    from distill.evaluation._charts import MODEL_COLOURS, lines
    from distill.evaluation.significance import format_p

    curve = report.get("curve") or []
    if not curve:
        return ""
    series = [(TITLES["student_kd"], [(r["step"], r["kd_perplexity"]) for r in curve],
               MODEL_COLOURS["student_kd"]),
              (TITLES["student_no_kd"], [(r["step"], r["no_kd_perplexity"]) for r in curve],
               MODEL_COLOURS["student_no_kd"])]
    chart = lines(series, "step", "held-out perplexity", "held-out perplexity while training")
    def row(r: dict[str, Any]) -> str:
        lo, hi = r["perplexity_ratio_ci95"]
        cells = [str(r["step"]), num(r["kd_perplexity"], 2), num(r["no_kd_perplexity"], 2),
                 f"{r['perplexity_ratio']:.3f} ({lo:.3f}-{hi:.3f})", esc(format_p(r["p"]))]
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    rows = "".join(row(r) for r in curve)
    return ("<h2>Learning curve</h2><p class=\"muted\">Both students scored on the held-out rows while they "
            "trained (reported only; nothing is chosen on it). Ratio: distilled / no-KD perplexity, with the "
            "chunk-bootstrap 95% interval and the sign-flip p.</p>" + chart
            + "<div class=\"table-wrap\"><table><thead><tr><th>step</th><th>distilled</th><th>no KD</th>"
            "<th>ratio (95% CI)</th><th>p</th></tr></thead><tbody>" + rows + "</tbody></table></div>")


def _table(models: dict[str, dict[str, Any]], domains: list[str]) -> str:
    head = (["model", "perplexity", "bits/byte"] + [f"ppl {d}" for d in domains]
            + ["tokens/s", "parameters", "MB"])
    rows = []
    for role in ROLES:
        m = models.get(role)
        if not m:
            continue
        per = m.get("perplexity_by_domain") or {}
        cells = [TITLES[role], num(m.get("perplexity"), 2), num(m.get("bits_per_byte"), 4)] + [
            num(per.get(d), 2) for d in domains] + [
            num(m.get("tokens_per_second"), 0), f"{m.get('parameters', 0):,}", megabytes(m.get("size_mb"))]
        rows.append("<tr>" + "".join(f"<td>{esc(c) if i == 0 else c}</td>" for i, c in enumerate(cells))
                    + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _ddk(report: dict[str, Any]) -> str:
    ddk = report.get("ddk")
    if not ddk:
        return ""
    names = ddk["domains"]
    head = "<tr><th>step</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
    body = "".join("<tr><td>" + str(h["step"]) + "</td>" + "".join(f"<td>{w:.3f}</td>" for w in h["weights"])
                   + "</tr>" for h in ddk["history"])
    return "<h2>DDK domain weights</h2><table><thead>" + head + "</thead><tbody>" + body + "</tbody></table>"


def _samples(report: dict[str, Any]) -> str:
    samples = report.get("samples") or {}
    if not samples:
        return ""
    out = ["<h2>Sample generations</h2>"]
    prompts = [s["prompt"] for s in next(iter(samples.values()))]
    for i, p in enumerate(prompts):
        out.append(f'<div class="panel"><p><b>{esc(p)}</b></p>')
        for role in ROLES:
            if role in samples and i < len(samples[role]):
                out.append(f"<p><span class=\"muted\">{esc(TITLES[role])}:</span> "
                           f"{esc(samples[role][i]['continuation'])}</p>")
        out.append("</div>")
    return "".join(out)


def _store(report: dict[str, Any]) -> str:
    """What the teacher store costs per token and how close its distributions are to the teacher's."""
    from distill.store.fidelity import describe_fidelity

    st, fid = report.get("store") or {}, report.get("store_fidelity")
    if not st:
        return ""
    spec = st.get("spec") or {}
    kind = f"codec {spec['codec']}" if spec.get("codec") else f"top-{spec.get('topk')} logits"
    parts = [f"{kind}, {st.get('num_tokens') or 0:,} tokens, "
             f"{st.get('bytes_per_token') or 0:.0f} bytes per token"]
    if st.get("fixed_bytes"):
        parts.append(f"plus {st['fixed_bytes'] / 2**20:.1f} MiB once for the codec")
    if fid:
        parts.append(describe_fidelity(fid))
    return "<h2>Teacher store</h2><p>" + esc("; ".join(parts)) + "</p>"


def render_causal_lm_report(report: dict[str, Any]) -> str:
    models = report.get("models") or {}
    recipe = report.get("recipe") or {}
    name = Path(str(recipe.get("output_dir") or "run")).name or "run"
    sub = " \u00b7 ".join(esc(x) for x in (report.get("task", ""), report.get("created", "")) if x)
    body = [
        (f'<header class="top"><div class="eyebrow">distill report</div><h1>{esc(name)}</h1>'
         f'<div class="muted">{sub}</div></header>'),
        f'<div class="verdict">{_verdict(report)}</div>',
        "<h2>Teacher vs students</h2>",
        _table(models, list(report.get("domains") or [])),
        ('<p class="muted small" style="margin-top:8px">Perplexity: exp of the mean next-token cross-entropy '
         "on held-out chunks (prompt tokens excluded); bits per byte: the same loss in bits per UTF-8 byte "
         "of the held-out text, comparable across tokenizers; tokens/s: forward passes over the held-out "
         "set.</p>"),
        teachers_table(report),
        selection_table(report),
        _curve(report),
        _store(report),
        _ddk(report),
        _samples(report),
    ]
    curves = training_charts(report.get("training") or {})
    if curves:
        body += ["<h2>Training</h2>", curves]
    body += ["<h2>Run</h2>", f'<div class="panel">{run_facts(report)}</div>']
    if recipe:
        body += ["<h2>Recipe</h2>", f"<pre><code>{esc(yaml.safe_dump(recipe, sort_keys=False))}</code></pre>"]
    body.append(f"<footer>{versions_line(report)}</footer>")
    return page(f"distill report \u00b7 {name}", "\n".join(body))
