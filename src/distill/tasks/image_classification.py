"""``task: image-classification``: recipe -> images -> teacher (trained by the toolkit or given) ->
augmented-view store -> student(s) -> three-way report (teacher / distilled / no-KD), plus an optional
data-free student.

How it differs from a text run:

- the teacher is trained here when ``teacher.finetune`` is set (``teacher.model`` then names the architecture,
  e.g. ``packaged:cnn-teacher``); otherwise ``teacher.model`` is a trained model (saved folder, ``hf:``, ...);
- the store is the TinyViT one (:mod:`distill.store.augment`): per epoch and image, the view seed and the
  teacher's top-k probabilities; the student replays the very same views. Losses that read feature maps
  (fitnet, at) need the teacher online, so the store is skipped for them;
- ``vision.datafree`` adds a student distilled from synthetic images only (:mod:`distill.teachers.datafree`);
- every training stage (teacher, students) writes a checkpoint at the end of each epoch to
  ``<output_dir>/checkpoints/<stage>/<fingerprint>.pt`` (atomically) and, with ``train.resume`` (the default),
  an interrupted run starts again at the next epoch; the file is deleted once the stage has finished.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill._dataclass_io import RecipeError
from distill.config import LossConfig, Recipe
from distill.data.images import Augment, ImageSet, ImageSplits, load_image_splits
from distill.losses import LossContext, build_losses
from distill.stages import DONE, fingerprint, process_state, stage_done, store_root, write_stage
from distill.students.vision import SmallCNN, build_image_model, load_image_model, save_image_model
from distill.tasks import register_task
from distill.tasks.base import Plan, Task
from distill.teachers.sources import ImageTeacher, tensor_digest
from distill.training import Distiller
from distill.training.vision import predict_image_logits, remove_checkpoint, train_image_model


def plan_image_classification(recipe: Recipe) -> Plan:
    """Load and split the images and build the losses: everything checkable before any training."""
    if recipe.train.anchor:
        raise RecipeError(f"train.anchor: {recipe.train.anchor} is not available for image students (their "
                          "training loop does not pull toward the starting weights); set anchor: 0")
    splits = load_image_splits(recipe.data)
    ctx = LossContext(num_classes=splits.num_labels)
    build_losses(recipe.losses, ctx)
    if recipe.teachers:  # several teachers are combined from their stores: class distributions only
        from distill.tasks.multi_teacher import check_combinable

        check_combinable(recipe)
        if recipe.vision is not None and recipe.vision.datafree is not None:
            raise RecipeError("vision.datafree: synthesis inverts one teacher's BatchNorm statistics; use "
                              "one teacher for a data-free student, or drop vision.datafree")
    return Plan(recipe, splits, None, None, True, ctx)


def losses_fingerprint(distiller: Distiller) -> list[Any]:
    """Names, weights and the plain settings (temperature, ...) of a distiller's losses."""
    plain = (int, float, str, bool, list, tuple, type(None))
    return [(n, w, {k: v for k, v in sorted(vars(m).items())
                    if not k.startswith("_") and isinstance(v, plain)})
            for n, w, m in zip(distiller.names, distiller.weights, distiller.losses)]


@register_task("image-classification")
class ImageClassificationTask(Task):
    """Image classifiers: teacher (trained here when asked) -> augmented-view store -> distilled and baseline
    students (+ a data-free one) -> report with paired tests."""

    name = "image-classification"

    def __init__(self, recipe: Recipe, *args: Any, **kwargs: Any):
        self._finished_checkpoints: list[Path | None] = []  # deleted once the run's results are saved
        self._models: dict[str, torch.nn.Module] = {}  # image models are small: kept for the timing
        self.test_probs: dict[str, np.ndarray] = {}
        self.test_correct: dict[str, np.ndarray] = {}
        self.teacher_pred: np.ndarray | None = None
        self.members: list[Any] = []  # ``teachers:``: every teacher (distill.tasks.multi_teacher.Member)
        self.member_test_logits: dict[str, np.ndarray] = {}
        self.combined_test_logits: np.ndarray | None = None
        self.member_mean_weights: dict[str, float] | None = None
        super().__init__(recipe, *args, **kwargs)

    def make_plan(self) -> Plan:
        return plan_image_classification(self.recipe)

    @property
    def splits(self) -> ImageSplits:
        return self.plan.splits

    @property
    def augment(self) -> Augment:
        a = self.recipe.vision.augment  # type: ignore[union-attr]
        return Augment(pad=a.pad, rotate=a.rotate, cutout=a.cutout)

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.recipe.train.epochs))

    def checkpoint_path(self, stage: str, fp: str) -> Path | None:
        """Where ``stage`` keeps its end-of-epoch checkpoint (None with ``train.resume: false``); checkpoints
        of the same stage under another fingerprint (a changed recipe) are removed."""
        folder = self.out / "checkpoints" / stage
        path = folder / f"{fp}.pt"
        if folder.exists():
            for old in folder.glob("*.pt"):
                if old != path:
                    old.unlink()
        if not self.recipe.train.resume:
            return None
        return path

    def _new_model(self, source: str, seed: int):
        torch.manual_seed(seed)
        return build_image_model(source, self.splits.num_labels, self.splits.shape[0])

    # -- teacher ------------------------------------------------------------------------------------------
    def prepare_teacher(self) -> None:
        if self.recipe.teachers:  # several: each prepared alike; the first one stands for "the teacher"
            from distill.tasks.multi_teacher import Member, member_recipes

            self.members = [Member(name, weight, self._prepare_one(recipe, f"teacher_{name}"), None)
                            for name, weight, recipe in member_recipes(self.recipe)]
            self.teacher = self.members[0].source
            return
        self.teacher = self._prepare_one(self.recipe, "teacher")

    def _prepare_one(self, r: Recipe, stage: str) -> ImageTeacher:
        """``r.teacher``, trained first (as stage ``stage``) when it asks; a finished one is reused."""
        ft = r.teacher.finetune
        if ft is None:
            model = build_image_model(r.teacher.model, self.splits.num_labels, self.splits.shape[0])
            return ImageTeacher(r.teacher.model, model=model, skip=(DONE,), log=self.log)
        folder = Path(ft.output_dir) if ft.output_dir else self.out / "teacher"
        labelled = self.labelled_data()  # the teacher learns from the labels only
        fp = fingerprint({"model": r.teacher.model, "finetune": ft.__dict__, "augment": self.augment.__dict__,
                          "data": tensor_digest(labelled.images, labelled.labels)})
        if (done := stage_done(folder, fp)) is not None:
            self.log(f"{stage}: already trained, reusing {folder}")
            self.report["training"][stage] = done.get("training", {})
            return ImageTeacher(str(folder), model=load_image_model(folder), loader=load_image_model,
                                skip=(DONE,), log=self.log)
        model = self._new_model(r.teacher.model, ft.seed)
        ce = Distiller(build_losses([LossConfig(name="ce")], self.plan.loss_context))
        self.log(f"{stage}: training {r.teacher.model} on {len(labelled)} images")
        ckpt = self.checkpoint_path(stage, fp)
        info = train_image_model(model, ce, labelled, epochs=max(1, math.ceil(ft.epochs)),
                                 batch_size=ft.batch_size, learning_rate=ft.learning_rate,
                                 weight_decay=ft.weight_decay, seed=ft.seed, augment=self.augment,
                                 log=self.log, checkpoint=ckpt, checkpoint_key=fp)
        write_stage(folder, fp, lambda d: save_image_model(model, d, self.splits.labels), info)
        remove_checkpoint(ckpt)
        self.report["training"][stage] = info
        return ImageTeacher(str(folder), model=model, loader=load_image_model, skip=(DONE,), log=self.log)

    @classmethod
    def refusal(cls, command: str, recipe: Recipe) -> str | None:
        if command == "finetune" and not any(t.finetune for t in recipe.teachers or [recipe.teacher]):
            return ("teacher.finetune: not set; add `teacher.finetune: {epochs: 4}` to train the image "
                    "teacher here")
        return super().refusal(command, recipe)

    def finetune(self) -> str:
        self.prepare_teacher()
        if self.members:
            return "teachers saved to " + ", ".join(f"{m.name}: {m.source.path}" for m in self.members)
        return f"teacher saved to {self.teacher.path}"

    def release_teacher(self) -> None:
        pass  # small, and needed again for timing and the data-free student

    # -- store --------------------------------------------------------------------------------------------
    def store_key(self, teacher: ImageTeacher | None = None) -> str:
        from distill.store.augment import augmented_store_key

        r = self.recipe
        return augmented_store_key(teacher=(teacher or self.teacher).fingerprint(),
                                   data=tensor_digest(self.splits.train.images),
                                   augment=self.augment.__dict__, epochs=r.vision.store_epochs or self.epochs,
                                   topk=r.store.topk, seed=r.train.seed, task=r.task)

    def teacher_outputs(self, distiller: Distiller) -> tuple[Any, torch.nn.Module | None]:
        r = self.recipe
        if not distiller.needs_teacher:
            return None, None
        if r.store.enabled and not distiller.needs("feature_maps", "teacher"):
            return self.teacher_store(distiller), None
        if r.store.enabled:
            self.log("the losses read teacher feature maps, which the augmented-view store does not keep: "
                     "running the teacher online")
        return None, self.teacher_model()

    def teacher_store(self, distiller: Distiller, build: bool = True):
        t0 = time.perf_counter()
        if self.members:  # each teacher's own store, read as one by the recipe's rule
            from distill.store.ensemble import AugmentedEnsemble

            store = AugmentedEnsemble([self._one_store(m.source) for m in self.members],
                                      [m.name for m in self.members], [m.weight for m in self.members],
                                      self.recipe.combine, labels=self.splits.train.labels)
            self.member_mean_weights = store.mean_weights()
        else:
            store = self._one_store(self.teacher)
        self.report["store_build_seconds"] = time.perf_counter() - t0
        return store

    def _one_store(self, source: ImageTeacher):
        from distill.store.augment import AugmentedStore, build_augmented_store

        r = self.recipe
        teacher = source.model()
        path = build_augmented_store(store_root(r.store), self.store_key(source), self.splits.train.images,
                                     lambda x: teacher(pixel_values=x).logits, self.augment,
                                     r.vision.store_epochs or self.epochs, r.store.topk, r.train.seed,
                                     batch_size=r.train.eval_batch_size, log=self.log,
                                     meta={"teacher": source.path, "labels": self.splits.labels})
        return AugmentedStore.open(path, r.store.reconstruct)

    def _store_reason(self, distiller: Distiller) -> str | None:
        if not distiller.needs_teacher:
            return "losses: none of the recipe's losses reads teacher outputs, so there is nothing to cache"
        if not self.recipe.store.enabled:
            return "store.enabled: false, so the teacher runs online and nothing is stored"
        if distiller.needs("feature_maps", "teacher"):
            return ("the losses read teacher feature maps, which the augmented-view store does not keep: the "
                    "teacher runs online and nothing is stored")
        return None

    def cache(self) -> str:
        """Train the teacher first when the recipe asks (as `distill run` would), then store its outputs on
        every augmented view of every epoch."""
        from distill.store.augment import describe_augmented_store

        distiller = self.distiller()
        if (reason := self._store_reason(distiller)) is not None:
            raise RecipeError(reason)
        self.prepare_teacher()
        store = self.teacher_store(distiller)
        if self.members:
            return "\n\n".join(f"teacher {name}:\n{describe_augmented_store(s)}"
                               for name, s in zip(store.names, store.stores, strict=True))
        return describe_augmented_store(store)

    def cache_info(self) -> str:
        r = self.recipe
        distiller = self.distiller()
        if (reason := self._store_reason(distiller)) is not None:
            return reason
        if r.teachers:
            from distill.tasks.multi_teacher import member_recipes

            return "\n\n".join(f"teacher {name}:\n{self._store_info(recipe)}"
                               for name, _, recipe in member_recipes(r))
        return self._store_info(r)

    def _store_info(self, r: Recipe) -> str:
        from distill.store.augment import AugmentedStore, describe_augmented_store

        ft = r.teacher.finetune
        if ft is not None:
            folder = Path(ft.output_dir) if ft.output_dir else self.out / "teacher"
            if not (folder / DONE).exists():
                return ("the teacher has not been trained yet, so nothing is stored; "
                        "`distill cache RECIPE` does both")
            teacher = ImageTeacher(str(folder), loader=load_image_model, skip=(DONE,), log=self.log)
        else:  # built in code: a random or given model, no training
            teacher = self._prepare_one(r, "teacher")
        root, key = store_root(r.store), self.store_key(teacher)
        if not (root / key / "manifest.json").exists():
            return f"no store yet for key {key} under {root}; `distill cache RECIPE` builds it"
        return describe_augmented_store(AugmentedStore.open(root / key, r.store.reconstruct))

    # -- students -----------------------------------------------------------------------------------------
    def _hook_features(self, model, distiller: Distiller, side: str) -> None:
        if isinstance(model.net, SmallCNN):
            return  # its stage outputs come out directly
        names: list[str] = []
        for loss in distiller.losses:
            get = getattr(loss, "feature_names", None)
            if get is not None and get(side):
                names += [n for n in get(side) if n not in names]
        model.feature_layers = names or None

    def kd_data(self) -> ImageSet:
        return self.splits.train

    def labelled_data(self) -> ImageSet:
        """The training images that keep their labels (all of them unless ``data.labeled_fraction``)."""
        train = self.splits.train
        known = train.labels >= 0
        return train if bool(known.all()) else train.subset(np.flatnonzero(known.numpy()))

    def baseline_steps(self) -> int | None:
        """Same budget as the distilled student: as many optimisation steps, i.e. more epochs over the
        labelled images when the distilled student also saw unlabelled ones (None: same epochs)."""
        labelled, seen = len(self.labelled_data()), len(self.kd_data())
        if labelled >= seen:
            return None
        return self.epochs * math.ceil(seen / self.recipe.train.batch_size)

    def train(self, name: str, distiller: Distiller, data: ImageSet, *, store: Any = None,
              teacher: torch.nn.Module | None = None, max_steps: int | None = None, labels_known: bool = True,
              epochs: int | None = None) -> torch.nn.Module:
        r = self.recipe
        model = self._new_model(r.student.model or "", r.train.seed)
        self._hook_features(model, distiller, "student")
        if teacher is not None:
            self._hook_features(teacher, distiller, "teacher")
        source = "store" if store is not None else "online teacher" if teacher is not None else "labels only"
        self.log(f"{name}: training on {len(data)} images ({source})")
        epochs = epochs or self.epochs
        if max_steps:  # a step budget (the baseline's): whole epochs over ``data`` that reach it
            epochs = max(1, math.ceil(max_steps / math.ceil(len(data) / r.train.batch_size)))
        fp = fingerprint({
            "stage": name, "student": r.student.model, "train": r.train.fingerprinted(), "epochs": epochs,
            "losses": losses_fingerprint(distiller),
            "augment": self.augment.__dict__, "labels_known": labels_known,
            "data": tensor_digest(data.images, data.labels), "store": getattr(store, "key", None),
            "teacher": self.teacher.fingerprint() if teacher is not None else None,
        })
        ckpt = self.checkpoint_path(name, fp)
        info = train_image_model(model, distiller, data, epochs=epochs, batch_size=r.train.batch_size,
                                 learning_rate=r.train.learning_rate, weight_decay=r.train.weight_decay,
                                 seed=r.train.seed, augment=self.augment, teacher=teacher, store=store,
                                 labels_known=labels_known, log=self.log, checkpoint=ckpt, checkpoint_key=fp)
        info["rows"] = len(data)
        self.report["training"][name] = info
        self._finished_checkpoints.append(ckpt)
        return model

    def export_student(self, student: torch.nn.Module) -> None:
        student_dir = self.out / "student"
        save_image_model(student, student_dir, self.splits.labels)
        (student_dir / "recipe.yaml").write_text(self.recipe.to_yaml())

    def more_students(self) -> None:
        """The data-free student (``vision.datafree``): distilled from images synthesised from the teacher's
        BatchNorm statistics alone."""
        r = self.recipe
        if r.vision is None or r.vision.datafree is None:
            return
        from distill.teachers.datafree import SynthesisSettings, synthesize

        cfg = r.vision.datafree
        settings = SynthesisSettings(num_images=cfg.num_images, batch_size=cfg.batch_size, steps=cfg.steps,
                                     learning_rate=cfg.learning_rate,
                                     latent_learning_rate=cfg.latent_learning_rate, latent_dim=cfg.latent_dim,
                                     generator_width=cfg.generator_width, first_bn_weight=cfg.first_bn_weight,
                                     ce_weight=cfg.ce_weight, tv_weight=cfg.tv_weight,
                                     l2_weight=cfg.l2_weight, jitter=cfg.jitter, seed=r.train.seed)
        self.log(f"data-free: synthesising {cfg.num_images} images from the teacher's BatchNorm statistics")
        syn = synthesize(self.teacher_model(), self.splits.shape, self.splits.num_labels, settings,
                         log=self.log)
        kd_specs = ([s for s in r.losses if s.name == "kd"]
                    or [LossConfig(name="kd", params={"temperature": 4.0})])
        distiller = Distiller(build_losses(kd_specs, self.plan.loss_context))
        data = ImageSet(syn["images"], torch.full((syn["images"].shape[0],), -100, dtype=torch.long))
        student = self.train("student_datafree", distiller, data, teacher=self.teacher_model(),
                             labels_known=False, epochs=cfg.epochs)
        self.evaluate("student_datafree", student)
        self.report["datafree"] = {"images": int(data.images.shape[0]), "synthesis_seconds": syn["seconds"],
                                   "final_bns_loss": float(np.mean(syn["bns_loss"])),
                                   "label_hit_rate": syn["label_hit_rate"], "settings": settings.__dict__,
                                   "student_epochs": cfg.epochs or self.epochs}

    # -- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, role: str, model: torch.nn.Module) -> np.ndarray:
        from distill.evaluation import classification_metrics, count_parameters
        from distill.evaluation.predictions import softmax
        from distill.evaluation.speed import weights_size_mb

        r, test = self.recipe, self.splits.test
        logits = predict_image_logits(model, test.images, r.train.eval_batch_size).numpy()
        self.test_probs[role] = softmax(logits).astype(np.float32)
        metrics = classification_metrics(logits, test.labels.numpy(), self.teacher_pred)
        metrics["parameters"] = count_parameters(model)
        metrics["size_mb"] = weights_size_mb(model)
        self.test_correct[role] = logits.argmax(-1) == test.labels.numpy()
        # timed at the end, interleaved with the other models (time_latency), on the same images
        self.latency_inputs[role] = {"pixel_values": test.images[:32]}
        self._models[role] = model
        self.report["models"][role] = metrics
        self.log(f"{role}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
        pred = logits.argmax(-1)
        if role == "teacher":
            self.teacher_pred = pred
        return pred

    def evaluate_teacher(self) -> Any:
        if not self.members:
            return self.evaluate("teacher", self.teacher_model())
        from distill.evaluation import classification_metrics, count_parameters
        from distill.evaluation.predictions import softmax
        from distill.evaluation.speed import weights_size_mb
        from distill.tasks.multi_teacher import MemberModels, combined_test_logits

        test = self.splits.test
        for m in self.members:
            self.member_test_logits[m.name] = predict_image_logits(m.source.model(), test.images,
                                                                   self.recipe.train.eval_batch_size).numpy()
        combined = combined_test_logits(self.member_test_logits, self.recipe.combine,
                                        [m.weight for m in self.members])
        self.combined_test_logits = combined
        ensemble = MemberModels([m.source.model() for m in self.members])
        self.test_probs["teacher"] = softmax(combined).astype(np.float32)
        metrics = classification_metrics(combined, test.labels.numpy())
        metrics.update(parameters=count_parameters(ensemble), size_mb=weights_size_mb(ensemble),
                       teachers=len(self.members))
        self.test_correct["teacher"] = combined.argmax(-1) == test.labels.numpy()
        self.latency_inputs["teacher"] = {f"t{i}_pixel_values": test.images[:32]
                                          for i in range(len(self.members))}
        self._models["teacher"] = ensemble
        self.report["models"]["teacher"] = metrics
        self.log(f"teacher (combined): accuracy {metrics['accuracy']:.4f}, "
                 f"macro-F1 {metrics['macro_f1']:.4f}")
        self.teacher_pred = combined.argmax(-1)
        return self.teacher_pred

    def latency_models(self) -> dict[str, torch.nn.Module]:
        return dict(self._models)

    # -- report -------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        from distill.evaluation import format_table, summarise
        from distill.evaluation.report import class_warnings, classification_significance

        r, sp = self.recipe, self.splits
        models = self.report["models"]
        if process_state().is_main_process:
            self.time_latency()
        self.report["significance"] = classification_significance(self.test_correct, seed=r.train.seed)
        self.report["warnings"] = class_warnings(models, sp.labels, self.report["significance"])
        self.report["labels"] = sp.labels
        summary = summarise(models, self.report.get("latency"), self.report["significance"])
        if self.members:
            from distill.evaluation.report import format_teachers
            from distill.tasks.multi_teacher import members_report

            self.report["teachers"] = members_report(self.members, self.member_test_logits,
                                                     self.combined_test_logits, sp.test.labels.numpy(),
                                                     r.combine, self.member_mean_weights)
            self.log(format_teachers(self.report["teachers"]))
        if "student_datafree" in models and "student_kd" in models:
            summary["datafree_gap_accuracy"] = (models["student_datafree"]["accuracy"]
                                                - models["student_kd"]["accuracy"])
        table = format_table(models, summary, self.report)
        self.report.update({
            **self.common_report(), "labels": sp.labels, "summary": summary,
            "data": {"train": len(self.labelled_data()),
                     "unlabeled": len(sp.train) - len(self.labelled_data()),
                     "validation": len(sp.validation), "test": len(sp.test)},
            "image_shape": list(sp.shape),
            "student_parameters": models.get("student_kd", {}).get("parameters"),
        })
        self.report["versions"].pop("transformers", None)  # image runs do not use it
        if self.test_probs:  # confusion matrices and the test images where the student departs most
            import pandas as pd

            from distill.evaluation.predictions import FILENAME, analyse, prediction_rows, write_predictions

            test = pd.DataFrame({"text": [f"test image {i}" for i in range(len(sp.test))],
                                 "label": sp.test.labels.numpy()})
            rows = prediction_rows(test, sp.labels, self.test_probs)
            write_predictions(self.out / FILENAME, rows)
            self.report["analysis"] = analyse(rows, sp.labels)
        if r.export.model_card and process_state().is_main_process:
            from distill.export.model_card import write_image_model_card

            write_image_model_card(self.out / "student", r, self.report, table)
        for ckpt in self._finished_checkpoints:
            remove_checkpoint(ckpt)
        self.write_outputs(table, f"student saved to {self.out / 'student'}; ")
        return self.report
