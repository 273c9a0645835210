"""Small building blocks for the HTML reports: escaping, number formats, the page shell (inline CSS) and
three inline-SVG charts (scatter, horizontal bars, lines). No scripts and no network: a report opens
anywhere, from a file, years later."""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# one colour per model, used by every chart, table swatch and confusion matrix
MODEL_COLOURS = {"teacher": "#3b5bdb", "student_kd": "#e8590c", "student_no_kd": "#74808c",
                 "student_datafree": "#2f9e44"}  # the last: image runs with vision.datafree
MODEL_TITLES = {"teacher": "teacher", "student_kd": "student (distilled)", "student_no_kd": "student (no KD)",
                "student_datafree": "student (data-free)"}
ROLES = tuple(MODEL_COLOURS)
# loss parts keep their colour across stages; unknown parts take the next free colour
PART_COLOURS = {"loss": "#212529", "loss/kd": "#7048e8", "loss/ce": "#0c8599", "loss/hard_kd": "#c2255c",
                "loss/hidden": "#2b8a3e"}
EXTRA_COLOURS = ["#e67700", "#1971c2", "#ae3ec9", "#5c940d", "#d9480f", "#495057"]

Fmt = Callable[[float], str]


def esc(value: Any) -> str:
    """HTML-escape anything shown on the page (texts, labels, paths and recipe values are user data)."""
    return html.escape(str(value), quote=True)


def pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def count(n: float | None) -> str:
    """A parameter count the way people say it: 22.7M, 38.6k."""
    if n is None:
        return "–"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def megabytes(mb: float | None) -> str:
    """Three significant figures at most, never a misleading 0.0."""
    if mb is None:
        return "–"
    return f"{mb:,.0f}" if mb >= 100 else f"{mb:.1f}" if mb >= 10 else f"{mb:.2f}" if mb >= 1 else f"{mb:.3f}"


def speed(ratio: float) -> tuple[str, str]:
    """A latency ratio (teacher / student) as ('2.2×', 'faster') or ('3.1×', 'slower')."""
    if ratio >= 1:
        return f"{ratio:.1f}\u00d7", "faster"
    return f"{1 / ratio:.1f}\u00d7", "slower"


def signed_points(v: float) -> str:
    """A difference of two fractions as signed percentage points (typographic minus)."""
    s = f"{100 * abs(v):.2f}"
    return ("+" if v >= 0 else "\u2212") + s


def part_colour(name: str, seen: dict[str, str]) -> str:
    if name in PART_COLOURS:
        return PART_COLOURS[name]
    if name not in seen:
        seen[name] = EXTRA_COLOURS[len(seen) % len(EXTRA_COLOURS)]
    return seen[name]


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d9dee3; --panel: #ffffff; --bg: #f5f6f8;
        --accent: #e8590c; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Liberation Sans",
             "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 36px 28px 56px; }
header.top { margin-bottom: 22px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--muted);
           font-weight: 600; }
h1 { font-size: 30px; line-height: 1.2; margin: 4px 0 6px; letter-spacing: -.01em; }
h2 { font-size: 19px; margin: 38px 0 12px; letter-spacing: -.005em; }
h3 { font-size: 15px; margin: 0 0 8px; }
p { margin: 0 0 10px; }
.muted { color: var(--muted); }
.small { font-size: 13px; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono",
                                "DejaVu Sans Mono", monospace; }
code { font-size: 13px; background: #eef1f4; padding: 1px 5px; border-radius: 4px; word-break: break-all; }
pre code { background: none; padding: 0; font-size: inherit; word-break: normal; }
.verdict { font-size: 21px; line-height: 1.45; font-weight: 500; background: var(--panel);
           border: 1px solid var(--line); border-left: 5px solid var(--accent); border-radius: 10px;
           padding: 16px 20px; margin: 18px 0; }
.verdict b { font-weight: 700; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(145px, 1fr)); gap: 12px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; }
.card .v { font-size: 26px; font-weight: 700; letter-spacing: -.01em; font-variant-numeric: tabular-nums; }
.card .k { font-size: 13px; color: var(--muted); }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 16px 18px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; }
.stack { display: flex; flex-direction: column; gap: 16px; min-width: 0; }
.stack figure { flex: 1; }
.grid3 { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 16px; }
figure { margin: 0; background: var(--panel); border: 1px solid var(--line); border-radius: 10px;
         padding: 14px 16px 10px; min-width: 0; }
figcaption { font-weight: 600; margin-bottom: 2px; }
figcaption .muted { font-weight: 400; }
svg.chart { width: 100%; height: auto; display: block; overflow: visible; }
svg.chart text { fill: #3d444d; font-size: 12px; }
svg.chart .axis-title { fill: var(--muted); font-size: 12px; }
svg.chart .grid-line { stroke: #e8ebee; stroke-width: 1; }
svg.chart .axis-line { stroke: #aeb6bf; stroke-width: 1; }
svg.chart .point-label { font-size: 12.5px; font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 13px; margin: 4px 0 6px; color: #3d444d; }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.sw { display: inline-block; width: 11px; height: 11px; border-radius: 3px; flex: none; }
.table-wrap { overflow-x: auto; background: var(--panel); border: 1px solid var(--line);
              border-radius: 10px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 9px 12px; border-bottom: 1px solid #e8ebee; text-align: right; white-space: nowrap; }
th { font-size: 12.5px; font-weight: 600; color: var(--muted); background: #fafbfc; }
tr:last-child td { border-bottom: 0; }
th:first-child, td:first-child { text-align: left; }
td.model { font-weight: 600; }
td.model .sw { margin-right: 8px; vertical-align: -1px; }
.delta { display: block; font-size: 12px; color: var(--muted); font-weight: 400; }
.warn { color: #b45309; font-weight: 600; }
.warn-box { border-left: 4px solid #b45309; margin: 12px 0; }
td.text { white-space: normal; text-align: left; min-width: 260px; max-width: 460px; }
td.text .pair { display: block; color: var(--muted); margin-top: 2px; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12.5px; font-weight: 600; }
.tag.ok { background: #e6f4ea; color: #1e6b34; }
.tag.bad { background: #fde8e8; color: #a61b1b; }
.tag.none { background: #eef1f4; color: #3d444d; }
.prob { display: block; font-size: 12px; color: var(--muted); }
.gapbar { display: inline-block; height: 8px; border-radius: 4px; background: var(--accent);
          vertical-align: middle; margin-right: 6px; }
table.cm { width: auto; margin: 6px 0 4px; }
table.cm th, table.cm td { text-align: center; padding: 7px 10px; min-width: 54px; }
table.cm td { border: 1px solid #fff; font-weight: 600; }
table.cm th.rowhead { text-align: right; }
.cm-note { font-size: 12px; color: var(--muted); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 6px 18px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; min-width: 0; overflow-wrap: anywhere; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px;
      overflow: auto; font-size: 12.5px; line-height: 1.5; margin: 0; }
footer { margin-top: 44px; padding-top: 14px; border-top: 1px solid var(--line); font-size: 13px;
         color: var(--muted); }
a { color: #1f5fbf; }
@media print { body { background: #fff; } main { padding: 0; }
               .panel, figure, .table-wrap, .card, .verdict { break-inside: avoid; } }
"""


def page(title: str, body: str) -> str:
    """The complete HTML document around ``body`` (already escaped)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # nothing on the page is loaded from anywhere: say so to the browser as well
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def legend(items: Sequence[tuple[str, str]]) -> str:
    """A wrapping HTML legend of (label, colour)."""
    return '<div class="legend">' + "".join(
        f'<span><i class="sw" style="background:{c}"></i>{esc(label)}</span>' for label, c in items
    ) + "</div>"


# -- axes -------------------------------------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] with a 1-2-2.5-5 step."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag * (1 + 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    n = math.ceil((hi - start) / step - 1e-9)
    return [round(start + i * step, 12) for i in range(n + 1)]


def tick_format(ticks: Sequence[float], scale: float = 1.0, suffix: str = "") -> Fmt:
    """Enough decimals to tell neighbouring ticks apart."""
    step = abs(ticks[1] - ticks[0]) * scale if len(ticks) > 1 else 1.0
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step > 0 and abs(round(step * 10 ** digits) - step * 10 ** digits) > 1e-6:
        digits += 1  # 2.5-type steps
    return lambda v: f"{v * scale:,.{digits}f}{suffix}"


@dataclass
class Frame:
    """Data-to-pixel mapping of one chart; everything is drawn in a fixed viewBox and scaled by CSS."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = 520
    height: int = 300
    left: int = 68
    right: int = 18
    top: int = 14
    bottom: int = 46

    def sx(self, x: float) -> float:
        return self.left + (x - self.x0) / ((self.x1 - self.x0) or 1) * (self.width - self.left - self.right)

    def sy(self, y: float) -> float:
        return self.height - self.bottom - (y - self.y0) / ((self.y1 - self.y0) or 1) * (
            self.height - self.top - self.bottom)

    def axes(self, xticks: Sequence[float], yticks: Sequence[float], xfmt: Fmt, yfmt: Fmt,
             xtitle: str, ytitle: str) -> list[str]:
        out = []
        for y in yticks:
            py = self.sy(y)
            out.append(f'<line class="grid-line" x1="{self.left}" x2="{self.width - self.right}" '
                       f'y1="{py:.1f}" y2="{py:.1f}"/>')
            out.append(f'<text x="{self.left - 8}" y="{py + 4:.1f}" text-anchor="end">{esc(yfmt(y))}</text>')
        base = self.height - self.bottom
        for x in xticks:
            px = self.sx(x)
            out.append(f'<line class="axis-line" x1="{px:.1f}" x2="{px:.1f}" y1="{base}" y2="{base + 4}"/>')
            out.append(f'<text x="{px:.1f}" y="{base + 18}" text-anchor="middle">{esc(xfmt(x))}</text>')
        out.append(f'<line class="axis-line" x1="{self.left}" x2="{self.width - self.right}" '
                   f'y1="{base}" y2="{base}"/>')
        mid_x = (self.left + self.width - self.right) / 2
        out.append(f'<text class="axis-title" x="{mid_x:.1f}" y="{self.height - 6}" text-anchor="middle">'
                   f'{esc(xtitle)}</text>')
        mid_y = (self.top + self.height - self.bottom) / 2
        out.append(f'<text class="axis-title" transform="translate(13 {mid_y:.1f}) rotate(-90)" '
                   f'text-anchor="middle">{esc(ytitle)}</text>')
        return out


def svg(frame: Frame, parts: list[str], label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {frame.width} {frame.height}" role="img" '
            f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg"><title>{esc(label)}</title>'
            + "".join(parts) + "</svg>")


def _spread_labels(ys: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """Move label baselines apart (keeping their order) so none overlap, within [lo, hi]."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = list(ys)
    for a, b in itertools.pairwise(order):
        out[b] = max(out[b], out[a] + gap)
    overflow = out[order[-1]] - hi if order else 0
    if overflow > 0:
        for i in order:
            out[i] = max(lo, out[i] - overflow)
        for a, b in itertools.pairwise(order):
            out[b] = max(out[b], out[a] + gap)
    return out


# -- charts -----------------------------------------------------------------------------------------------
def scatter(points: Sequence[tuple[str, float, float, str, str]], xtitle: str, ytitle: str, label: str,
            xfmt_suffix: str = "", y_as_percent: bool = True) -> str:
    """Labelled points (label, x, y, colour, tooltip). The x axis starts at 0, so distances read as ratios."""
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    xt = nice_ticks(0.0, max(xs) * 1.12)
    pad = max((max(ys) - min(ys)) * 0.25, 0.005)
    yt = nice_ticks(max(0.0, min(ys) - pad), min(1.0, max(ys) + pad) if y_as_percent else max(ys) + pad)
    f = Frame(xt[0], xt[-1], yt[0], yt[-1], right=24)
    parts = f.axes(xt, yt, tick_format(xt, suffix=xfmt_suffix), tick_format(yt, 100 if y_as_percent else 1,
                   "%" if y_as_percent else ""), xtitle, ytitle)
    px = [f.sx(p[1]) for p in points]
    py = [f.sy(p[2]) for p in points]
    label_y = _spread_labels([y + 4 for y in py], 16, f.top + 10, f.height - f.bottom - 4)
    for (name, _x, _y, colour, tip), X, Y, LY in zip(points, px, py, label_y):
        parts.append(f'<circle cx="{X:.1f}" cy="{Y:.1f}" r="7" fill="{colour}" stroke="#fff" '
                     f'stroke-width="2"><title>{esc(tip)}</title></circle>')
        right_side = X < f.width - f.right - 150  # put the label where there is room for it
        tx = X + 12 if right_side else X - 12
        parts.append(f'<text class="point-label" x="{tx:.1f}" y="{LY:.1f}" '
                     f'text-anchor="{"start" if right_side else "end"}" '
                     f'style="fill:{colour}">{esc(name)}</text>')
    return svg(f, parts, label)


def hbars(items: Sequence[tuple[str, float, str, str]], label: str, unit: str = "") -> str:
    """Horizontal bars (label, value, colour, text shown after the bar); the axis starts at 0."""
    row, top = 40, 8
    width, left, right = 520, 140, 175
    height = top + row * len(items) + 6
    vmax = max((v for _, v, _, _ in items), default=1.0) or 1.0
    parts = []
    for i, (name, value, colour, text) in enumerate(items):
        y = top + i * row
        w = max(2.0, value / vmax * (width - left - right))
        parts.append(f'<text x="{left - 10}" y="{y + 20}" text-anchor="end">{esc(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 6}" width="{w:.1f}" height="22" rx="4" fill="{colour}">'
                     f'<title>{esc(name)}: {esc(text)}</title></rect>')
        parts.append(f'<text x="{left + w + 8:.1f}" y="{y + 21}">{esc(text)}</text>')
    f = Frame(0, 1, 0, 1, width=width, height=height)
    return svg(f, parts, label)


def lines(series: Sequence[tuple[str, list[tuple[float, float]], str]], xtitle: str, ytitle: str, label: str,
          y_as_percent: bool = False, dashed: Sequence[str] = (), size: tuple[int, int] = (520, 300)) -> str:
    """Line chart of (name, [(x, y), ...], colour), drawn in order (the last on top); series named in
    ``dashed`` are dashed so a line exactly under another still shows. Every point carries a tooltip."""
    pts = [p for _, s, _ in series for p in s if math.isfinite(p[1])]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xt = nice_ticks(min(0.0, min(xs)), max(xs) if max(xs) > 0 else 1.0)  # steps and epochs count from 0
    if y_as_percent:
        pad = max((max(ys) - min(ys)) * 0.2, 0.01)
        yt = nice_ticks(max(0.0, min(ys) - pad), min(1.0, max(ys) + pad))
    else:
        yt = nice_ticks(min(0.0, min(ys)), max(ys))
    f = Frame(xt[0], xt[-1], yt[0], yt[-1], width=size[0], height=size[1], left=62)
    parts = f.axes(xt, yt, tick_format(xt),
                   tick_format(yt, 100 if y_as_percent else 1, "%" if y_as_percent else ""), xtitle, ytitle)
    show = (lambda v: f"{100 * v:.2f}%") if y_as_percent else (lambda v: f"{v:.4g}")
    for name, s, colour in series:
        s = [p for p in s if math.isfinite(p[1])]
        if not s:
            continue
        coords = " ".join(f"{f.sx(x):.1f},{f.sy(y):.1f}" for x, y in s)
        if len(s) > 1:
            dash = ' stroke-dasharray="6 4"' if name in dashed else ""
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2.2" '
                         f'stroke-linejoin="round" stroke-linecap="round"{dash}/>')
        r = 3.5 if len(s) <= 30 else 0  # dots only while they stay readable; tooltips always
        for x, y in s:
            parts.append(f'<circle cx="{f.sx(x):.1f}" cy="{f.sy(y):.1f}" r="{r or 2.5}" fill="{colour}" '
                         f'fill-opacity="{1 if r else 0}"><title>{esc(name)}: {esc(show(y))} at '
                         f'{esc(xtitle)} {x:g}</title></circle>')
    return svg(f, parts, label)
