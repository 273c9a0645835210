"""``report.html``: a run's report.json as a page people would rather look at.

One self-contained file (inline CSS, SVG charts drawn here, no scripts, nothing fetched). Each task has its
page (:mod:`~distill.evaluation.html_classification`, :mod:`~distill.evaluation.html_embedding`,
:mod:`~distill.evaluation.html_causal_lm`), built from the shared pieces of
:mod:`~distill.evaluation.report_parts`; this module picks the page for a report and writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.evaluation.html_causal_lm import render_causal_lm_report
from distill.evaluation.html_classification import render_classification_report, verdict
from distill.evaluation.html_embedding import render_embedding_report
from distill.evaluation.report_parts import HTML_FILE, REPORT_FILE, write_page

__all__ = ["HTML_FILE", "REPORT_FILE", "render_report", "verdict", "write_html_report", "write_page"]


def render_report(report: dict[str, Any], predictions: list[dict[str, Any]] | None = None) -> str:
    """The page for one run's report, by its task."""
    if report.get("task") == "sentence-embedding":
        return render_embedding_report(report)
    if report.get("task") == "causal-lm":
        return render_causal_lm_report(report)
    return render_classification_report(report, predictions)


def write_html_report(out_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Render ``out_dir/report.json`` (+ ``predictions.jsonl`` when the report has no analysis) to
    ``out_dir/report.html`` (or ``out``), written atomically."""
    from distill.evaluation.predictions import FILENAME, read_predictions

    out_dir = Path(out_dir)
    report = json.loads((out_dir / REPORT_FILE).read_text(encoding="utf-8"))
    predictions = None
    if not report.get("analysis") and (out_dir / FILENAME).exists():
        predictions = read_predictions(out_dir / FILENAME)
    path = Path(out) if out else out_dir / HTML_FILE
    return write_page(path, render_report(report, predictions))
