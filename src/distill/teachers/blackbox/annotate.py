"""From a recipe's ``teacher.blackbox`` section to teacher labels on disk: what ``distill label`` runs, and
the one function the pipeline calls (:func:`label_with_blackbox`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill._dataclass_io import RecipeError, to_dict
from distill.config import BlackBoxConfig, Recipe
from distill.files import atomic_write_text
from distill.teachers.blackbox.backend import Backend, FatalBackendError
from distill.teachers.blackbox.client import ChatClient
from distill.teachers.blackbox.labeler import Labeler, LabelRun, Prices
from distill.teachers.blackbox.parse import LabelParser
from distill.teachers.blackbox.prompt import PromptTemplate
from distill.teachers.blackbox.store import FILENAME as STORE_FILE
from distill.teachers.blackbox.store import ResponseStore

LABELS_FILE = "teacher_labels.jsonl"
STATS_FILE = "teacher_labels_stats.json"
Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[distill] {msg}", flush=True)


def build_backend(cfg: BlackBoxConfig) -> Backend:
    """The HTTP client, or the local generative model (loaded here) when ``local_model`` is set."""
    if cfg.local_model:
        from distill.packaged import resolve_model
        from distill.teachers.blackbox.local import LocalGenerativeTeacher

        return LocalGenerativeTeacher.from_pretrained(resolve_model(cfg.local_model),
                                                      max_new_tokens=cfg.max_tokens,
                                                      logprobs=cfg.soft_labels, top_logprobs=cfg.top_logprobs)
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if cfg.api_key_env and not key:  # checked when the recipe loaded; the environment may have changed since
        raise RecipeError(f"teacher.blackbox.api_key_env: the environment variable {cfg.api_key_env} is not "
                          f"set; run `export {cfg.api_key_env}=...` first")
    return ChatClient(cfg.base_url, cfg.model, api_key=key,
                      api_key_source=(f"the key in ${cfg.api_key_env}" if cfg.api_key_env
                                      else "the request (no key sent)"),
                      timeout=cfg.timeout, max_retries=cfg.max_retries, temperature=cfg.temperature,
                      max_tokens=cfg.max_tokens, logprobs=cfg.soft_labels, top_logprobs=cfg.top_logprobs)


def _check_labels(labels: list[str], cfg: BlackBoxConfig) -> None:
    if all(name.lstrip("-").isdigit() for name in labels) and not cfg.label_synonyms:
        raise RecipeError(f"data.labels: the teacher is asked to choose among the label names, and {labels} "
                          "say nothing about the classes; set data.labels to names in id order, "
                          "e.g. [negative, positive]")
    try:
        LabelParser(labels, cfg.label_synonyms)
    except ValueError as exc:
        raise RecipeError(f"teacher.blackbox.label_synonyms: {exc}") from None


def build_labeler(cfg: BlackBoxConfig, labels: list[str], output_dir: str | Path, *,
                  backend: Backend | None = None, log: Log | None = None,
                  progress: bool | None = None) -> Labeler:
    """A :class:`Labeler` over ``OUTPUT_DIR/teacher_responses.sqlite``; close it with
    ``labeler.store.close()``. Everything cheap is checked before the backend is built (a local model loads
    here)."""
    _check_labels(labels, cfg)
    template = PromptTemplate(cfg.prompt, cfg.system_prompt)
    backend = backend or build_backend(cfg)
    store = ResponseStore(Path(output_dir) / STORE_FILE)
    return Labeler(backend, labels, store, template=template, synonyms=cfg.label_synonyms,
                   max_concurrency=cfg.max_concurrency, max_calls=cfg.max_calls, max_cost=cfg.max_cost,
                   prices=Prices(**cfg.prices), soft_labels=cfg.soft_labels, progress=progress, log=log)


@dataclass
class BlackBoxLabels:
    """The teacher's labels per split (``train``, ``unlabeled``, and ``test`` when asked), with statistics."""

    labels: list[str]
    runs: dict[str, LabelRun]
    stats: dict[str, Any] = field(default_factory=dict)

    def training_frame(self, splits: Any):
        """The training rows the teacher labelled (train, then unlabelled text): a frame with ``text``
        (+ ``text_pair``), ``label`` = the teacher's label and ``data_label`` = the data's own label (-1 when
        none), and a (N, C) float32 array of teacher probabilities: the soft labels where the teacher gave
        them, one-hot of its hard label elsewhere. Unparseable, failed and not labelled rows are left out."""
        import pandas as pd

        frames, probs = [], []
        for name in ("train", "unlabeled"):
            frame, run = getattr(splits, name), self.runs.get(name)
            if frame is None or run is None:
                continue
            keep = [i for i, item in enumerate(run.items) if item.label is not None]
            part = frame.iloc[keep].copy()
            part["data_label"] = part["label"]
            part["label"] = [run.items[i].label for i in keep]
            frames.append(part)
            for i in keep:
                item = run.items[i]
                row = np.zeros(len(self.labels), dtype=np.float32)
                if item.probs is not None:
                    row[:] = item.probs
                else:
                    row[item.label] = 1.0
                probs.append(row)
        frame = (pd.concat(frames, ignore_index=True) if frames
                 else pd.DataFrame(columns=["text", "label", "data_label"]))
        return frame, np.stack(probs) if probs else np.zeros((0, len(self.labels)), dtype=np.float32)


def _agreement(run: LabelRun, data_labels: list[int]) -> dict[str, Any] | None:
    pairs = [(item.label, y) for item, y in zip(run.items, data_labels) if item.label is not None and y >= 0]
    if not pairs:
        return None
    return {"n": len(pairs), "accuracy": sum(a == b for a, b in pairs) / len(pairs)}


def write_outputs(out: Path, result: BlackBoxLabels, splits: Any) -> None:
    """``teacher_labels.jsonl`` (one row per text and split) and ``teacher_labels_stats.json``."""
    lines = []
    for name, run in result.runs.items():
        frame = getattr(splits, name)
        pairs = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
        for i, (item, text, y) in enumerate(zip(run.items, frame["text"].tolist(), frame["label"].tolist())):
            row = {"split": name, "index": i, "text": text}
            if pairs is not None:
                row["text_pair"] = pairs[i]
            row.update({"data_label": result.labels[y] if y >= 0 else None, "status": item.status,
                        "label": None if item.label is None else result.labels[item.label],
                        "probs": item.probs,
                        "answer": item.answer, "reason": item.reason, "cached": item.cached})
            lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(out / LABELS_FILE, "\n".join(lines) + ("\n" if lines else ""))
    atomic_write_text(out / STATS_FILE, json.dumps(result.stats, indent=2, ensure_ascii=False, default=str))


def label_with_blackbox(recipe: Recipe, splits: Any, log: Log = _log, *, include_test: bool = False,
                        backend: Backend | None = None, progress: bool | None = None) -> BlackBoxLabels:
    """Label the train split and the unlabelled text (and the test split with ``include_test``, which
    measures the teacher's own accuracy) with the recipe's black-box teacher; write ``teacher_labels.jsonl``
    and ``teacher_labels_stats.json`` to the output directory and return the labels.

    A rerun re-reads every stored answer and asks only what is missing. ``backend`` replaces the one the
    recipe describes (tests, or a model already in memory).
    """
    cfg = recipe.teacher.blackbox
    if cfg is None:
        raise RecipeError("teacher.blackbox: not set; labelling needs a black-box teacher (an endpoint or "
                          "local_model) in teacher.blackbox")
    uses_pair = "{text_pair}" in cfg.prompt or "{text_pair}" in (cfg.system_prompt or "")
    if "text_pair" in splits.train.columns and not uses_pair:
        raise RecipeError("teacher.blackbox.prompt: the data has a second text (data.text_pair_column) that "
                          "the prompt never shows; add {text_pair} to the prompt")
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labeler = build_labeler(cfg, list(splits.labels), out, backend=backend, log=log, progress=progress)
    parts = ([("train", splits.train), ("unlabeled", splits.unlabeled)]
             + ([("test", splits.test)] if include_test else []))
    runs: dict[str, LabelRun] = {}
    try:
        for name, frame in parts:
            if frame is None or not len(frame):
                continue
            pairs = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
            run = labeler.label(frame["text"].tolist(), pairs, desc=f"teacher ({name})")
            run.stats["agreement_with_data_labels"] = _agreement(run, frame["label"].tolist())
            runs[name] = run
            s = run.stats
            log(f"teacher ({name}): {s['labelled']}/{s['texts']} labelled, {s['unparseable']} unparseable, "
                f"{s['failed']} failed, {s['not_labelled']} not labelled; {s['calls']} calls, {s['cached']} "
                f"from the store, estimated cost {s['cost']:.4f}")
        content_free = (labeler.label(list(cfg.content_free_inputs), desc="teacher (content-free inputs)")
                        if cfg.calibration == "contextual" else None)
        answers, cost = labeler.store.totals()
    except FatalBackendError as exc:
        raise RecipeError(f"teacher.blackbox: {exc}") from None
    finally:
        labeler.store.close()
    result = BlackBoxLabels(list(splits.labels), runs)
    result.stats = {
        "labels": list(splits.labels),
        "teacher": labeler.backend.identity,
        "config": to_dict(cfg),
        "splits": {name: run.stats for name, run in runs.items()},
        "store": {"path": str(out / STORE_FILE), "answers": answers, "cost": cost},
    }
    if cfg.calibration != "none":
        result.stats["calibration"] = calibrate_runs(cfg, runs, splits, content_free, log)
    write_outputs(out, result, splits)
    return result


def calibrate_runs(cfg: BlackBoxConfig, runs: dict[str, LabelRun], splits: Any,
                   content_free: LabelRun | None, log: Log) -> dict[str, Any]:
    """Fit ``cfg.calibration`` on the stored answers and apply it to every answer with probabilities, in
    place (its label becomes the calibrated arg-max). Returns what the report shows: the weights, the
    predicted label shares on the training pool and the teacher's test quality before and after."""
    from distill.teachers.blackbox.calibrate import (
        Calibration,
        fit_contextual,
        fit_prior,
        label_shares,
        teacher_quality,
    )

    labels = list(splits.labels)
    pool = [item for name in ("train", "unlabeled") if name in runs for item in runs[name].items
            if item.probs is not None]
    if cfg.calibration == "prior":
        if cfg.calibration_prior:
            unknown = sorted(set(cfg.calibration_prior) - set(labels))
            missing = [name for name in labels if name not in cfg.calibration_prior]
            if unknown or missing:
                raise RecipeError(f"teacher.blackbox.calibration_prior: {cfg.calibration_prior} must give a "
                                  f"share for each label of {labels}" + (f"; unknown: {unknown}" if unknown
                                                                          else f"; missing: {missing}"))
            target = np.array([cfg.calibration_prior[name] for name in labels], dtype=np.float64)
            source = "calibration_prior"
        else:
            gold = np.asarray(splits.train["label"])
            gold = gold[gold >= 0]
            if not len(gold):
                raise RecipeError("teacher.blackbox.calibration: prior needs a target: the training rows "
                                  "have no labels; set teacher.blackbox.calibration_prior, e.g. "
                                  "{negative: 0.5, positive: 0.5}")
            # add-one smoothing: a class absent from a few labels keeps a small share
            target = np.bincount(gold, minlength=len(labels)) + 1.0
            source = f"{len(gold)} labelled training rows"
        target = target / target.sum()
        if not pool:
            raise RecipeError("teacher.blackbox.calibration: no training answer came with probabilities, so "
                              "there is nothing to calibrate; the endpoint must return log-probabilities")
        weights = fit_prior(np.array([item.probs for item in pool]), target)
        cal = Calibration("prior", weights.tolist(), target.tolist(), len(pool), {"target_from": source})
    else:
        assert content_free is not None
        cf = [item.probs for item in content_free.items if item.probs is not None]
        if not cf:
            raise RecipeError("teacher.blackbox.calibration: contextual, but the teacher answered none of "
                              f"the content-free inputs {list(cfg.content_free_inputs)} with a label and "
                              "probabilities; try other content_free_inputs or calibration: prior")
        weights = fit_contextual(np.array(cf))
        cal = Calibration("contextual", weights.tolist(), None, len(cf),
                          {"content_free_answers": [item.answer for item in content_free.items],
                           "content_free_mean": np.mean(np.array(cf), axis=0).tolist()})
    before = {name: np.asarray(run.hard()) for name, run in runs.items()}
    for run in runs.values():
        for item in run.items:
            if item.probs is not None:
                item.probs = cal.apply(np.asarray([item.probs]))[0].tolist()
                item.label = int(np.argmax(item.probs))
    out = cal.to_dict()
    pool_before = np.concatenate([before[n] for n in ("train", "unlabeled") if n in before])
    pool_after = np.concatenate([np.asarray(runs[n].hard()) for n in ("train", "unlabeled") if n in runs])
    out["pool_shares_before"] = label_shares(pool_before, len(labels))
    out["pool_shares_after"] = label_shares(pool_after, len(labels))
    if "test" in runs:
        gold = np.asarray(splits.test["label"])
        out["test_before"] = teacher_quality(before["test"], gold, len(labels))
        out["test_after"] = teacher_quality(np.asarray(runs["test"].hard()), gold, len(labels))
        log(f"teacher calibration ({cal.method}): test accuracy {out['test_before']['accuracy']:.4f} -> "
            f"{out['test_after']['accuracy']:.4f}, macro-F1 {out['test_before']['macro_f1']:.4f} -> "
            f"{out['test_after']['macro_f1']:.4f}")
    shares = [[round(x, 3) for x in out[k]] for k in ("pool_shares_before", "pool_shares_after")]
    log(f"teacher calibration ({cal.method}): weights "
        f"{dict(zip(labels, (round(w, 4) for w in cal.weights)))}; predicted shares on the training texts "
        f"{shares[0]} -> {shares[1]}")
    return out


def label_recipe(recipe: Recipe, *, include_test: bool = False, log: Log = _log) -> BlackBoxLabels:
    """``distill label``: read and split the data as the recipe says, then :func:`label_with_blackbox`."""
    from distill.data import load_splits

    if recipe.teacher.blackbox is None:
        raise RecipeError("teacher.blackbox: not set; `distill label` needs a black-box teacher: add a "
                          "teacher.blackbox section (base_url + model, or local_model)")
    splits = load_splits(recipe.data)
    result = label_with_blackbox(recipe, splits, log, include_test=include_test)
    log(f"teacher labels in {Path(recipe.output_dir) / LABELS_FILE}, statistics in "
        f"{Path(recipe.output_dir) / STATS_FILE}")
    return result
