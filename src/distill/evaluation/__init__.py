"""Evaluation: task metrics, teacher agreement, latency and size, and the three-way comparison."""

from distill.evaluation.html_report import render_report, write_html_report
from distill.evaluation.metrics import classification_metrics, compute_metrics_fn, predict_logits
from distill.evaluation.report import format_table, summarise, write_report
from distill.evaluation.speed import count_parameters, cpu_latency_ms, weights_size_mb

__all__ = [
    "classification_metrics", "compute_metrics_fn", "predict_logits", "format_table", "summarise",
    "write_report", "count_parameters", "cpu_latency_ms", "weights_size_mb", "render_report",
    "write_html_report",
]
