"""Calibrating a black-box teacher's label distribution before it becomes the student's target.

A prompted LLM often prefers one answer whatever the input (SmolLM2-135M said "positive" to ~90% of the movie
snippets while its probabilities still ranked them well: AUC 0.85). Both methods here rescale the teacher's
probabilities by one weight per class, ``q(y|x) ∝ w_y p(y|x)``, which keeps the ranking within a class and
moves the decision boundary:

- ``contextual`` (Zhao et al. 2021, "Calibrate before use"): ask the teacher the same prompt about
  content-free inputs ("N/A", "", "[MASK]"); the mean of its answer distributions there, ``p_cf``, is the bias
  the prompt alone induces, and ``w = 1 / p_cf`` removes it.
- ``prior`` (prior matching, the EM prior adjustment of Saerens et al. 2002 run to a fixed target): choose
  ``w`` so that the mean calibrated distribution over the unlabelled pool equals a target prior, given in the
  recipe or estimated from the few human labels the user has.

The weights are fitted once from the stored answers (no extra call for ``prior``; a handful for
``contextual``, kept in the response store like every answer) and written beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


@dataclass
class Calibration:
    """Per-class weights applied to the teacher's probabilities (then renormalised)."""

    method: str
    weights: list[float]
    target: list[float] | None = None
    """``prior``: the label shares the calibrated teacher matches on the pool."""
    fitted_on: int = 0
    """Rows (``prior``: pool answers with probabilities; ``contextual``: content-free answers used)."""
    details: dict[str, Any] = field(default_factory=dict)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) probabilities -> (N, C) calibrated probabilities (rows sum to 1)."""
        q = np.asarray(probs, dtype=np.float64) * np.asarray(self.weights, dtype=np.float64)[None, :]
        return (q / np.maximum(q.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "weights": list(self.weights), "target": self.target,
                "fitted_on": self.fitted_on, **self.details}


def fit_prior(probs: np.ndarray, target: np.ndarray, iterations: int = 1000,
              tol: float = 1e-10) -> np.ndarray:
    """Weights ``w`` (C,) with ``mean_n normalise(w * p_n) = target``: fixed-point iteration
    ``w <- w * target / mean(q)``, which converges for strictly positive probabilities (each step is the EM
    prior update with the priors held at the target). Normalised to sum to C (only ratios matter)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)  # (N, C)
    t = np.asarray(target, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != t.shape[0]:
        raise ValueError(f"probs {p.shape} and target {t.shape} disagree on the number of classes")
    if np.any(t <= 0) or abs(t.sum() - 1) > 1e-6:
        raise ValueError(f"target prior {t.tolist()} must be positive and sum to 1")
    w = np.ones(p.shape[1])
    for _ in range(iterations):
        q = p * w
        q /= q.sum(axis=1, keepdims=True)
        share = q.mean(axis=0)
        if np.max(np.abs(share - t)) < tol:
            break
        w *= t / share
    return w * (len(w) / w.sum())


def fit_contextual(content_free_probs: np.ndarray) -> np.ndarray:
    """Weights ``1 / mean(p_cf)`` (normalised to sum to C) from (K, C) answers on content-free inputs."""
    p = np.asarray(content_free_probs, dtype=np.float64)
    if p.ndim != 2 or not len(p):
        raise ValueError("contextual calibration needs at least one content-free answer with probabilities")
    w = 1.0 / np.clip(p.mean(axis=0), 1e-6, None)
    return w * (len(w) / w.sum())


def label_shares(labels: np.ndarray, num_labels: int) -> list[float]:
    """Share of each class among integer labels (negative entries ignored)."""
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=num_labels).astype(np.float64)
    return (counts / max(counts.sum(), 1.0)).tolist()


def teacher_quality(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> dict[str, Any]:
    """Accuracy (unanswered = wrong), macro-F1 and confusion matrix (rows gold, columns predicted, last
    column unanswered) of teacher predictions (-1 = no answer) against gold labels."""
    from sklearn.metrics import f1_score

    pred, gold = np.asarray(pred), np.asarray(gold)
    confusion = np.zeros((num_labels, num_labels + 1), dtype=np.int64)
    for g, p in zip(gold, pred):
        confusion[g, p if p >= 0 else num_labels] += 1
    # an unanswered row counts as a wrong class for F1
    filled = np.where(pred >= 0, pred, (gold + 1) % num_labels)
    return {"accuracy": float((pred == gold).mean()) if len(gold) else None,
            "macro_f1": float(f1_score(gold, filled, average="macro")) if len(gold) else None,
            "confusion": confusion.tolist(), "predicted_shares": label_shares(pred, num_labels)}
