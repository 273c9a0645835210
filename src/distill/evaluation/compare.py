"""``distill report``: re-render one run's report.html, or compare several runs (seeds, methods).

The comparison gives, per model, the mean, the spread (sample standard deviation, n - 1) and the 95%
t-interval of the mean of accuracy, macro-F1, agreement and latency over the runs; what distillation added
(distilled minus no-KD student, paired within each run) with its interval and how many runs' own paired test
called it significant; every run's own row; and the recipe fields that differ between the runs, as a printed
table and as a self-contained HTML page.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill.evaluation._charts import (
    MODEL_COLOURS,
    MODEL_TITLES,
    ROLES,
    Frame,
    esc,
    nice_ticks,
    num,
    page,
    pct,
    signed_points,
    svg,
    tick_format,
)
from distill.evaluation.html_classification import verdict
from distill.evaluation.html_report import HTML_FILE, REPORT_FILE, write_html_report, write_page

# (report key, column title, shown as a percentage)
METRICS = [("accuracy", "acc", True), ("macro_f1", "macro-F1", True), ("teacher_agreement", "agree", True)]


class ReportError(ValueError):
    """A directory given to ``distill report`` holds no usable report.json."""


def load_report(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(out_dir) / REPORT_FILE
    if not path.is_file():
        raise ReportError(f"{out_dir}: no {REPORT_FILE} here; "
                          "give the output_dir of a finished `distill run`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc


def metric_keys(reports: Sequence[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """The quality metrics, then one latency column per batch size measured in any run."""
    lat = sorted({k for r in reports for m in r.get("models", {}).values() for k in m
                  if k.startswith("latency_ms_b")},
                 key=lambda k: int(k.removeprefix("latency_ms_b")))
    return METRICS + [(k, f"ms@b{k.removeprefix('latency_ms_b')}", False) for k in lat]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(reports: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """role -> metric -> {mean, std, n, ci95} over the runs that measured it (ci95: the t-interval of the
    mean, None for one run)."""
    from distill.evaluation.significance import mean_interval

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for role in ROLES:
        for key, _, _ in metric_keys(reports):
            values = [float(m[key]) for r in reports if (m := r.get("models", {}).get(role))
                      and isinstance(m.get(key), (int, float))]
            if values:
                mean, std = mean_std(values)
                out.setdefault(role, {})[key] = {"mean": mean, "std": std, "n": len(values),
                                                 "ci95": mean_interval(values)["ci95"]}
    return out


def kd_gain(reports: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """What distillation added over the runs: the distilled minus the no-KD student's accuracy of each run
    (paired: same data split and seed), its mean, std and t-interval, and how many runs' own paired test
    (report["significance"]) found a significant difference, in which direction."""
    from distill.evaluation.significance import mean_interval

    gains, better, worse, tested = [], 0, 0, 0
    for r in reports:
        m = r.get("models", {})
        if "accuracy" not in m.get("student_kd", {}) or "accuracy" not in m.get("student_no_kd", {}):
            continue
        gains.append(m["student_kd"]["accuracy"] - m["student_no_kd"]["accuracy"])
        cmp = (r.get("significance") or {}).get("student_kd_vs_student_no_kd")
        if cmp:
            tested += 1
            better += int(cmp["significant"] and cmp["difference"] > 0)
            worse += int(cmp["significant"] and cmp["difference"] < 0)
    if not gains:
        return None
    return {**mean_interval(gains), "runs_tested": tested, "runs_significantly_better": better,
            "runs_significantly_worse": worse}


def describe_gain(gain: dict[str, Any]) -> str:
    """One line on what distillation added over the runs."""
    mean, (lo, hi) = gain["mean"], gain["ci95"]
    text = f"distillation {100 * mean:+.2f} points vs the no-KD student over {gain['n']} runs"
    if gain["std"] is not None:
        text += f" (std {100 * gain['std']:.2f}; 95% CI of the mean {100 * lo:+.2f} to {100 * hi:+.2f})"
        text += ": the interval excludes 0" if lo > 0 or hi < 0 else ": the interval includes 0"
    if gain["runs_tested"]:
        text += (f"; significant in {gain['runs_significantly_better']} of {gain['runs_tested']} runs' own "
                 f"paired tests" + (f", significantly worse in {gain['runs_significantly_worse']}"
                             if gain["runs_significantly_worse"] else ""))
    return text


def run_names(dirs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The shortest trailing parts of each path that tell the runs apart (``seed1/run``, ``seed2/run``)."""
    parts = [Path(os.path.abspath(d)).parts for d in dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in dirs]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(obj) if isinstance(obj, list) else obj}


def recipe_differences(reports: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Recipe fields whose value is not the same in every run (output_dir aside)."""
    flat = [_flatten(r.get("recipe") or {}) for r in reports]
    keys = sorted({k for f in flat for k in f} - {"output_dir"})
    return {k: [f.get(k) for f in flat] for k in keys
            if len({json.dumps(f.get(k), default=str) for f in flat}) > 1}


# -- text -------------------------------------------------------------------------------------------------
def _cell(value: float | None, as_pct: bool) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if as_pct else f"{value:.1f}"


def format_comparison(names: Sequence[str], reports: Sequence[dict[str, Any]]) -> str:
    """Per model: mean ± std of each metric over the runs, then every run's row (percentages for quality)."""
    keys = metric_keys(reports)
    agg = aggregate(reports)
    header = ["model", "runs"] + [title + (" %" if as_pct else "") for _, title, as_pct in keys]
    rows = []
    for role, stats in agg.items():
        n = max(s["n"] for s in stats.values())
        cells = [MODEL_TITLES[role], str(int(n))]
        for key, _, as_pct in keys:
            s = stats.get(key)
            if s is None:
                cells.append("-")
                continue
            ci = ("" if s["ci95"][0] is None
                  else f" [{_cell(s['ci95'][0], as_pct)}, {_cell(s['ci95'][1], as_pct)}]")
            cells.append(f"{_cell(s['mean'], as_pct)} ± {_cell(s['std'], as_pct)}{ci}")
        rows.append(cells)
    per_run = []
    for name, report in zip(names, reports):
        for role in ROLES:
            m = report.get("models", {}).get(role)
            if m is not None:
                per_run.append([f"{name}: {MODEL_TITLES[role]}", ""]
                               + [_cell(m.get(k), p) for k, _, p in keys])
    table = [header] + rows + [["" for _ in header]] + per_run
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [f"{len(reports)} runs; mean ± std (sample, n-1) [95% CI of the mean] per model, then each run", "",
           line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    if (gain := kd_gain(reports)) is not None:
        out += ["", describe_gain(gain)]
    out += ["", line(header), line(["-" * w for w in widths])] + [line(r) for r in per_run]
    diffs = recipe_differences(reports)
    if diffs:
        out += ["", "recipe fields that differ: " + ", ".join(diffs)]
    return "\n".join(out)


# -- HTML -------------------------------------------------------------------------------------------------
def _dot_chart(names: Sequence[str], reports: Sequence[dict[str, Any]], key: str, title: str) -> str:
    """One row per model: a dot per run, the mean as a bar and mean ± std as a band."""
    roles = [r for r in ROLES if any(r in rep.get("models", {}) for rep in reports)]
    values = {r: [(n, rep["models"][r][key]) for n, rep in zip(names, reports)
                  if isinstance(rep.get("models", {}).get(r, {}).get(key), (int, float))] for r in roles}
    flat = [v for vs in values.values() for _, v in vs]
    if not flat:
        return ""
    pad = max((max(flat) - min(flat)) * 0.2, 0.005)
    xt = nice_ticks(max(0.0, min(flat) - pad), min(1.0, max(flat) + pad))
    row = 44
    f = Frame(xt[0], xt[-1], 0, 1, left=140, height=24 + row * len(roles) + 46, bottom=46, top=10)
    fmt = tick_format(xt, 100, "%")
    parts = []
    base = f.height - f.bottom
    for x in xt:
        px = f.sx(x)
        parts.append(f'<line class="grid-line" x1="{px:.1f}" x2="{px:.1f}" y1="{f.top}" y2="{base}"/>')
        parts.append(f'<text x="{px:.1f}" y="{base + 18}" text-anchor="middle">{esc(fmt(x))}</text>')
    parts.append(f'<text class="axis-title" x="{(f.left + f.width - f.right) / 2:.1f}" y="{f.height - 6}" '
                 f'text-anchor="middle">{esc(title)}</text>')
    for i, role in enumerate(roles):
        y = f.top + 14 + i * row + row / 2
        colour = MODEL_COLOURS[role]
        parts.append(f'<text x="{f.left - 10}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{esc(MODEL_TITLES[role])}</text>')
        vs = [v for _, v in values[role]]
        if not vs:
            continue
        mean, std = mean_std(vs)
        lo, hi = f.sx(max(xt[0], mean - std)), f.sx(min(xt[-1], mean + std))
        parts.append(f'<rect x="{lo:.1f}" y="{y - 11:.1f}" width="{max(hi - lo, 1):.1f}" height="22" rx="4" '
                     f'fill="{colour}" fill-opacity="0.15"><title>{esc(MODEL_TITLES[role])}: '
                     f'mean {pct(mean, 2)}, std {100 * std:.2f} points</title></rect>')
        parts.append(f'<line x1="{f.sx(mean):.1f}" x2="{f.sx(mean):.1f}" y1="{y - 13:.1f}" y2="{y + 13:.1f}" '
                     f'stroke="{colour}" stroke-width="2.5"/>')
        for name, v in values[role]:
            parts.append(f'<circle cx="{f.sx(v):.1f}" cy="{y:.1f}" r="5.5" fill="{colour}" '
                         f'fill-opacity="0.8" stroke="#fff" stroke-width="1.5">'
                         f'<title>{esc(name)}: {pct(v, 2)}</title></circle>')
    return svg(f, parts, title)


def render_comparison(names: Sequence[str], reports: Sequence[dict[str, Any]],
                      links: Sequence[str | None] | None = None) -> str:
    """The comparison page; ``links`` are hrefs to each run's own report.html (None: no link)."""
    keys = metric_keys(reports)
    agg = aggregate(reports)
    links = list(links) if links is not None else [None] * len(reports)
    long = {"acc": "accuracy", "agree": "agreement"}
    head = "".join(f"<th>{esc(long.get(t, t.replace('@', ' @ ')))}</th>" for _, t, _ in keys)
    rows = []
    for role, stats in agg.items():
        cells = []
        for key, _, as_pct in keys:
            s = stats.get(key)
            if s is None:
                cells.append("<td>–</td>")
            elif as_pct:
                ci = ("" if s["ci95"][0] is None
                      else f'<span class="delta">95% CI {pct(s["ci95"][0], 2)} – '
                           f'{pct(s["ci95"][1], 2)}</span>')
                cells.append(f'<td>{pct(s["mean"], 2)}<span class="delta">± {100 * s["std"]:.2f} pts</span>'
                             f'{ci}</td>')
            else:
                cells.append(f'<td>{num(s["mean"], 1)}<span class="delta">± {s["std"]:.1f} ms</span></td>')
        n = max(int(s["n"]) for s in stats.values())
        rows.append(f'<tr><td class="model"><i class="sw" style="background:{MODEL_COLOURS[role]}"></i>'
                    f'{esc(MODEL_TITLES[role])}</td><td>{n}</td>{"".join(cells)}</tr>')
    summary_table = (f'<div class="table-wrap"><table><thead><tr><th>model</th><th>runs</th>{head}</tr>'
                     f'</thead><tbody>{"".join(rows)}</tbody></table></div>')

    run_rows = []
    # a column per role some run has (the data-free student only shows up for image runs that made one)
    run_roles = [r for r in ROLES
                 if r != "student_datafree" or any(r in rep.get("models", {}) for rep in reports)]
    for name, report, link in zip(names, reports, links):
        label = f'<a href="{esc(link)}">{esc(name)}</a>' if link else esc(name)
        summary = report.get("summary", {})
        cells = [f"<td>{pct(report.get('models', {}).get(r, {}).get('accuracy'), 2)}</td>" for r in run_roles]
        gain = summary.get("kd_gain_accuracy")
        cells.append(f"<td>{signed_points(gain) if gain is not None else '–'}</td>")
        cells.append(f"<td>{pct(summary.get('accuracy_retained'))}</td>")
        cells.append(
            f"<td>{pct(report.get('models', {}).get('student_kd', {}).get('teacher_agreement'))}</td>")
        run_rows.append(f'<tr><td class="model">{label}</td>{"".join(cells)}</tr>')
    run_head = "".join(f"<th>{esc(MODEL_TITLES[r])} acc</th>" for r in run_roles)
    runs_table = (f'<div class="table-wrap"><table><thead><tr><th>run</th>{run_head}<th>KD gain (pts)</th>'
                  f'<th>retained</th><th>agreement</th></tr></thead><tbody>{"".join(run_rows)}</tbody></table></div>')

    charts = [c for c in (_dot_chart(names, reports, "accuracy", "test accuracy"),
                          _dot_chart(names, reports, "macro_f1", "test macro-F1")) if c]
    body = [
        (f'<header class="top"><div class="eyebrow">distill comparison</div><h1>{len(reports)} runs</h1>'
        '<div class="muted">mean ± sample standard deviation (n − 1) over the runs</div></header>'),
        "<h2>Per model</h2>", summary_table,
    ]
    if (gain := kd_gain(reports)) is not None:
        body.append(f'<p class="verdict">{esc(describe_gain(gain))}.</p>')
    if charts:
        body += ['<div class="grid" style="margin-top:16px">'] + [
            f"<figure><figcaption>{t} <span class=\"muted\">· dots: runs, line: mean, band: ± std</span>"
            f"</figcaption>{c}</figure>" for t, c in zip(("Accuracy", "Macro-F1"), charts)] + ["</div>"]
    body += ["<h2>Runs</h2>", runs_table]
    verdicts = "".join(f"<li><b>{esc(n)}</b>: {verdict(r)}</li>" for n, r in zip(names, reports))
    body.append(f'<div class="panel" style="margin-top:16px"><ul style="margin:0;padding-left:20px">'
                f'{verdicts}</ul></div>')
    diffs = recipe_differences(reports)
    if diffs:
        dh = "".join(f"<th>{esc(n)}</th>" for n in names)
        drows = "".join(f'<tr><td class="mono">{esc(k)}</td>'
                        + "".join(f"<td>{esc(v)}</td>" for v in vs) + "</tr>"
                        for k, vs in diffs.items())
        body += ["<h2>What differs between the recipes</h2>",
                 (f'<div class="table-wrap"><table><thead><tr><th>field</th>{dh}</tr></thead><tbody>{drows}'
                 "</tbody></table></div>")]
    versions = sorted({" · ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items()) for r in reports})
    body.append(f"<footer>{'<br>'.join(esc(v) for v in versions)}</footer>")
    return page(f"distill comparison · {len(reports)} runs", "\n".join(body))


def report(out_dirs: Sequence[str | os.PathLike[str]],
           out: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """What ``distill report`` does; returns the page written and the text to print."""
    if not out_dirs:
        raise ReportError("give at least one run output directory")
    reports = [load_report(d) for d in out_dirs]  # all checked before anything is written
    if len(out_dirs) == 1:
        from distill.evaluation.report import format_table, summarise

        path = write_html_report(out_dirs[0], out)
        models = reports[0].get("models", {})
        return path, format_table(models, reports[0].get("summary") or summarise(models))
    path = Path(out or "report_compare.html")
    names = run_names(out_dirs)
    links = [os.path.relpath(Path(d) / HTML_FILE, path.parent.resolve())
             if (Path(d) / HTML_FILE).exists() else None
             for d in (Path(d).resolve() for d in out_dirs)]
    return write_page(path, render_comparison(names, reports, links)), format_comparison(names, reports)
