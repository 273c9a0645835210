"""Is a difference between two models on the same test set real? Paired tests and intervals.

Every model of a run is scored on the same test examples, so comparisons are *paired*: what matters is where
the two models differ, not their separate scores. Three kinds of per-example evidence:

- classification: which examples each model got right. Exact McNemar test on the discordant examples (one
  model right, the other wrong), and a paired bootstrap 95% interval of the accuracy difference.
- sentence embeddings: each model's error on each held-out pair (|student cosine - teacher cosine|). Paired
  bootstrap interval of the mean difference, and a two-sided sign-flip (permutation) test.
- language models: each model's negative log-likelihood of each held-out token. Tokens of one chunk are not
  independent, so the resampling unit is the chunk: a cluster bootstrap interval of the per-token NLL
  difference (and of the perplexity ratio), and a sign-flip test over the chunks' summed differences.

A difference is called significant at p < 0.05. Every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

ALPHA = 0.05
BOOTSTRAP_SAMPLES = 10_000


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """Exact (binomial) McNemar test of two classifiers on the same examples.

    ``a_only``: examples only A got right, ``b_only``: only B. Under the null hypothesis (equal accuracy) each
    discordant example is a fair coin, so p = two-sided binomial tail of ``min(a_only, b_only)`` in
    ``a_only + b_only`` trials at 1/2 (1.0 when there is no discordant example).
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"the two models were scored on different examples ({a.shape[0]} vs {b.shape[0]})")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    k = min(a_only, b_only)
    if n == 0:
        p = 1.0
    elif n <= 2000:
        # P(X <= k) for X ~ Binomial(n, 1/2), doubled for two sides: exact integers, one exact division (a
        # float division of 2**n would overflow past n = 1023)
        tail = sum(math.comb(n, i) for i in range(k + 1))
        p = min(1.0, float(Fraction(2 * tail, 2**n)))
    else:
        from scipy.stats import binom

        p = min(1.0, 2.0 * float(binom.cdf(k, n, 0.5)))
    return {"a_only": a_only, "b_only": b_only, "p": p}


def bootstrap_interval(diffs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                       weights: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile 95% interval of the mean of ``diffs`` (one value per independent unit), resampling units
    with replacement. With ``weights`` (e.g. tokens per chunk) the statistic is ``sum(diffs) / sum(weights)``,
    the ratio estimator of a per-token mean when ``diffs`` holds per-chunk sums."""
    diffs = np.asarray(diffs, dtype=np.float64)
    n = diffs.shape[0]
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats = np.empty(samples)
    for start in range(0, samples, 1000):  # chunks of 1000 resamples keep memory at 1000 x n
        m = min(1000, samples - start)
        idx = rng.integers(0, n, size=(m, n))
        if weights is None:
            stats[start:start + m] = diffs[idx].mean(axis=1)
        else:
            w = np.asarray(weights, dtype=np.float64)[idx].sum(axis=1)
            stats[start:start + m] = diffs[idx].sum(axis=1) / np.where(w > 0, w, 1.0)
    lo, hi = np.quantile(stats, [ALPHA / 2, 1 - ALPHA / 2])
    return float(lo), float(hi)


def sign_flip_p(diffs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> float:
    """Two-sided paired permutation test of ``mean(diffs) == 0``: under the null each unit's difference is as
    likely to have the other sign. Exact (all 2^n sign patterns) for n <= 16, Monte Carlo otherwise, with the
    +1 correction so p is never 0."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.shape[0]
    if n == 0 or not np.any(d):
        return 1.0
    observed = abs(d.sum())
    tol = 1e-12 * max(np.abs(d).sum(), 1.0)
    if n <= 16:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # (2^n, n)
        return float((np.abs(signs @ d) >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, samples, 1000):
        m = min(1000, samples - start)
        signs = rng.integers(0, 2, size=(m, n)) * 2 - 1
        hits += int((np.abs(signs @ d) >= observed - tol).sum())
    return float((hits + 1) / (samples + 1))


def compare_accuracy(correct_a: Sequence[bool], correct_b: Sequence[bool], seed: int = 0) -> dict[str, Any]:
    """A vs B on the same examples: accuracy difference (A - B), its paired bootstrap 95% interval, and the
    exact McNemar p."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    test = mcnemar_exact(a > 0, b > 0)
    lo, hi = bootstrap_interval(a - b, seed=seed)
    return {"metric": "accuracy", "n": int(a.shape[0]), "difference": float((a - b).mean()),
            "ci95": [lo, hi], "p": test["p"], "test": "exact McNemar",
            "discordant": {"a_only": test["a_only"], "b_only": test["b_only"]},
            "significant": bool(test["p"] < ALPHA)}


def compare_errors(errors_a: Sequence[float], errors_b: Sequence[float], metric: str,
                   seed: int = 0) -> dict[str, Any]:
    """A vs B from a per-unit error each (lower is better): mean difference (A - B; negative: A is better),
    its paired bootstrap 95% interval and the sign-flip p."""
    a, b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the two models were scored on different units ({a.shape[0]} vs {b.shape[0]})")
    d = a - b
    lo, hi = bootstrap_interval(d, seed=seed)
    p = sign_flip_p(d, seed=seed)
    return {"metric": metric, "n": int(d.shape[0]), "difference": float(d.mean()), "ci95": [lo, hi], "p": p,
            "test": "paired sign-flip", "significant": bool(p < ALPHA), "lower_is_better": True}


def compare_nll(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int],
                seed: int = 0) -> dict[str, Any]:
    """Language models A vs B on the same held-out chunks: ``nll_*`` are each chunk's summed token NLL (nats),
    ``tokens`` the chunk's scored tokens. Returns the per-token NLL difference (A - B; negative: A is better),
    its chunk-bootstrap 95% interval, the perplexity ratio A / B with its interval, and the sign-flip p over
    chunks."""
    a, b = np.asarray(nll_a, dtype=np.float64), np.asarray(nll_b, dtype=np.float64)
    w = np.asarray(tokens, dtype=np.float64)
    if not (a.shape == b.shape == w.shape):
        raise ValueError("the two models were scored on different chunks")
    d = a - b
    total = float(w.sum())
    mean = float(d.sum() / total) if total else math.nan
    lo, hi = bootstrap_interval(d, seed=seed, weights=w)
    p = sign_flip_p(d, seed=seed)
    return {"metric": "nll_per_token", "n": int(total), "chunks": int(d.shape[0]), "difference": mean,
            "ci95": [lo, hi], "perplexity_ratio": math.exp(mean),
            "perplexity_ratio_ci95": [math.exp(lo), math.exp(hi)],
            "p": p, "test": "sign-flip over chunks", "significant": bool(p < ALPHA), "lower_is_better": True}


def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and the 95% t-interval of the mean of independent runs (e.g. seeds)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": [None, None]}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": [None, None]}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def format_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "p = n/a"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}" if p < 0.01 else f"p = {p:.2f}"


def describe(cmp: dict[str, Any], a: str, b: str, scale: float = 100.0, unit: str = "points",
             size: str = "test examples") -> str:
    """A sentence for a verdict: ``a`` vs ``b`` with the difference, interval and p, and what it means."""
    diff, (lo, hi) = cmp["difference"], cmp["ci95"]
    sign = lambda v: f"{'+' if v >= 0 else '-'}{abs(scale * v):.2f}"  # noqa: E731
    head = f"{a} {sign(diff)} {unit} vs {b} (95% CI {sign(lo)} to {sign(hi)}, {format_p(cmp['p'])})"
    if not cmp["significant"]:
        return f"{head}: not distinguishable from {b} at this test size ({cmp['n']:,} {size})"
    better = (diff < 0) if cmp.get("lower_is_better") else (diff > 0)
    return f"{head}: significantly {'better' if better else 'worse'} than {b}"
