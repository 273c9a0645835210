"""``task: text-classification``: a Hugging Face sequence classifier (or an encoder fine-tuned here first)
teaches a smaller classifier, through the teacher-output store or online.

The distilled student trains on the labelled rows plus any unlabelled text; the baseline student on the
labelled rows alone, for as many optimisation steps. The report compares teacher, distilled and baseline
students on the test split (accuracy, macro-F1, agreement with the teacher, size, interleaved latency) with a
paired test for every difference.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from distill._dataclass_io import RecipeError
from distill.config import Recipe
from distill.data import DistillCollator, load_splits, same_tokenizer, to_dataset
from distill.losses import LossContext, build_losses
from distill.models import (
    config_labels,
    hidden_size,
    is_sequence_classifier,
    load_classifier,
    load_config,
    load_tokenizer,
    model_inputs,
    num_layers,
    set_dropout,
)
from distill.stages import (
    StoreKeyUnknown,
    fingerprint,
    hash_files,
    process_state,
    stage_checkpoints,
    stage_done,
    store_root,
    train_resuming,
    write_stage,
)
from distill.store.spec import check_storable, spec_for_losses
from distill.students import check_layers, student_from_teacher
from distill.tasks import register_task
from distill.tasks.base import Plan, Task
from distill.tasks.selection import SelectsLosses
from distill.tasks.text_store import open_text_store, text_store_key
from distill.teachers.sources import PretrainedTeacher
from distill.training import Distiller, DistillTrainer


def teacher_classes(t: Any, recipe: Recipe, where: str = "teacher") -> tuple[Any, list[str] | None]:
    """A teacher's config and its class names (None while it still has to be fine-tuned, or when its
    id2label is generic): raises when it is not a classifier and is not to be fine-tuned, or when its classes
    contradict ``data.labels``."""
    tconf = load_config(t.model, f"{where}.model", t.revision, t.trust_remote_code)
    if t.finetune is not None:
        return tconf, None
    if not is_sequence_classifier(tconf):
        archs = ", ".join(getattr(tconf, "architectures", None) or [type(tconf).__name__])
        raise RecipeError(
            f"{where}.model: {t.model!r} is a {archs}, not a sequence classifier; add "
            f"`{where}.finetune: {{epochs: 1}}` to fine-tune it on your labels first "
            "(or run `distill finetune`)"
        )
    teacher_labels = config_labels(tconf)
    if recipe.data.labels and teacher_labels and list(recipe.data.labels) != teacher_labels:
        raise RecipeError(
            f"data.labels: {recipe.data.labels} differ from {where}'s id2label {teacher_labels}; "
            "use the teacher's label order (or drop data.labels)"
        )
    return tconf, teacher_labels


def check_more_teachers(recipe: Recipe, splits: Any) -> None:
    """``teachers:``: every teacher after the first classifies the same classes, and the losses read only
    what can be combined (the teachers' class distributions)."""
    for i, t in enumerate(recipe.teachers[1:], start=1):
        if t.blackbox is not None:  # answers with the data's label names (checked when it is asked)
            continue
        conf, labels = teacher_classes(t, recipe, f"teachers[{i}]")
        if labels is not None and labels != splits.labels:
            raise RecipeError(f"teachers[{i}].model: its classes {labels} differ from {splits.labels} (the "
                              "first teacher's / the data's); every teacher must classify the same labels")
        if t.finetune is None and int(getattr(conf, "num_labels", 0)) != splits.num_labels:
            raise RecipeError(f"teachers[{i}].model: it has {conf.num_labels} labels but the data has "
                              f"{splits.num_labels}; fine-tune it on this data (teachers[{i}].finetune)")
    from distill.tasks.multi_teacher import check_combinable

    check_combinable(recipe)


def plan_text_classification(recipe: Recipe) -> Plan:
    """Validate a classification recipe without loading weights: the teacher is a classifier (or fine-tuned
    into one), the labels agree, the layers exist, the losses build and the store can keep what they read."""
    t = recipe.teacher
    tconf, teacher_labels = teacher_classes(t, recipe)
    splits = load_splits(recipe.data, labels=teacher_labels)
    if t.finetune is None and teacher_labels is None and not recipe.data.labels:
        import warnings

        warnings.warn(
            f"the teacher's id2label has only generic LABEL_i names, so class ids are matched to the data's "
            f"sorted labels {splits.labels}; set data.labels to the teacher's class order if that is wrong",
            stacklevel=2,
        )
    if t.finetune is None and int(getattr(tconf, "num_labels", 0)) != splits.num_labels:
        raise RecipeError(
            f"teacher.model: the teacher has {tconf.num_labels} labels but the data has {splits.num_labels} "
            f"({splits.labels}); set data.labels to the teacher's classes or fine-tune a teacher on this data"
        )

    s = recipe.student
    t_layers = num_layers(tconf)
    if s.from_teacher:
        check_layers(list(s.layers or []), t_layers)
        sconf, s_hidden, s_layers, same_tok = None, hidden_size(tconf), len(s.layers or []), True
    else:
        sconf = load_config(s.model or "", "student.model")
        s_hidden, s_layers = hidden_size(sconf), num_layers(sconf)
        if s.layers:
            check_layers(list(s.layers), s_layers, "the student model")
            s_layers = len(s.layers)
        same_tok = same_tokenizer(load_tokenizer(s.model or ""), load_tokenizer(t.model, t.revision))
    ctx = LossContext(
        student_hidden_size=s_hidden, teacher_hidden_size=hidden_size(tconf),
        student_num_layers=s_layers, teacher_num_layers=t_layers,
        num_classes=splits.num_labels, same_tokenizer=same_tok,
    )
    losses = build_losses(recipe.losses, ctx)  # raises on bad layer maps etc.
    if recipe.teachers:
        check_more_teachers(recipe, splits)
    if recipe.store.enabled:
        check_storable(Distiller(losses))  # before the teacher is fine-tuned or run
    return Plan(recipe, splits, tconf, sconf, same_tok, ctx)


@register_task("text-classification")
class TextClassificationTask(SelectsLosses, Task):
    """Sequence classifiers: teacher (fine-tuned here when asked) -> store -> distilled and baseline
    students -> report with paired tests."""

    name = "text-classification"

    def __init__(self, recipe: Recipe, *args: Any, **kwargs: Any):
        self.kd_specs = list(recipe.losses)  # the distilled student's losses (changed by ``select``)
        self._kd_frame: pd.DataFrame | None = None
        self.teacher_tokenizer: Any = None
        self.student_tokenizer: Any = None
        self.teacher_pred: np.ndarray | None = None
        self.test_probs: dict[str, np.ndarray] = {}  # role -> (N, C) test-split probabilities, for the report
        self.test_correct: dict[str, np.ndarray] = {}  # role -> (N,) bool, for the paired significance tests
        self.members: list[Any] = []  # ``teachers:``: every teacher (distill.tasks.multi_teacher.Member)
        self.member_test_logits: dict[str, np.ndarray] = {}
        self.combined_test_logits: np.ndarray | None = None
        self.member_mean_weights: dict[str, float] | None = None
        self.member_test_answered: dict[str, np.ndarray] = {}  # black-box members: test rows answered
        self.latency_members: list[Any] = []  # the members with weights (timed in turn as "the teacher")
        super().__init__(recipe, *args, **kwargs)

    def make_plan(self) -> Plan:
        return plan_text_classification(self.recipe)

    # -- teacher ------------------------------------------------------------------------------------------
    def prepare_teacher(self) -> None:
        if self.recipe.teachers:  # several: each prepared alike; the first one stands for "the teacher"
            from distill.tasks.multi_teacher import Member, member_recipes

            self.members = []
            for name, weight, recipe in member_recipes(self.recipe):
                self.log(f"teacher {name}:")
                if recipe.teacher.blackbox is not None:  # its answers, asked once (and kept) like any run's
                    from distill.teachers.blackbox import label_with_blackbox
                    from distill.teachers.sources import BlackBoxTeacher

                    answers = label_with_blackbox(recipe, self.plan.splits, self.log, include_test=True)
                    source = BlackBoxTeacher(str(answers.stats.get("teacher")), log=self.log)
                    self.members.append(Member(name, weight, source, None, answers))
                    continue
                source, tokenizer = self._prepare_one(recipe)
                self.members.append(Member(name, weight, source, tokenizer))
            self.teacher, self.teacher_tokenizer = self.members[0].source, self.members[0].tokenizer
            return
        self.teacher, self.teacher_tokenizer = self._prepare_one(self.recipe)

    def _prepare_one(self, r: Recipe) -> tuple[PretrainedTeacher, Any]:
        """``r.teacher`` as a loadable source and its tokenizer, fine-tuned first when it asks."""
        if r.teacher.finetune is not None:
            from distill.teachers import finetune_teacher

            path, revision = str(finetune_teacher(r, self.plan.splits, log=self.log)), None
        else:
            from distill.packaged import resolve_model

            path, revision = resolve_model(r.teacher.model), r.teacher.revision
        return (PretrainedTeacher(path, lambda p: load_classifier(p, None, revision), revision, log=self.log),
                load_tokenizer(path, revision))

    @classmethod
    def refusal(cls, command: str, recipe: Recipe) -> str | None:
        if command == "finetune" and not any(t.finetune for t in recipe.teachers or [recipe.teacher]):
            return "teacher.finetune: not set; add `teacher.finetune: {epochs: 1}` to the recipe"
        return super().refusal(command, recipe)

    def finetune(self) -> str:
        self.prepare_teacher()
        if self.members:
            return "teachers saved to " + ", ".join(f"{m.name}: {m.source.path}" for m in self.members)
        return f"teacher saved to {self.teacher.path}"

    # -- student start ------------------------------------------------------------------------------------
    def student_init(self) -> Path:
        """The student's starting weights, saved once so the distilled and the baseline students start
        alike."""
        with process_state().main_process_first():  # rank 0 builds and saves it; the others then reuse it
            return self._build_student_init()

    def _build_student_init(self) -> Path:
        r = self.recipe
        init = self.out / "student_init"
        fp = fingerprint({"student": r.student.fingerprinted(), "labels": self.plan.labels,
                          "seed": r.train.seed,
                          "teacher": self.teacher.fingerprint() if r.student.from_teacher else None})
        if stage_done(init, fp):
            self.student_tokenizer = load_tokenizer(str(init))
            return init
        from transformers import set_seed

        from distill.export import save_student

        set_seed(r.train.seed)
        if r.student.from_teacher:
            model = student_from_teacher(self.teacher_model(), list(r.student.layers or []))
            tokenizer = self.teacher_tokenizer
        else:
            from transformers import AutoModelForSequenceClassification

            from distill.models import label_maps
            from distill.packaged import resolve_model

            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_model(r.student.model or ""), ignore_mismatched_sizes=True,
                **label_maps(self.plan.labels)
            )
            if r.student.layers:  # a shallower copy of the pre-trained student
                model = student_from_teacher(model, list(r.student.layers))
            tokenizer = load_tokenizer(r.student.model or "")
        write_stage(init, fp, lambda d: save_student(model, tokenizer, d, self.plan.labels))
        self.student_tokenizer = tokenizer
        return init

    # -- store --------------------------------------------------------------------------------------------
    def store_key(self, distiller: Distiller, teacher: Any = None, tokenizer: Any = None) -> str:
        """The key of ``teacher``'s store (default: the run's teacher; each of several has its own)."""
        r = self.recipe
        return text_store_key(teacher or self.teacher, tokenizer or self.teacher_tokenizer, self.kd_data(),
                              r.data.max_length, r.task, spec_for_losses(r.store, distiller))

    def teacher_store(self, distiller: Distiller, build: bool = True):
        if self.members:
            return self.ensemble_store(distiller, build)
        store, seconds = self._open_store(distiller, self.teacher, self.teacher_tokenizer, build)
        if seconds is not None:
            self.report["store_build_seconds"] = seconds
        return store

    def _open_store(self, distiller: Distiller, teacher: Any, tokenizer: Any, build: bool):
        r = self.recipe
        return open_text_store(
            store_root(r.store), self.store_key(distiller, teacher, tokenizer),
            spec_for_losses(r.store, distiller), self.kd_data(), teacher, tokenizer,
            max_length=r.data.max_length, batch_size=r.train.eval_batch_size,
            meta={"teacher": teacher.path, "recipe_task": r.task, "labels": self.plan.labels},
            log=self.log, build=build)

    def ensemble_store(self, distiller: Distiller, build: bool = True):
        """Every teacher's own store (each built on first use, then its teacher released), read as one by
        the recipe's ``combine`` rule."""
        from distill.store.ensemble import TeacherEnsemble

        stores, seconds = [], {}
        for m in self.members:
            if m.blackbox:
                stores.append(self._answer_store(m))
                continue
            store, took = self._open_store(distiller, m.source, m.tokenizer, build)
            if took is not None:
                seconds[m.name] = took
            if m.source is not self.teacher:
                m.source.release()
            stores.append(store)
        if seconds:
            self.report["store_build_seconds"] = sum(seconds.values())
        ensemble = TeacherEnsemble(stores, [m.name for m in self.members], [m.weight for m in self.members],
                                   self.recipe.combine, labels=self.kd_data()["label"].astype(int).tolist())
        self.member_mean_weights = ensemble.mean_weights()
        return ensemble

    def _answer_store(self, m: Any) -> Any:
        """A black-box member's answers aligned to the distilled student's rows: the train rows, then the
        unlabelled ones (rows it was not asked, e.g. augmented variants, count as unanswered)."""
        from distill.store.ensemble import AnswerStore
        from distill.tasks.multi_teacher import answer_arrays

        sp, c = self.plan.splits, len(self.plan.labels)
        parts = [answer_arrays(m.answers.runs.get("train"), len(sp.train), c)]
        if sp.unlabeled is not None and len(sp.unlabeled):
            parts.append(answer_arrays(m.answers.runs.get("unlabeled"), len(sp.unlabeled), c))
        rest = len(self.kd_data()) - sum(len(p) for p, _ in parts)
        if rest:
            parts.append(answer_arrays(None, rest, c))
        probs, answered = (np.concatenate([part[i] for part in parts]) for i in (0, 1))
        return AnswerStore(probs, answered, m.name)

    def cache(self) -> str:
        from distill.store.reader import format_info

        self.prepare_teacher()
        distiller = self.distiller()
        if not distiller.needs_teacher:
            raise RecipeError("losses: none of the recipe's losses reads teacher outputs, so there is "
                              "nothing to cache")
        store = self.teacher_store(distiller)
        if self.members:
            return "\n\n".join(f"teacher {name}:\n{self._describe_member(s)}"
                               for name, s in zip(store.names, store.stores, strict=True))
        return format_info(store.info())

    @staticmethod
    def _describe_member(store: Any) -> str:
        from distill.store.ensemble import AnswerStore
        from distill.store.reader import format_info

        if isinstance(store, AnswerStore):
            info = store.info()
            return (f"black-box answers to {info['answered']} of {info['num_examples']} rows (kept in its "
                    "response store; `distill label` shows the statistics)")
        return format_info(store.info())

    def store_location(self, distiller: Distiller, r: Recipe | None = None) -> tuple[Path, str]:
        """(root, key) of the store of ``r.teacher`` (default: the recipe's teacher), without fine-tuning or
        running the teacher: raises StoreKeyUnknown when the teacher still has to be fine-tuned."""
        r = r or self.recipe
        if r.teacher.finetune is not None:
            from distill.teachers import finished_teacher

            done = finished_teacher(r, self.plan.splits)
            if done is None:
                raise StoreKeyUnknown("the teacher has not been fine-tuned yet, so nothing is stored; "
                                      "`distill cache RECIPE` does both")
            path, revision = str(done), None
        else:
            from distill.packaged import resolve_model

            path, revision = resolve_model(r.teacher.model), r.teacher.revision
        teacher = PretrainedTeacher(path, lambda p: load_classifier(p, None, revision), revision,
                                    log=self.log)
        tokenizer = load_tokenizer(path, revision)
        if self.teacher is None:  # the first (or only) teacher: what the data's augmentation defaults to
            self.teacher, self.teacher_tokenizer = teacher, tokenizer
        return store_root(r.store), self.store_key(distiller, teacher, tokenizer)

    def cache_info(self) -> str:
        if self.recipe.teachers:
            from distill.tasks.multi_teacher import member_recipes

            return "\n\n".join(
                f"teacher {name}:\n" + (self._store_info(recipe) if recipe.teacher.blackbox is None else
                                        "a black-box teacher: its answers live in its response store under "
                                        f"{recipe.output_dir}; `distill label` reports them")
                for name, _, recipe in member_recipes(self.recipe))
        return self._store_info(self.recipe)

    def _store_info(self, recipe: Recipe) -> str:
        from distill.store import TeacherStore
        from distill.store.reader import format_info

        try:
            root, key = self.store_location(self.distiller(), recipe)
        except StoreKeyUnknown as exc:
            return str(exc)
        if not (root / key / "manifest.json").exists():
            return f"no store yet for key {key} under {root}; `distill cache RECIPE` builds it"
        return format_info(TeacherStore.open(root / key).info())

    # -- students -----------------------------------------------------------------------------------------
    def kd_data(self) -> pd.DataFrame:
        """The labelled rows, the unlabelled ones, and (``data.augment``) variants of the labelled ones."""
        if self._kd_frame is None:
            frame = self.plan.splits.with_unlabeled()
            if (augmented := self.augmented_rows()) is not None:
                frame = pd.concat([frame, augmented], ignore_index=True)
            self._kd_frame = frame
        return self._kd_frame

    def augmented_rows(self) -> pd.DataFrame | None:
        """``data.augment``: word-level variants of the labelled training sentences (label -1: the teacher
        labels them), made once and cached under the store root."""
        from distill.data.text_augment import augmented_frame

        cfg = self.recipe.data.augment
        if cfg is None:
            return None
        frame, self.report["augmentation"] = augmented_frame(
            cfg, self.plan.splits.train, cfg.model or self.teacher.path, store_root(self.recipe.store),
            self.log)
        return frame

    def labelled_data(self) -> pd.DataFrame:
        return self.plan.splits.train

    def baseline_steps(self) -> int | None:
        # same budget: as many optimisation steps as the distilled student (which also saw unlabelled text)
        kd_steps = self.report["training"].get("student", {}).get("steps")
        return kd_steps if self.plan.splits.unlabeled is not None and kd_steps else None

    def validation_scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Accuracy and macro-F1 of ``model`` on the validation split."""
        from distill.evaluation import classification_metrics, predict_logits

        r = self.recipe
        val = to_dataset(self.plan.splits.validation, self.student_tokenizer, max_length=r.data.max_length)
        logits = predict_logits(model, val, DistillCollator(self.student_tokenizer),
                                batch_size=r.train.eval_batch_size, desc="validating")
        m = classification_metrics(logits, np.asarray(self.plan.splits.validation["label"]))
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    def train(self, name: str, distiller: Distiller, data: pd.DataFrame, *, store: Any = None,
              teacher: torch.nn.Module | None = None, max_steps: int | None = None,
              specs: list[Any] | None = None) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification, set_seed

        from distill.evaluation.metrics import compute_metrics_fn
        from distill.export import save_student
        from distill.store import fingerprint_rows
        from distill.training.args import training_arguments

        r = self.recipe
        init = self.student_init()
        final = self.out / name
        fp = fingerprint({
            "train": r.train.fingerprinted(), "max_steps": max_steps,
            "losses": self.losses_key(name, specs),
            "init": hash_files(init), "labels": self.plan.labels, "max_length": r.data.max_length,
            "data": fingerprint_rows(list(zip(data["text"], data["label"].astype(int).tolist()))),
            "validation": fingerprint_rows(list(self.plan.splits.validation["text"])),
            "store": getattr(store, "key", None),
            "teacher": self.teacher.fingerprint() if teacher is not None else None,
        })
        if (done := stage_done(final, fp)) is not None:
            self.log(f"{name}: already trained, reusing {final}")
            self.report["training"][name] = done.get("training", {})
            return AutoModelForSequenceClassification.from_pretrained(final)
        set_seed(r.train.seed)
        model = AutoModelForSequenceClassification.from_pretrained(init)
        set_dropout(model, r.train.dropout)
        ttok = self.teacher_tokenizer if teacher is not None and not self.plan.same_tokenizer else None
        train_ds = to_dataset(data, self.student_tokenizer, ttok, max_length=r.data.max_length)
        val_ds = to_dataset(self.plan.splits.validation, self.student_tokenizer, max_length=r.data.max_length)
        ckpt = stage_checkpoints(self.out, name, fp, self.log)
        overrides: dict[str, Any] = {}
        if max_steps:
            # a step budget (the baseline's, matching the distilled student): validate as many times as the
            # distilled student does (once per its epoch), not once per pass over the smaller labelled set
            every = max(1, max_steps // max(1, math.ceil(r.train.epochs)))
            overrides = {"max_steps": max_steps, "eval_strategy": "steps", "eval_steps": every}
        trainer = DistillTrainer(
            model=model, args=training_arguments(r.train, str(ckpt), **overrides), train_dataset=train_ds,
            eval_dataset=val_ds, data_collator=DistillCollator(self.student_tokenizer, ttok),
            compute_metrics=compute_metrics_fn, distiller=distiller, teacher=teacher, store=store,
            anchor=r.train.anchor,
        )
        source = ("labels only" if not distiller.needs_teacher
                  else "teacher from the store" if store is not None else "online teacher")
        self.log(f"{name}: training on {len(train_ds)} examples ({source})")
        info, model = train_resuming(trainer, ckpt, name, r.train.resume, self.log)
        info["rows"] = len(data)
        state = process_state()
        if state.is_main_process:
            write_stage(final, fp, lambda d: save_student(model, self.student_tokenizer, d, self.plan.labels),
                        info)
            shutil.rmtree(ckpt, ignore_errors=True)
        state.wait_for_everyone()
        self.report["training"][name] = info
        return model

    # -- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, role: str, model: torch.nn.Module) -> np.ndarray:
        from distill.evaluation import count_parameters, predict_logits
        from distill.evaluation.speed import weights_size_mb

        r = self.recipe
        tokenizer = self.teacher_tokenizer if role == "teacher" else self.student_tokenizer
        test = to_dataset(self.plan.splits.test, tokenizer, max_length=r.data.max_length)
        collate = DistillCollator(tokenizer)

        def predict() -> np.ndarray:
            return predict_logits(model, test, collate, batch_size=r.train.eval_batch_size,
                                  desc=f"evaluating {role}")

        if role == "teacher":  # every run of this recipe scores the same teacher on the same text: once
            logits = self.teacher_test_logits(self.teacher, predict)
        else:
            logits = predict()
        # timed at the end, interleaved with the other models (time_latency), on the same texts
        self.latency_inputs[role] = model_inputs(collate([test[i] for i in range(min(32, len(test)))]))
        return self._score(role, logits, {"parameters": count_parameters(model),
                                          "size_mb": weights_size_mb(model)})

    def teacher_test_logits(self, source: Any, predict: Any) -> np.ndarray:
        """``predict()`` (a teacher's test logits), computed once per teacher, test text and length."""
        from distill.store import fingerprint_rows
        from distill.store.eval_cache import cached_teacher_outputs

        test = self.plan.splits.test
        texts = fingerprint_rows(list(zip(test["text"], test.get("text_pair", test["text"]))))
        return cached_teacher_outputs(
            store_root(self.recipe.store),
            {"what": "test-logits", "teacher": source.fingerprint(),
             "max_length": self.recipe.data.max_length, "texts": texts},
            predict, write=process_state().is_main_process)

    def _score(self, role: str, logits: np.ndarray, extra: dict[str, Any]) -> np.ndarray:
        """``role``'s test metrics from its (N, C) logits (or log-probabilities) into the report."""
        from distill.evaluation import classification_metrics
        from distill.evaluation.predictions import softmax

        self.test_probs[role] = softmax(logits).astype(np.float32)
        labels = np.asarray(self.plan.splits.test["label"])
        metrics = {**classification_metrics(logits, labels, self.teacher_pred), **extra}
        self.test_correct[role] = logits.argmax(-1) == labels
        self.report["models"][role] = metrics
        self.log(f"{role}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
        pred = logits.argmax(-1)
        if role == "teacher":
            self.teacher_pred = pred
        return pred

    def evaluate_teacher(self) -> Any:
        if not self.members:
            return self.evaluate("teacher", self.teacher_model())
        return self.evaluate_members()

    def evaluate_members(self) -> np.ndarray:
        """Several teachers: each scored on the test split, then the combination (the report's teacher row),
        and the ``teachers`` section."""
        from distill.evaluation import count_parameters, predict_logits
        from distill.evaluation.speed import weights_size_mb
        from distill.tasks.multi_teacher import answer_arrays, combined_test_logits

        r = self.recipe
        member_logits, answered, models, inputs, params, size = {}, {}, [], {}, 0, 0.0
        for m in self.members:
            if m.blackbox:  # its answers on the test split (asked with include_test)
                probs, answered[m.name] = answer_arrays(m.answers.runs.get("test"),
                                                        len(self.plan.splits.test), len(self.plan.labels))
                member_logits[m.name] = np.log(np.clip(probs, 1e-12, 1.0))
                continue
            test = to_dataset(self.plan.splits.test, m.tokenizer, max_length=r.data.max_length)
            collate = DistillCollator(m.tokenizer)
            member_logits[m.name] = self.teacher_test_logits(m.source, lambda m=m, test=test, collate=collate:
                predict_logits(m.source.model(), test, collate, batch_size=r.train.eval_batch_size,
                               desc=f"evaluating teacher {m.name}"))
            model = m.source.model()
            params += count_parameters(model)
            size += weights_size_mb(model)
            first = model_inputs(collate([test[j] for j in range(min(32, len(test)))]))
            inputs.update({f"t{len(models)}_{k}": v for k, v in first.items()})
            models.append(m)
            if m.source is not self.teacher:
                m.source.release()
        self.member_test_logits, self.member_test_answered = member_logits, answered
        combined = combined_test_logits(member_logits, r.combine, [m.weight for m in self.members], answered)
        self.combined_test_logits = combined
        self.latency_members = models  # a black-box member's time is its API's: not timed here
        self.latency_inputs["teacher"] = inputs
        pred = self._score("teacher", combined, {"parameters": params, "size_mb": size,
                                                 "teachers": len(self.members)})
        self.teacher_pred = pred
        return pred

    def latency_models(self) -> dict[str, torch.nn.Module]:
        """Loaded again from where they were saved: the teacher was released while the students trained."""
        from transformers import AutoModelForSequenceClassification

        saved = {"student_kd": self.out / "student", "student_no_kd": self.out / "student_no_kd"}
        models = {role: AutoModelForSequenceClassification.from_pretrained(saved[role])
                  for role in self.latency_inputs if role in saved}
        if "teacher" in self.latency_inputs:
            if self.members:  # serving the combination runs every teacher
                from distill.tasks.multi_teacher import MemberModels

                return {"teacher": MemberModels([m.source.model() for m in self.latency_members]), **models}
            models = {"teacher": self.teacher_model(), **models}
        return models

    # -- report -------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        from distill.evaluation import format_table, summarise
        from distill.evaluation.report import class_warnings, classification_significance
        from distill.export import write_model_card

        r = self.recipe
        models = self.report["models"]
        self.sizes_on_disk({"student_kd": self.out / "student", "student_no_kd": self.out / "student_no_kd",
                            **({} if self.members else {"teacher": Path(self.teacher.path)})})
        if self.members:
            from distill.evaluation.report import format_teachers
            from distill.tasks.multi_teacher import members_report

            self.report["teachers"] = members_report(
                self.members, self.member_test_logits, self.combined_test_logits,
                np.asarray(self.plan.splits.test["label"]), r.combine, self.member_mean_weights,
                self.member_test_answered)
            self.log(format_teachers(self.report["teachers"]))
        if process_state().is_main_process:  # one process times the models; the others write nothing
            self.time_latency()
        self.report["significance"] = classification_significance(self.test_correct, seed=r.train.seed)
        self.report["warnings"] = class_warnings(models, self.plan.labels, self.report["significance"])
        for warning in self.report["warnings"]:
            self.log(f"WARNING: {warning}")
        summary = summarise(models, self.report.get("latency"), self.report["significance"])
        self.report["labels"] = self.plan.labels
        table = format_table(models, summary, self.report)
        sp = self.plan.splits
        self.report.update({
            **self.common_report(),
            "labels": self.plan.labels,
            "data": {"train": len(sp.train), "unlabeled": 0 if sp.unlabeled is None else len(sp.unlabeled),
                     "augmented": self.report.get("augmentation", {}).get("rows", 0),
                     "validation": len(sp.validation), "test": len(sp.test)},
            "summary": summary,
            "student_parameters": models.get("student_kd", {}).get("parameters"),
        })
        for stage in self.report["training"].values():
            stage.pop("log_history", None) if isinstance(stage, dict) and len(str(stage)) > 200_000 else None
        if not process_state().is_main_process:  # one writer for the shared output files
            return self.report
        student_dir = self.out / "student"
        (student_dir / "recipe.yaml").write_text(r.to_yaml())
        if r.export.model_card:
            write_model_card(student_dir, r, self.report, table)
        if r.export.onnx:
            from transformers import AutoModelForSequenceClassification

            from distill.export import export_onnx

            path = export_onnx(AutoModelForSequenceClassification.from_pretrained(student_dir),
                               self.student_tokenizer, student_dir)
            self.report["onnx"] = str(path)
        if self.test_probs:
            from distill.evaluation.predictions import FILENAME, analyse, prediction_rows, write_predictions

            rows = prediction_rows(sp.test, self.plan.labels, self.test_probs)
            write_predictions(self.out / FILENAME, rows)
            self.report["analysis"] = analyse(rows, self.plan.labels)
        self.write_outputs(table, f"student saved to {student_dir}; ")
        return self.report
