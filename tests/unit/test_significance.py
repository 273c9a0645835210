"""Paired tests and intervals: golden values worked out by hand, and behaviour on cases with a known
answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill.evaluation.significance import (
    bootstrap_interval,
    compare_accuracy,
    compare_errors,
    compare_nll,
    describe,
    format_p,
    mcnemar_exact,
    mean_interval,
    sign_flip_p,
)


def test_mcnemar_golden():
    # 10 examples only A got right, 2 only B: p = 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    a = [True] * 10 + [False] * 2 + [True] * 50 + [False] * 7
    b = [False] * 10 + [True] * 2 + [True] * 50 + [False] * 7
    got = mcnemar_exact(a, b)
    assert (got["a_only"], got["b_only"]) == (10, 2)
    assert got["p"] == pytest.approx(2 * 79 / 4096, rel=1e-12)


def test_mcnemar_agrees_with_scipy_binomtest():
    from scipy.stats import binomtest

    for a_only, b_only in [(0, 5), (3, 4), (7, 19), (40, 61)]:
        a = [True] * a_only + [False] * b_only
        b = [False] * a_only + [True] * b_only
        expected = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
        assert mcnemar_exact(a, b)["p"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_without_discordant_examples_is_one():
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0


def test_mcnemar_refuses_different_lengths():
    with pytest.raises(ValueError, match="different examples"):
        mcnemar_exact([True], [True, False])


def test_sign_flip_exact_golden():
    # 8 sign patterns of [1, 2, 3]; |sum| >= 6 only for all + and all -: p = 2/8
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(0.25)
    assert sign_flip_p(np.zeros(5)) == 1.0


def test_sign_flip_monte_carlo_finds_a_real_shift_and_not_noise():
    rng = np.random.default_rng(0)
    assert sign_flip_p(rng.normal(0.5, 1.0, 200)) < 1e-3
    assert sign_flip_p(rng.normal(0.0, 1.0, 200)) > 0.05


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, 2000)
    lo, hi = bootstrap_interval(x, seed=0)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)


def test_weighted_bootstrap_is_a_ratio_estimator():
    # chunks with identical per-token difference 0.1: every resample gives exactly 0.1
    tokens = np.array([10.0, 20.0, 5.0, 40.0])
    lo, hi = bootstrap_interval(0.1 * tokens, weights=tokens)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_compare_accuracy_on_a_tiny_difference_is_not_significant():
    # 2,114 rows, 4 more right for A than for B among 80 discordant ones: like the demo's +0.19 points
    n = 2114
    a = np.ones(n, dtype=bool)
    b = np.ones(n, dtype=bool)
    a[:38] = False
    b[38:80] = False
    got = compare_accuracy(a, b)
    assert got["difference"] == pytest.approx(4 / n)
    assert got["p"] > 0.5 and not got["significant"]
    assert got["ci95"][0] < 0 < got["ci95"][1]
    text = describe(got, "the distilled student", "the no-KD student")
    assert "not distinguishable from the no-KD student at this test size (2,114 test examples)" in text


def test_compare_accuracy_on_a_clear_difference_is_significant():
    a = np.array([True] * 900 + [False] * 100)
    b = np.array([True] * 800 + [False] * 200)
    got = compare_accuracy(a, b)
    assert got["significant"] and got["p"] < 1e-6
    assert got["ci95"][0] > 0
    assert "significantly better than B" in describe(got, "A", "B")
    assert "significantly worse than A" in describe(compare_accuracy(b, a), "B", "A")


def test_compare_errors_lower_is_better():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.0, 0.2, 500)
    got = compare_errors(base - 0.05, base, "similarity_error")
    assert got["difference"] == pytest.approx(-0.05) and got["significant"]
    assert "significantly better" in describe(got, "A", "B")


def test_compare_nll_per_token_and_perplexity_ratio():
    tokens = np.array([100, 50, 80, 120] * 10)
    nll_b = 3.0 * tokens
    nll_a = 2.9 * tokens  # 0.1 nats per token better on every chunk
    got = compare_nll(nll_a, nll_b, tokens)
    assert got["difference"] == pytest.approx(-0.1)
    assert got["perplexity_ratio"] == pytest.approx(math.exp(-0.1))
    assert got["significant"] and got["chunks"] == 40 and got["n"] == int(tokens.sum())


def test_mean_interval_over_seeds():
    got = mean_interval([0.80, 0.82, 0.81])
    assert got["mean"] == pytest.approx(0.81) and got["std"] == pytest.approx(0.01)
    # t(0.975, 2) = 4.3027
    assert got["ci95"][1] - got["mean"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert mean_interval([0.5])["std"] is None


def test_format_p():
    assert format_p(0.5) == "p = 0.50" and format_p(0.0012) == "p = 0.0012" and format_p(1e-7) == "p < 0.0001"


@pytest.mark.parametrize("a_only,b_only", [(600, 560), (1500, 1420), (3000, 2890)])
def test_mcnemar_with_more_than_a_thousand_discordant_examples(a_only, b_only):
    """2**n overflows a float past n = 1023 discordant examples (a large test set with weak models): still
    exact up to 2,000, and scipy's binomial tail beyond."""
    from scipy.stats import binom

    a = [True] * a_only + [False] * b_only
    b = [False] * a_only + [True] * b_only
    p = mcnemar_exact(a, b)["p"]
    assert p == pytest.approx(min(1.0, 2 * binom.cdf(min(a_only, b_only), a_only + b_only, 0.5)), rel=1e-9)
    assert 0 < p < 1
