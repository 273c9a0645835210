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
from distill.teachers.blackbox.demos import Demonstrations, local_encoder
from distill.teachers.blackbox.labeler import Labeler, LabelRun, Prices, TeacherLabel
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
                  backend: Backend | None = None, log: Log | None = None, progress: bool | None = None,
                  demonstrations: Demonstrations | None = None) -> Labeler:
    """A :class:`Labeler` over ``OUTPUT_DIR/teacher_responses.sqlite``; close it with
    ``labeler.store.close()``. Everything cheap is checked before the backend is built (a local model loads
    here)."""
    _check_labels(labels, cfg)
    template = PromptTemplate(cfg.prompt, cfg.system_prompt)
    backend = backend or build_backend(cfg)
    store = ResponseStore(Path(output_dir) / STORE_FILE)
    return Labeler(backend, labels, store, template=template, synonyms=cfg.label_synonyms,
                   max_concurrency=cfg.max_concurrency, max_calls=cfg.max_calls, max_cost=cfg.max_cost,
                   prices=Prices(**cfg.prices), soft_labels=cfg.soft_labels, demonstrations=demonstrations,
                   progress=progress, log=log)


def build_demonstrations(cfg: BlackBoxConfig, splits: Any, log: Log,
                         encoders: dict[str, Any] | None = None) -> Demonstrations | None:
    """``cfg.demonstrations`` examples per text, drawn from the training rows that have a human label
    (None when zero-shot). ``encoders`` caches the ``nearest`` encoder between ensemble members."""
    if not cfg.demonstrations:
        return None
    gold = np.asarray(splits.train["label"])
    keep = gold >= 0
    if not keep.any():
        raise RecipeError(f"teacher.blackbox.demonstrations: {cfg.demonstrations} examples per prompt, but "
                          "no training row has a label to show; label a few rows (data.labeled_examples) or "
                          "set demonstrations: 0")
    frame = splits.train[keep]
    embed = None
    if cfg.demonstration_selection == "nearest":
        encoders = {} if encoders is None else encoders
        if cfg.demonstration_encoder not in encoders:
            log(f"demonstrations: loading the encoder {cfg.demonstration_encoder} to find neighbours")
            encoders[cfg.demonstration_encoder] = local_encoder(cfg.demonstration_encoder)
        embed = encoders[cfg.demonstration_encoder]
    log(f"demonstrations: {cfg.demonstrations} per prompt ({cfg.demonstration_selection}) from "
        f"{int(keep.sum())} labelled training rows")
    return Demonstrations(frame["text"].tolist(), gold[keep].tolist(), cfg.demonstrations,
                          cfg.demonstration_selection, cfg.demonstration_seed,
                          frame["text_pair"].tolist() if "text_pair" in frame.columns else None, embed)


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
                        backend: Backend | dict[str, Backend] | None = None,
                        progress: bool | None = None) -> BlackBoxLabels:
    """Label the train split and the unlabelled text (and the test split with ``include_test``, which
    measures the teacher's own accuracy) with the recipe's black-box teacher, or with every member of its
    ``ensemble`` (each calibrated on its own, then combined); write ``teacher_labels.jsonl`` and
    ``teacher_labels_stats.json`` to the output directory and return the labels.

    A rerun re-reads every stored answer and asks only what is missing. ``backend`` replaces the one the
    recipe describes (tests, or a model already in memory); for an ensemble, a mapping from member name to
    backend, or one backend for all.
    """
    cfg = recipe.teacher.blackbox
    if cfg is None:
        raise RecipeError("teacher.blackbox: not set; labelling needs a black-box teacher (an endpoint or "
                          "local_model) in teacher.blackbox")
    members = cfg.members()
    for _, _, member in members:
        uses_pair = "{text_pair}" in member.prompt or "{text_pair}" in (member.system_prompt or "")
        if "text_pair" in splits.train.columns and not uses_pair:
            raise RecipeError("teacher.blackbox.prompt: the data has a second text (data.text_pair_column) "
                              "that the prompt never shows; add {text_pair} to the prompt")
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(splits.labels)
    parts = ([("train", splits.train), ("unlabeled", splits.unlabeled)]
             + ([("test", splits.test)] if include_test else []))
    encoders: dict[str, Any] = {}
    answered: list[tuple[str, float, BlackBoxConfig, dict[str, LabelRun], dict[str, Any]]] = []
    for name, weight, member in members:
        own = backend.get(name) if isinstance(backend, dict) else backend
        tag = f"teacher {name}" if len(members) > 1 else "teacher"
        demos = build_demonstrations(member, splits, log, encoders)
        labeler = build_labeler(member, labels, out, backend=own, log=log, progress=progress,
                                demonstrations=demos)
        runs: dict[str, LabelRun] = {}
        try:
            for split, frame in parts:
                if frame is None or not len(frame):
                    continue
                pairs = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
                run = labeler.label(frame["text"].tolist(), pairs, desc=f"{tag} ({split})")
                run.stats["agreement_with_data_labels"] = _agreement(run, frame["label"].tolist())
                runs[split] = run
                _log_run(log, f"{tag} ({split})", run.stats)
            content_free = (labeler.label(list(cfg.content_free_inputs), desc=f"{tag} (content-free inputs)")
                            if cfg.calibration == "contextual" else None)
            totals = labeler.store.totals()
        except FatalBackendError as exc:
            raise RecipeError(f"teacher.blackbox: {exc}") from None
        finally:
            labeler.store.close()
        info: dict[str, Any] = {"teacher": labeler.backend.identity, "template": labeler.template.fingerprint,
                                "store_totals": totals}
        if cfg.calibration != "none":
            info["calibration"] = calibrate_runs(member, runs, splits, content_free, log)
        answered.append((name, weight, member, runs, info))
    answers, cost = answered[-1][4]["store_totals"]
    if len(answered) == 1:
        _, _, _, runs, info = answered[0]
        result = BlackBoxLabels(labels, runs)
        teacher = info["teacher"]
    else:
        runs = combine_runs([(name, weight, member_runs) for name, weight, _, member_runs, _ in answered],
                            labels, cfg.combine)
        for split, frame in parts:
            if split in runs:
                runs[split].stats["agreement_with_data_labels"] = _agreement(runs[split],
                                                                             frame["label"].tolist())
                _log_run(log, f"teacher ensemble ({split})", runs[split].stats)
        result = BlackBoxLabels(labels, runs)
        teacher = "ensemble(" + ", ".join(f"{name}={info['teacher']}"
                                          for name, _, _, _, info in answered) + ")"
    result.stats = {
        "labels": labels,
        "teacher": teacher,
        "config": to_dict(cfg),
        "splits": {name: run.stats for name, run in runs.items()},
        "store": {"path": str(out / STORE_FILE), "answers": answers, "cost": cost},
    }
    if cfg.demonstrations or any(m.demonstrations for _, _, m in members):
        result.stats["demonstrations"] = {name: {"per_prompt": m.demonstrations,
                                                 "selection": m.demonstration_selection}
                                          for name, _, m, _, _ in answered}
    if len(answered) == 1:
        if "calibration" in answered[0][4]:
            result.stats["calibration"] = answered[0][4]["calibration"]
    else:
        result.stats["ensemble"] = ensemble_stats(answered, runs, splits, cfg.combine)
        for line in ensemble_lines(result.stats["ensemble"]):
            log(line)
    write_outputs(out, result, splits)
    return result


def _log_run(log: Log, desc: str, s: dict[str, Any]) -> None:
    log(f"{desc}: {s['labelled']}/{s['texts']} labelled, {s['unparseable']} unparseable, {s['failed']} "
        f"failed, {s['not_labelled']} not labelled; {s['calls']} calls, {s['cached']} from the store, "
        f"estimated cost {s['cost']:.4f}")


def combine_runs(members: list[tuple[str, float, dict[str, LabelRun]]], labels: list[str],
                 rule: str) -> dict[str, LabelRun]:
    """One run per split from several members' runs over the same texts.

    ``mean``: the weighted mean of the members' distributions (soft labels, or one-hot of the answer);
    ``vote``: the weighted shares of their answers (a tie goes to the label with the higher mean
    probability). Only members that answered a text take part in it; a text none answered keeps the most
    telling status (failed, then unparseable, then not labelled).
    """
    n_labels = len(labels)
    splits = [s for s in members[0][2] if all(s in runs for _, _, runs in members)]
    out: dict[str, LabelRun] = {}
    for split in splits:
        runs = [(name, weight, member_runs[split]) for name, weight, member_runs in members]
        n = len(runs[0][2].items)
        items = []
        for j in range(n):
            votes = np.zeros(n_labels)
            mean = np.zeros(n_labels)
            total = 0.0
            answers = []
            for name, weight, run in runs:
                item = run.items[j]
                if item.label is None:
                    continue
                dist = (np.asarray(item.probs, dtype=np.float64) if item.probs is not None
                        else np.eye(n_labels)[item.label])
                mean += weight * dist
                votes[item.label] += weight
                total += weight
                answers.append(f"{name}: {item.answer}")
            if not total:
                statuses = [run.items[j].status for _, _, run in runs]
                status = next(s for s in ("failed", "unparseable", "not_labelled") if s in statuses)
                reason = "; ".join(f"{name}: {run.items[j].reason}" for name, _, run in runs)
                items.append(TeacherLabel(status, reason=reason,
                                          cached=all(r.items[j].cached for _, _, r in runs)))
                continue
            mean /= total
            probs = votes / total if rule == "vote" else mean
            label = int(np.argmax(probs + 1e-9 * mean)) if rule == "vote" else int(np.argmax(probs))
            items.append(TeacherLabel("labelled", label, probs.tolist(), " | ".join(answers),
                                      cached=all(r.items[j].cached for _, _, r in runs)))
        run = LabelRun(labels, items)
        counts = {status: sum(item.status == status for item in items)
                  for status in ("labelled", "unparseable", "failed", "not_labelled")}
        run.stats = {"texts": n, **counts, "soft_labelled": counts["labelled"],
                     "calls": sum(r.stats.get("calls", 0) for _, _, r in runs),
                     "cached": sum(r.stats.get("cached", 0) for _, _, r in runs),
                     "cost": sum(r.stats.get("cost", 0.0) for _, _, r in runs),
                     "combine": rule,
                     "label_counts": {name: sum(item.label == i for item in items)
                                      for i, name in enumerate(labels)},
                     "members": {name: {k: r.stats.get(k) for k in ("labelled", "unparseable", "failed",
                                                                    "not_labelled", "calls", "cached")}
                                 for name, _, r in runs}}
        out[split] = run
    return out


def _agree(a: np.ndarray, b: np.ndarray) -> float | None:
    both = (a >= 0) & (b >= 0)
    return float((a[both] == b[both]).mean()) if both.any() else None


def ensemble_stats(answered: list[tuple[str, float, BlackBoxConfig, dict[str, LabelRun], dict[str, Any]]],
                   combined: dict[str, LabelRun], splits: Any, rule: str) -> dict[str, Any]:
    """Per member: its weight, what it answered, its test quality (when the test split was asked) and its
    agreement with the combination on the training texts; and every pair's agreement."""
    from distill.teachers.blackbox.calibrate import teacher_quality

    labels = list(splits.labels)

    def pool(runs: dict[str, LabelRun]) -> np.ndarray:
        parts = [np.asarray(runs[n].hard()) for n in ("train", "unlabeled") if n in runs]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=int)

    combined_pool = pool(combined)
    members = []
    for name, weight, member, runs, info in answered:
        entry: dict[str, Any] = {"name": name, "weight": weight, "teacher": info["teacher"],
                                 "template": info["template"], "demonstrations": member.demonstrations,
                                 "labelled": int((pool(runs) >= 0).sum()),
                                 "agreement_with_combined": _agree(pool(runs), combined_pool)}
        if "test" in runs:
            entry["test"] = teacher_quality(np.asarray(runs["test"].hard()), np.asarray(splits.test["label"]),
                                            len(labels))
        if "calibration" in info:
            entry["calibration"] = info["calibration"]
        members.append(entry)
    pairwise = {}
    for i, (a, _, _, runs_a, _) in enumerate(answered):
        for b, _, _, runs_b, _ in answered[i + 1:]:
            pairwise[f"{a} | {b}"] = _agree(pool(runs_a), pool(runs_b))
    out: dict[str, Any] = {"combine": rule, "members": members, "pairwise_agreement": pairwise}
    if "test" in combined:
        out["test"] = teacher_quality(np.asarray(combined["test"].hard()), np.asarray(splits.test["label"]),
                                      len(labels))
    return out


def ensemble_lines(section: dict[str, Any]) -> list[str]:
    """The ensemble in a few log / report lines: each member's test accuracy and agreement."""
    lines = []
    for m in section["members"]:
        acc = f"test accuracy {m['test']['accuracy']:.4f}, " if m.get("test") else ""
        agree = m["agreement_with_combined"]
        lines.append(f"ensemble member {m['name']} (weight {m['weight']:g}): {acc}agrees with the "
                     f"combination on {'-' if agree is None else f'{agree:.1%}'} of the training texts")
    for pair, value in section["pairwise_agreement"].items():
        lines.append(f"ensemble agreement {pair}: {'-' if value is None else f'{value:.1%}'}")
    if section.get("test"):
        lines.append(f"ensemble ({section['combine']}): test accuracy {section['test']['accuracy']:.4f}")
    return lines


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
