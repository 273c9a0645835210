"""Calibration of a black-box teacher's label distribution: the fitted weights do what their definitions say,
on teachers whose bias is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from distill.config import RecipeError
from distill.config.teacher import BlackBoxConfig
from distill.teachers.blackbox.calibrate import (
    Calibration,
    fit_contextual,
    fit_prior,
    label_shares,
    teacher_quality,
)


def _biased_teacher(n=4000, bias=2.0, seed=0):
    """Gold labels 50/50; the teacher's log-odds = an informative score + a constant pull toward class 1."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 2, n)
    score = np.where(gold == 1, 1.0, -1.0) + rng.normal(0, 1.2, n)
    p1 = 1 / (1 + np.exp(-(score + bias)))
    return np.stack([1 - p1, p1], axis=1), gold


def test_prior_matching_hits_the_target_and_removes_a_constant_bias():
    probs, gold = _biased_teacher()
    assert probs.argmax(1).mean() > 0.8  # the teacher says "1" to most texts
    w = fit_prior(probs, np.array([0.5, 0.5]))
    cal = Calibration("prior", w.tolist())
    q = cal.apply(probs)
    np.testing.assert_allclose(q.mean(axis=0), [0.5, 0.5], atol=1e-6)  # float32 output
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-6)
    # a bias of +2 in log-odds is undone by a weight ratio near e^-2
    assert np.log(w[1] / w[0]) == pytest.approx(-2.0, abs=0.25)
    before, after = (probs.argmax(1) == gold).mean(), (q.argmax(1) == gold).mean()
    assert before < 0.7 < after
    # ranking within the pool is untouched (a monotone map of the log-odds)
    assert (np.argsort(q[:, 1], kind="stable") == np.argsort(probs[:, 1], kind="stable")).all()


def test_prior_matching_three_classes_and_bad_targets():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([4.0, 1.0, 1.0], size=500)
    target = np.array([0.2, 0.3, 0.5])
    q = Calibration("prior", fit_prior(probs, target).tolist()).apply(probs)
    np.testing.assert_allclose(q.mean(axis=0), target, atol=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        fit_prior(probs, np.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="number of classes"):
        fit_prior(probs, np.array([0.5, 0.5]))


def test_contextual_weights_make_the_content_free_answer_uniform():
    cf = np.array([[0.1, 0.9], [0.3, 0.7], [0.2, 0.8]])
    w = fit_contextual(cf)
    np.testing.assert_allclose(w, (1 / cf.mean(0)) * 2 / (1 / cf.mean(0)).sum())
    np.testing.assert_allclose(Calibration("contextual", w.tolist()).apply(cf.mean(0, keepdims=True)),
                               [[0.5, 0.5]], atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        fit_contextual(np.zeros((0, 2)))


def test_teacher_quality_counts_unanswered_rows_as_wrong():
    q = teacher_quality(np.array([0, 1, -1, 1]), np.array([0, 0, 1, 1]), 2)
    assert q["accuracy"] == 0.5
    assert q["confusion"] == [[1, 1, 0], [0, 1, 1]]  # rows gold, last column: no answer
    assert label_shares(np.array([0, 1, -1, 1]), 2) == pytest.approx([1 / 3, 2 / 3])


def test_config_refuses_calibration_it_cannot_do():
    url = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    with pytest.raises(RecipeError, match="calibration.*soft_labels: true"):
        BlackBoxConfig(**url, calibration="prior")
    with pytest.raises(RecipeError, match="calibration_prior.*calibration: prior"):
        BlackBoxConfig(**url, soft_labels=True, calibration_prior={"positive": 0.5, "negative": 0.5})
    with pytest.raises(RecipeError, match="calibration_prior.*positive share"):
        BlackBoxConfig(**url, soft_labels=True, calibration="prior", calibration_prior={"positive": 0.0})
    BlackBoxConfig(**url, soft_labels=True, calibration="contextual")
