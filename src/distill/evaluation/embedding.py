"""How close a sentence-embedding student is to its teacher, and how useful its vectors are.

- agreement: Spearman correlation between the teacher's and the student's cosine similarities over random
  pairs of held-out sentences (the geometry the student was asked to keep);
- retrieval agreement: for each held-out sentence, the share of the teacher's k nearest neighbours that are
  also among the student's k nearest (recall@k against the teacher);
- probe accuracy: a logistic regression fitted on frozen embeddings of a labelled set (80/20, stratified);
- throughput: sentences per second at batch 32, tokenising included.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def encode(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 64,
           special_tokens: bool = True) -> np.ndarray:
    """(N, D) float32 sentence embeddings, in input order. Batches run longest text first (as
    sentence-transformers' ``encode`` does), so a batch pads to rows of about its own length."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = [texts[i] for i in order[start:start + batch_size]]
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                        add_special_tokens=special_tokens, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in enc.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        out.append(model(**inputs).embeddings.float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    emb = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
    emb[order] = np.concatenate(out)
    return emb


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def random_pairs(n: int, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random index pairs (i != j) over ``n`` items, the same for every model."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=count)
    j = (i + rng.integers(1, n, size=count)) % n  # never i itself
    return i, j


def similarity_agreement(student: np.ndarray, teacher: np.ndarray, pairs: int = 20000,
                         seed: int = 0) -> float:
    """Spearman correlation of pairwise cosine similarities (student vs teacher) over random pairs."""
    from scipy.stats import spearmanr

    i, j = random_pairs(len(teacher), pairs, seed)
    s, t = _unit(student), _unit(teacher)
    return float(spearmanr((s[i] * s[j]).sum(1), (t[i] * t[j]).sum(1)).statistic)


def pair_errors(student: np.ndarray, teacher: np.ndarray, pairs: int = 20000, seed: int = 0) -> np.ndarray:
    """|student cosine - teacher cosine| for each of the random pairs :func:`similarity_agreement` ranks (the
    same pairs for every model, so two students' errors can be compared pair by pair)."""
    i, j = random_pairs(len(teacher), pairs, seed)
    s, t = _unit(student), _unit(teacher)
    return np.abs((s[i] * s[j]).sum(1) - (t[i] * t[j]).sum(1))


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)  # a sentence is not its own neighbour
    return np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]


def retrieval_agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Mean over held-out sentences of |student top-k ∩ teacher top-k| / k (cosine neighbours)."""
    k = min(k, len(teacher) - 1)
    s, t = _top_k(_unit(student), k), _top_k(_unit(teacher), k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(s, t)]))


def probe_correct(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per held-out row, whether a logistic regression on frozen embeddings gets it right (stratified
    80/20 split, fixed seed: two encoders of the same texts are scored on the same rows, so they can be
    compared pair by pair)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(embeddings, labels, test_size=0.2, random_state=seed,
                                              stratify=labels)
    clf = LogisticRegression(max_iter=2000)
    clf.fit(x_tr, y_tr)
    return clf.predict(x_te) == np.asarray(y_te)


def probe_accuracy(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Accuracy of a logistic regression on frozen embeddings (:func:`probe_correct`)."""
    return float(probe_correct(embeddings, labels, seed).mean())


@torch.no_grad()
def throughput(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int = 128,
               batch_size: int = 32, special_tokens: bool = True, threads: int | None = None) -> float:
    """Sentences per second on CPU (tokenising included), after one warm-up batch."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        encode(model, tokenizer, texts[:batch_size], max_length, batch_size, special_tokens)  # warm-up
        t0 = time.perf_counter()
        encode(model, tokenizer, texts, max_length, batch_size, special_tokens)
        return len(texts) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def summarise_embedding(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t, s, b = models.get("teacher"), models.get("student_kd"), models.get("student_untrained")
    if t and s:
        if t.get("sentences_per_second") and s.get("sentences_per_second"):
            out["speedup"] = s["sentences_per_second"] / t["sentences_per_second"]
        if t.get("parameters") and s.get("parameters"):
            out["size_ratio"] = t["parameters"] / s["parameters"]
        if t.get("probe_mean") and s.get("probe_mean") is not None:
            out["probe_retained"] = s["probe_mean"] / t["probe_mean"]
    if s and b:
        for key in ("spearman", "recall_at_k", "probe_mean"):
            if s.get(key) is not None and b.get(key) is not None:
                out[f"kd_gain_{key}"] = s[key] - b[key]
    return out


def embedding_significance(errors: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """The distilled student against the student before distillation, pair by pair: mean difference of their
    similarity errors (negative: distillation brought the student closer to the teacher), its paired bootstrap
    interval and the sign-flip p."""
    from distill.evaluation.significance import compare_errors

    if "student_kd" in errors and "student_untrained" in errors:
        return {"student_kd_vs_student_untrained": compare_errors(errors["student_kd"],
                                                                  errors["student_untrained"],
                                                                  "similarity_error", seed=seed)}
    return {}


def significance_sentence(report: dict[str, Any]) -> str | None:
    """What the paired test says about distillation, in words (None when the run made no such comparison)."""
    from distill.evaluation.significance import describe

    cmp = (report.get("significance") or {}).get("student_kd_vs_student_untrained")
    if not cmp:
        return None
    return "distillation: " + describe(cmp, "the distilled student's mean |cosine error|",
                                      "the student before it", scale=1.0, unit="", size="held-out pairs")


EMBED_ROLES = ("teacher", "student_kd", "student_untrained")
EMBED_TITLES = {"teacher": "teacher", "student_kd": "student (distilled)",
                "student_untrained": "student (before distillation)"}


def format_embedding_table(models: dict[str, dict[str, Any]], summary: dict[str, Any], k: int = 10,
                           report: dict[str, Any] | None = None) -> str:
    probe_keys = sorted({key for m in models.values() for key in m
                         if key.startswith("probe_") and key != "probe_mean"})
    cols = [("spearman", "spearman", "{:.3f}"), ("recall_at_k", f"recall@{k}", "{:.3f}")]
    if any(m.get("spearman_probe_sets_mean") is not None for m in models.values()):
        # agreement on the probe sets' texts: mostly outside the training text's domain
        cols.append(("spearman_probe_sets_mean", "spearman(probe texts)", "{:.3f}"))
    cols += [(key, key.removeprefix("probe_").removesuffix("_snippets"), "{:.3f}") for key in probe_keys]
    cols += [("probe_mean", "probe", "{:.3f}"), ("sentences_per_second", "sent/s", "{:.0f}"),
             ("parameters", "params", "{:,}"), ("size_mb", "MB", "{:.1f}"), ("dim", "dim", "{}")]
    header = ["model"] + [c[1] for c in cols]
    rows = [[EMBED_TITLES[r]] + [fmt.format(models[r][key]) if models[r].get(key) is not None else "-"
                                 for key, _, fmt in cols] for r in EMBED_ROLES if r in models]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    extras = []
    if summary.get("speedup"):
        extras.append(f"{summary['speedup']:.1f}x the teacher's encode speed")
    if summary.get("size_ratio"):
        extras.append(f"{summary['size_ratio']:.1f}x fewer parameters")
    if summary.get("kd_gain_spearman") is not None:
        extras.append(f"distillation {summary['kd_gain_spearman']:+.3f} Spearman vs the student before it")
    if report is not None and (sentence := significance_sentence(report)):
        extras.append(sentence)
    return "\n".join(out + ([""] + ["; ".join(extras)] if extras else []))
