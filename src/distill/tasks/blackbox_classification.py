"""Text classification from a teacher you can only query (``teacher.blackbox``: an OpenAI-compatible endpoint
or a generative model run in-process).

The teacher answers once per text (answers are kept in a durable response store); its hard labels, and its
soft labels when it returns log-probabilities, become the store the distilled student trains from. Its own
quality is read from its answers on the test split. The baseline student trains on the human labels.
Everything about the students and the report is text classification's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import torch

from distill._dataclass_io import RecipeError
from distill.config import Recipe
from distill.data import load_splits
from distill.losses import LOSSES, LossContext, build_losses
from distill.models import hidden_size, load_config, num_layers
from distill.outputs import ModelOutputs
from distill.stages import print_log, store_root
from distill.students import check_layers
from distill.tasks import register_task
from distill.tasks.base import Plan
from distill.tasks.text_classification import TextClassificationTask
from distill.teachers.sources import BlackBoxTeacher
from distill.training import Distiller


def plan_blackbox(recipe: Recipe) -> Plan:
    """A black-box teacher has no weights or config: check the data, the student and that every loss can work
    from the teacher's labels and probabilities alone."""
    for spec in recipe.losses:
        needs = set(LOSSES.get(spec.name).teacher_needs) - {"logits"}
        if needs:
            raise RecipeError(f"losses: {spec.name!r} needs the teacher's {sorted(needs)}, which a black-box "
                              "teacher does not expose; use kd, hard_kd and ce")
    splits = load_splits(recipe.data)
    sconf = load_config(recipe.student.model or "", "student.model")
    s_layers = len(recipe.student.layers) if recipe.student.layers else num_layers(sconf)
    if recipe.student.layers:
        check_layers(list(recipe.student.layers), num_layers(sconf), "the student model")
    ctx = LossContext(student_hidden_size=hidden_size(sconf), student_num_layers=s_layers,
                      num_classes=splits.num_labels, same_tokenizer=False)
    build_losses(recipe.losses, ctx)
    return Plan(recipe, splits, None, sconf, False, ctx)


@register_task("blackbox-classification")
class BlackBoxClassificationTask(TextClassificationTask):
    """A text-classification run whose teacher is a :class:`~distill.teachers.sources.BlackBoxTeacher`: its
    answers replace the teacher's forward pass; the students, their training and the report are unchanged."""

    name = "blackbox-classification"

    def make_plan(self) -> Plan:
        return plan_blackbox(self.recipe)

    # -- teacher: its answers -----------------------------------------------------------------------------
    def prepare_teacher(self) -> None:
        from distill.teachers.blackbox import label_with_blackbox

        self.answers = label_with_blackbox(self.recipe, self.plan.splits, self.log, include_test=True)
        self.teacher = BlackBoxTeacher(str(self.answers.stats.get("teacher")), log=self.log)
        self.frame, self.probs = self.answers.training_frame(self.plan.splits)
        if not len(self.frame):
            raise RecipeError("teacher.blackbox: the teacher labelled none of the training texts; see "
                              "teacher_labels_stats.json for parse failures and errors")
        cfg = self.recipe.teacher.blackbox
        abstention = self.abstain(cfg.min_confidence, cfg.abstain) if cfg.min_confidence > 0 else None
        human = np.zeros(len(self.frame), dtype=bool)
        if cfg.keep_human_labels:
            human = self.frame["data_label"].to_numpy() >= 0
            self.frame.loc[human, "label"] = self.frame.loc[human, "data_label"]
        self.frame = self.frame[["text", "label"]
                                + (["text_pair"] if "text_pair" in self.frame.columns else [])]
        self.report["blackbox"] = {k: v for k, v in self.answers.stats.items() if k != "config"}
        # what the distilled student's hard labels are: the human ones where a row has one
        none = (self.frame["label"].to_numpy() < 0) & ~human
        self.report["blackbox"]["student_hard_labels"] = {"human": int(human.sum()),
                                                          "teacher": int((~human & ~none).sum()),
                                                          "none": int(none.sum())}
        if abstention is not None:
            self.report["blackbox"]["abstention"] = abstention

    def abstain(self, threshold: float, mode: str) -> dict[str, Any]:
        """``teacher.blackbox.min_confidence``: training texts without a human label whose teacher
        confidence is below ``threshold`` are left out (``drop``) or keep only their soft target
        (``soft_only``: hard label -1, which ``ce`` skips). Returns what the report shows."""
        confidence = self.probs.max(axis=1)
        low = (confidence < threshold) & (self.frame["data_label"].to_numpy() < 0)
        if mode == "drop":
            keep = ~low
            self.frame = self.frame[keep].reset_index(drop=True)
            self.probs = self.probs[keep]
            if not len(self.frame):
                raise RecipeError(f"teacher.blackbox.min_confidence: {threshold} leaves no training text "
                                  f"(the teacher's confidence is at most {confidence.max():.3f}); lower it")
        else:
            self.frame.loc[low, "label"] = -1
        self.log(f"abstention: {int(low.sum())} of {len(low)} teacher-labelled texts below confidence "
                 f"{threshold:g} ({'left out' if mode == 'drop' else 'soft target only'})")
        return {"min_confidence": threshold, "mode": mode, "below": int(low.sum()), "texts": int(len(low)),
                "confidence_quantiles": {q: float(np.quantile(confidence, q)) for q in (0.1, 0.25, 0.5)}}

    @classmethod
    def label(cls, recipe: Recipe, include_test: bool = False, log: Any = print_log) -> str:
        from pathlib import Path

        from distill.teachers.blackbox import LABELS_FILE, STATS_FILE, label_with_blackbox

        label_with_blackbox(recipe, load_splits(recipe.data), log, include_test=include_test)
        out = Path(recipe.output_dir)
        return f"teacher labels in {out / LABELS_FILE}, statistics in {out / STATS_FILE}"

    @classmethod
    def refusal(cls, command: str, recipe: Recipe) -> str | None:
        return {
            "finetune": "distill finetune: a black-box teacher (teacher.blackbox) cannot be fine-tuned here; "
                        "`distill label` collects its answers",
            "cache": "distill cache: a black-box teacher's outputs are its answers; `distill label RECIPE` "
                     "collects them into the response store (and `distill run` keeps them in the store)",
            "cache_info": "distill cache --info: a black-box teacher has no teacher-output store of its own; "
                          "`distill label RECIPE` reports how many texts it answered",
        }.get(command)

    def teacher_outputs(self, distiller: Distiller) -> tuple[Any, torch.nn.Module | None]:
        """Always the store: the answers cannot be asked for again at every step."""
        if not distiller.needs_teacher:
            return None, None
        from distill.store import StoreSpec, TeacherStore, build_store, fingerprint_rows, store_key

        r = self.recipe
        spec = StoreSpec(capture=("logits",), topk=0, dtype="float32", shard_size=r.store.shard_size)
        key = store_key(teacher=self.teacher.path,
                        data=fingerprint_rows(list(zip(self.frame["text"],
                                                       self.frame["label"].astype(int).tolist()))),
                        probs=hashlib.sha256(self.probs.tobytes()).hexdigest(), task=r.task, spec=spec)
        root = store_root(r.store)
        log_probs = torch.from_numpy(np.log(np.clip(self.probs, 1e-8, 1.0)))  # (N, C)
        build_store(root, key, spec, lambda idx: ModelOutputs(logits=log_probs[idx]),
                    num_examples=len(self.frame), progress=False, log=self.log)
        return TeacherStore.open(root / key), None

    def evaluate_teacher(self) -> np.ndarray:
        """The teacher's own quality: its answers on the test split against the gold labels."""
        from sklearn.metrics import f1_score

        test_run = self.answers.runs.get("test")
        gold = np.asarray(self.plan.splits.test["label"])
        pred = np.asarray(test_run.hard() if test_run else [-1] * len(gold))
        answered = pred >= 0
        self.test_correct["teacher"] = pred == gold
        self.report["models"]["teacher"] = {
            "accuracy": float((pred == gold).mean()),  # unanswered test rows count as wrong
            "macro_f1": float(f1_score(gold, np.where(answered, pred, (gold + 1) % len(self.plan.labels)),
                                       average="macro")),
            "answered_fraction": float(answered.mean()),
            "accuracy_on_answered": (float((pred[answered] == gold[answered]).mean())
                                     if answered.any() else None),
        }
        cal = self.answers.stats.get("calibration", {})
        if cal.get("test_before"):
            self.report["models"]["teacher"]["accuracy_uncalibrated"] = cal["test_before"]["accuracy"]
            self.report["models"]["teacher"]["calibration"] = cal["method"]
        self.teacher_pred = pred
        return pred

    # -- students -----------------------------------------------------------------------------------------
    def kd_data(self) -> pd.DataFrame:
        """The texts the teacher labelled, with its labels."""
        return self.frame

    def baseline_steps(self) -> int | None:
        # with all human labels the baseline trains its own epochs; with a few (data.labeled_examples /
        # labeled_fraction: the teacher also labelled the rest) it gets the distilled student's steps
        return super().baseline_steps()
