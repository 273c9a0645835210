"""Size and CPU latency of the models a run compares, measured so that the figures agree with each other.

Latency is timed *interleaved*: after a warm-up of every model, each round runs one forward pass of every
model on the same inputs, in a fresh random order each round (seeded), for at least ``rounds`` rounds and at
least ``min_seconds``. Whatever else the machine does during the measurement then lands on all models alike,
instead of on whichever model happened to be timed while another process held the cores; the random order
also keeps any periodic background activity from lining up with one position in the round.

The figure reported for a model is the *median* of its round times, with the spread (q3 - q1) / median saying
how noisy the machine was; above :data:`UNRELIABLE_SPREAD` the figure is marked unreliable wherever it is
shown. (Low quantiles were tried first: on a loaded machine the times are bimodal, a fast mode when the model
got the cores and a slow one when it waited, and a lower quartile jumps between the modes: two identical
models came out 2x apart, while their medians agreed within 7%.) A speed-up is the ratio of the two medians,
with a 95% interval from resampling the rounds.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.models import model_inputs

UNRELIABLE_SPREAD = 0.25
"""A figure whose interquartile range exceeds this share of its median is marked unreliable (on a quiet
machine the spread of a CPU forward pass is a few per cent; on a machine shared with other work it is
tens)."""

Runner = Callable[[], Any]
"""One forward pass of one model on fixed inputs."""


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def dir_size_mb(path: str | os.PathLike[str], pattern: str = "*.safetensors") -> float:
    files = list(Path(path).glob(pattern)) or list(Path(path).glob("*.bin"))
    return sum(f.stat().st_size for f in files) / 2**20


def weights_size_mb(model) -> float:
    """Size of the weights as saved (fp32 unless the model is in another dtype)."""
    return sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 2**20


def summarise_times(values: list[float]) -> dict[str, float]:
    """The figure (the median), quartiles and relative spread ((q3 - q1) / median) of repeated wall times in
    ms."""
    x = np.asarray(values, dtype=np.float64)
    q1, median, q3 = (float(v) for v in np.quantile(x, [0.25, 0.5, 0.75]))
    return {"ms": median, "median_ms": median, "q1_ms": q1, "q3_ms": q3,
            "spread": (q3 - q1) / median if median > 0 else 0.0, "rounds": int(x.shape[0])}


def speedup_interval(reference: list[float], other: list[float], samples: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """``reference``'s figure over ``other``'s (how many times faster ``other`` is), with a 95% interval from
    resampling the rounds (the same rounds for both: they were timed side by side)."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    ratio = float(np.median(a) / np.median(b))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.shape[0], size=(samples, a.shape[0]))
    boot = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"ratio": ratio, "ci95": [float(lo), float(hi)]}


@torch.no_grad()
def median_rel_error(values: list[float]) -> float:
    """Relative standard error of the median of ``values``, from their interquartile range (for a normal
    sample SE(median) = 1.2533 sigma / sqrt(n) and sigma = IQR / 1.349; used as a stopping rule, not
    reported)."""
    n = len(values)
    if n < 8:
        return float("inf")
    q1, median, q3 = np.quantile(np.asarray(values, dtype=np.float64), [0.25, 0.5, 0.75])
    return float(0.929 * (q3 - q1) / np.sqrt(n) / median) if median > 0 else 0.0


@torch.no_grad()
def interleaved_times(runners: Mapping[str, Runner], rounds: int = 20, warmup: int = 2,
                      threads: int | None = None, min_seconds: float = 0.0, max_rounds: int = 1000,
                      seed: int = 0, precision: float = 0.0,
                      max_seconds: float = float("inf")) -> dict[str, list[float]]:
    """Wall times (ms) of repeated calls of every runner, interleaved: each round calls every runner once, in
    an order drawn afresh for the round (``seed``), so no runner always comes first or right after the same
    neighbour. ``warmup`` untimed calls of every runner come first (allocator, lazy initialisation, caches).

    How many rounds: at least ``rounds`` and at least ``min_seconds``; then, with ``precision`` > 0, more
    until every runner's median is known to that relative standard error (a noisy machine needs more rounds
    for the same precision), unless ``max_seconds`` have passed; never over ``max_rounds``."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = np.random.default_rng(seed)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    # as timeit does: no garbage collection while timing. A collection's cost grows with everything else the
    # process holds and lands on whichever call crosses the allocation threshold; one full collection first,
    # so none is pending
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()

    def more(r: int, elapsed: float) -> bool:
        if r >= max_rounds:
            return False
        if r < rounds or elapsed < min_seconds:
            return True
        if precision <= 0 or elapsed >= max_seconds:
            return False
        if r % 10:  # the precision is checked every 10 rounds
            return True
        return max(median_rel_error(v) for v in times.values()) > precision

    try:
        for _ in range(warmup):
            for n in names:
                runners[n]()
        start = time.perf_counter()
        r = 0
        while more(r, time.perf_counter() - start):
            for i in rng.permutation(len(names)):
                n = names[i]
                t0 = time.perf_counter()
                runners[n]()
                times[n].append((time.perf_counter() - t0) * 1000)
            r += 1
    finally:
        torch.set_num_threads(old_threads)
        if gc_was_enabled:
            gc.enable()
    return times


def latency_report(times: Mapping[str, Mapping[int, list[float]]], reference: str | None = "teacher",
                   threads: int | None = None) -> dict[str, Any]:
    """The report's ``latency`` section from interleaved times ``{model: {batch size: [ms per round]}}``: per
    model and batch size the figure (median), quartiles and spread; per model the speed-up over
    ``reference`` with its interval; ``reliable`` false when any spread exceeds :data:`UNRELIABLE_SPREAD`
    (``noisy`` lists which)."""
    models: dict[str, dict[str, Any]] = {}
    speedups: dict[str, dict[str, Any]] = {}
    noisy = []
    for name, by_batch in times.items():
        models[name] = {}
        for bs, values in by_batch.items():
            stats = summarise_times(values)
            models[name][f"b{bs}"] = stats
            if stats["spread"] > UNRELIABLE_SPREAD:
                noisy.append(f"{name}@b{bs}")
    if reference is not None and reference in times:
        for name, by_batch in times.items():
            if name == reference:
                continue
            speedups[name] = {f"b{bs}": speedup_interval(times[reference][bs], values)
                              for bs, values in by_batch.items() if times[reference].get(bs)}
    rounds = min((len(v) for by_batch in times.values() for v in by_batch.values()), default=0)
    return {"method": "interleaved", "statistic": "median", "rounds": rounds,
            "threads": threads or torch.get_num_threads(), "reference": reference, "models": models,
            "speedup": speedups, "reliable": not noisy, "noisy": noisy}


def time_models(runners: Mapping[str, Mapping[int, Runner]], rounds: int = 20, warmup: int = 2,
                threads: int | None = None, reference: str | None = "teacher", min_seconds: float = 0.0,
                precision: float = 0.0, max_seconds: float = float("inf")) -> dict[str, Any]:
    """Interleaved timing of every model at every batch size: ``runners[model][batch size]`` runs one forward
    pass (see :func:`interleaved_times` for how many rounds). Returns :func:`latency_report`'s section."""
    flat = {f"{m}@{bs}": (m, bs, fn) for m, by_batch in runners.items() for bs, fn in by_batch.items()}
    times = interleaved_times({k: fn for k, (_, _, fn) in flat.items()}, rounds, warmup, threads, min_seconds,
                              precision=precision, max_seconds=max_seconds)
    nested: dict[str, dict[int, list[float]]] = {}
    for k, (m, bs, _) in flat.items():
        nested.setdefault(m, {})[bs] = times[k]
    return latency_report(nested, reference, threads)


def tile_rows(inputs: Mapping[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
    """The first ``batch_size`` rows of every tensor in ``inputs``, repeating the rows when there are
    fewer."""
    n = next(iter(inputs.values())).shape[0]
    reps = -(-batch_size // n)
    return {k: v.repeat(reps, *([1] * (v.dim() - 1)))[:batch_size] for k, v in inputs.items()}


def forward_runner(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], batch_size: int) -> Runner:
    """One forward pass ``model(**inputs)`` (on CPU, eval mode) on ``batch_size`` rows of ``inputs`` (the
    model's keyword arguments; tiled when there are fewer rows), so every model sees the same examples (texts
    padded by each model's own tokenizer, or images)."""
    model = model.eval().to("cpu")
    x = tile_rows(inputs, batch_size)
    return lambda: model(**x)


def apply_latency(models: dict[str, dict[str, Any]], latency: dict[str, Any]) -> None:
    """Copy the interleaved figures into the per-model metrics the tables read: ``latency_ms_b<bs>`` (the
    figure, the median) and ``latency_spread_b<bs>`` (interquartile range / median)."""
    for name, by_batch in latency["models"].items():
        if name not in models:
            continue
        for b, stats in by_batch.items():
            models[name][f"latency_ms_{b}"] = stats["ms"]
            models[name][f"latency_spread_{b}"] = stats["spread"]


def unreliable_note(latency: dict[str, Any] | None) -> str | None:
    """One sentence for tables and verdicts when the timing is not to be trusted, else None."""
    if not latency or latency.get("reliable", True):
        return None
    # a busy machine is the usual cause, but millisecond models jitter on a quiet one too: say what was seen
    return ("latency unreliable: the round times varied widely (interquartile range over "
            f"{int(100 * UNRELIABLE_SPREAD)}% of the median for {', '.join(latency.get('noisy', []))}); "
            "re-time on a quiet machine or with more rounds (eval.latency_min_seconds)")


@torch.no_grad()
def cpu_latency_ms(model, batch: dict[str, torch.Tensor], batch_size: int, repeats: int = 20,
                   threads: int | None = None, prefix: str = "") -> float:
    """Wall time (ms, the median of ``repeats`` passes) of one forward pass of a single model at
    ``batch_size`` on CPU, after two warm-up passes. To compare models, use :func:`time_models`, which
    interleaves them."""
    report = time_models({"model": {batch_size: forward_runner(model, model_inputs(batch, prefix),
                                                               batch_size)}},
                         rounds=repeats, threads=threads, reference=None)
    return float(report["models"]["model"][f"b{batch_size}"]["ms"])
