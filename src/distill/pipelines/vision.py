"""``task: image-classification``: recipe -> images -> teacher (trained by the toolkit or given) -> augmented-view
store -> student(s) -> three-way report (teacher / distilled / no-KD), plus an optional data-free student.

Stages and their differences from a text run:

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

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill._dataclass_io import RecipeError
from distill.config import Recipe
from distill.data.images import Augment, ImageSet, ImageSplits, load_image_splits
from distill.losses import LossContext, build_losses
from distill.pipeline import DONE, Plan, Run, _fingerprint, _state, stage_done, write_stage
from distill.students.vision import (
    SmallCNN,
    build_image_model,
    load_image_model,
    save_image_model,
)
from distill.training import Distiller
from distill.training.vision import (
    predict_image_logits,
    remove_checkpoint,
    train_image_model,
)


def plan_vision(recipe: Recipe) -> Plan:
    """Load and split the images and build the losses: everything checkable before any training."""
    splits = load_image_splits(recipe.data)
    ctx = LossContext(num_classes=splits.num_labels)
    build_losses(recipe.losses, ctx)
    return Plan(recipe, splits, None, None, True, ctx)  # type: ignore[arg-type]


def _weights_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*")):
        if f.is_file() and f.name != DONE:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _losses_fingerprint(distiller: Distiller) -> list[Any]:
    """Names, weights and the plain settings (temperature, ...) of a distiller's losses."""
    plain = (int, float, str, bool, list, tuple, type(None))
    return [(n, w, {k: v for k, v in sorted(vars(m).items()) if not k.startswith("_") and isinstance(v, plain)})
            for n, w, m in zip(distiller.names, distiller.weights, distiller.losses)]


class VisionRun(Run):
    """One image-classification run."""

    def build_teacher_store(self, distiller: Distiller):
        raise RecipeError("task: image-classification keeps one store of augmented views per epoch, built by "
                          "`distill run` after the teacher is trained; `distill cache` does not apply")

    def store_location(self, distiller: Distiller):
        return self.build_teacher_store(distiller)

    def make_plan(self) -> Plan:
        self._finished_checkpoints: list[Path | None] = []  # deleted once the run's results are saved
        self._latency_models: dict[str, torch.nn.Module] = {}  # image models are small: kept for the timing
        return plan_vision(self.recipe)

    def latency_models(self) -> dict[str, torch.nn.Module]:
        return dict(self._latency_models)

    @property
    def splits(self) -> ImageSplits:
        return self.plan.splits  # type: ignore[return-value]

    @property
    def augment(self) -> Augment:
        a = self.recipe.vision.augment  # type: ignore[union-attr]
        return Augment(pad=a.pad, rotate=a.rotate, cutout=a.cutout)

    def checkpoint_path(self, stage: str, fingerprint: str) -> Path | None:
        """Where ``stage`` keeps its end-of-epoch checkpoint (None with ``train.resume: false``); checkpoints of
        the same stage under another fingerprint (a changed recipe) are removed."""
        folder = self.out / "checkpoints" / stage
        path = folder / f"{fingerprint}.pt"
        if folder.exists():
            for old in folder.glob("*.pt"):
                if old != path:
                    self.log(f"{stage}: discarding the checkpoint of a different recipe {old.name}")
                    old.unlink()
        if not self.recipe.train.resume:
            remove_checkpoint(path)
            return None
        return path

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.recipe.train.epochs))

    def _new_model(self, source: str, seed: int):
        torch.manual_seed(seed)
        c = self.splits.shape[0]
        return build_image_model(source, self.splits.num_labels, c)

    # -- teacher ------------------------------------------------------------------------------------------
    def prepare_teacher(self) -> None:
        r = self.recipe
        ft = r.teacher.finetune
        if ft is None:
            self.teacher_path = r.teacher.model
            self._teacher = build_image_model(r.teacher.model, self.splits.num_labels, self.splits.shape[0]).eval()
            return
        folder = Path(ft.output_dir) if ft.output_dir else self.out / "teacher"
        fp = _fingerprint({"model": r.teacher.model, "finetune": ft.__dict__, "augment": self.augment.__dict__,
                           "data": _tensor_digest(self.splits.train.images, self.splits.train.labels)})
        self.teacher_path = str(folder)
        if (done := stage_done(folder, fp)) is not None:
            self.log(f"teacher: already trained, reusing {folder}")
            self._teacher = load_image_model(folder).eval()
            self.report["training"]["teacher"] = done.get("training", {})
            return
        model = self._new_model(r.teacher.model, ft.seed)
        ce = Distiller(build_losses([type(r.losses[0])(name="ce")], self.plan.loss_context))
        self.log(f"teacher: training {r.teacher.model} on {len(self.splits.train)} images")
        ckpt = self.checkpoint_path("teacher", fp)
        info = train_image_model(model, ce, self.splits.train, epochs=max(1, math.ceil(ft.epochs)),
                                 batch_size=ft.batch_size, learning_rate=ft.learning_rate,
                                 weight_decay=ft.weight_decay, seed=ft.seed, augment=self.augment, log=self.log,
                                 checkpoint=ckpt, checkpoint_key=fp)
        write_stage(folder, fp, lambda d: save_image_model(model, d, self.splits.labels), info)
        remove_checkpoint(ckpt)
        self.report["training"]["teacher"] = info
        self._teacher = model.eval()

    def teacher(self) -> torch.nn.Module:
        assert self._teacher is not None, "prepare_teacher() first"
        return self._teacher

    def teacher_fingerprint(self) -> str:
        p = Path(self.teacher_path)
        if p.is_dir():
            return _weights_digest(p)
        return _tensor_digest(*[v.float().cpu() for v in self.teacher().state_dict().values()])

    # -- store --------------------------------------------------------------------------------------------
    def open_or_build_store(self, distiller: Distiller, kd_frame: Any = None, build: bool = True):
        from distill.store import default_store_root
        from distill.store.augment import AugmentedStore, augmented_store_key, build_augmented_store

        r = self.recipe
        epochs = r.vision.store_epochs or self.epochs  # type: ignore[union-attr]
        train = self.splits.train
        key = augmented_store_key(teacher=self.teacher_fingerprint(), data=_tensor_digest(train.images),
                                  augment=self.augment.__dict__, epochs=epochs, topk=r.store.topk,
                                  seed=r.train.seed, task=r.task)
        root = Path(r.store.dir) if r.store.dir else default_store_root()
        teacher = self.teacher()
        t0 = time.perf_counter()
        path = build_augmented_store(root, key, train.images, lambda x: teacher(pixel_values=x).logits,
                                     self.augment, epochs, r.store.topk, r.train.seed,
                                     batch_size=r.train.eval_batch_size, log=self.log,
                                     meta={"teacher": self.teacher_path, "labels": self.splits.labels})
        self.report["store_build_seconds"] = time.perf_counter() - t0
        return AugmentedStore.open(path, r.store.reconstruct)

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

    def train_image_student(self, name: str, distiller: Distiller, data: ImageSet, *, store=None, teacher=None,
                            labels_known: bool = True, epochs: int | None = None):
        r = self.recipe
        model = self._new_model(r.student.model or "", r.train.seed)
        self._hook_features(model, distiller, "student")
        if teacher is not None:
            self._hook_features(teacher, distiller, "teacher")
        source = "store" if store is not None else "online teacher" if teacher is not None else "labels only"
        self.log(f"{name}: training on {len(data)} images ({source})")
        epochs = epochs or self.epochs
        fp = _fingerprint({
            "stage": name, "student": r.student.model, "train": r.train.__dict__, "epochs": epochs,
            "losses": _losses_fingerprint(distiller),
            "augment": self.augment.__dict__, "labels_known": labels_known,
            "data": _tensor_digest(data.images, data.labels), "store": getattr(store, "key", None),
            "teacher": self.teacher_fingerprint() if teacher is not None else None,
        })
        ckpt = self.checkpoint_path(name, fp)
        info = train_image_model(model, distiller, data, epochs=epochs, batch_size=r.train.batch_size,
                                 learning_rate=r.train.learning_rate, weight_decay=r.train.weight_decay,
                                 seed=r.train.seed, augment=self.augment, teacher=teacher, store=store,
                                 labels_known=labels_known, log=self.log, checkpoint=ckpt, checkpoint_key=fp)
        self.report["training"][name] = info
        self._finished_checkpoints.append(ckpt)
        return model

    def evaluate(self, role: str, model, tokenizer=None, teacher_pred: np.ndarray | None = None) -> np.ndarray:
        from distill.evaluation import classification_metrics, count_parameters
        from distill.evaluation.predictions import softmax
        from distill.evaluation.speed import weights_size_mb

        r, test = self.recipe, self.splits.test
        logits = predict_image_logits(model, test.images, r.train.eval_batch_size).numpy()
        self.test_probs[role] = softmax(logits).astype(np.float32)
        metrics = classification_metrics(logits, test.labels.numpy(), teacher_pred)
        metrics["parameters"] = count_parameters(model)
        metrics["size_mb"] = weights_size_mb(model)
        self.test_correct[role] = logits.argmax(-1) == test.labels.numpy()
        # timed at the end, interleaved with the other models (Run.time_latency), on the same images
        self.latency_inputs[role] = {"pixel_values": test.images[:32]}
        self._latency_models[role] = model
        self.report["models"][role] = metrics
        self.log(f"{role}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
        return logits.argmax(-1)

    # -- data-free ----------------------------------------------------------------------------------------
    def datafree_student(self, teacher_pred: np.ndarray) -> None:
        from distill.config import LossConfig
        from distill.teachers.datafree import SynthesisSettings, synthesize

        r = self.recipe
        cfg = r.vision.datafree  # type: ignore[union-attr]
        settings = SynthesisSettings(num_images=cfg.num_images, batch_size=cfg.batch_size, steps=cfg.steps,
                                     learning_rate=cfg.learning_rate,
                                     latent_learning_rate=cfg.latent_learning_rate, latent_dim=cfg.latent_dim,
                                     generator_width=cfg.generator_width, first_bn_weight=cfg.first_bn_weight,
                                     ce_weight=cfg.ce_weight, tv_weight=cfg.tv_weight, l2_weight=cfg.l2_weight,
                                     jitter=cfg.jitter, seed=r.train.seed)
        self.log(f"data-free: synthesising {cfg.num_images} images from the teacher's BatchNorm statistics")
        syn = synthesize(self.teacher(), self.splits.shape, self.splits.num_labels, settings, log=self.log)
        kd_specs = [s for s in r.losses if s.name == "kd"] or [LossConfig(name="kd", params={"temperature": 4.0})]
        distiller = Distiller(build_losses(kd_specs, self.plan.loss_context))
        data = ImageSet(syn["images"], torch.full((syn["images"].shape[0],), -100, dtype=torch.long))
        student = self.train_image_student("student_datafree", distiller, data, teacher=self.teacher(),
                                           labels_known=False, epochs=cfg.epochs)
        self.evaluate("student_datafree", student, None, teacher_pred)
        self.report["datafree"] = {"images": int(data.images.shape[0]), "synthesis_seconds": syn["seconds"],
                                   "final_bns_loss": float(np.mean(syn["bns_loss"])),
                                   "label_hit_rate": syn["label_hit_rate"], "settings": settings.__dict__,
                                   "student_epochs": cfg.epochs or self.epochs}

    # -- the run ------------------------------------------------------------------------------------------
    def __call__(self) -> dict[str, Any]:
        r = self.recipe
        self.prepare_teacher()
        distiller = Distiller(build_losses(r.losses, self.plan.loss_context))
        store = None
        if distiller.needs_teacher and r.store.enabled and not distiller.needs("feature_maps", "teacher"):
            store = self.open_or_build_store(distiller)
            self.report["store"] = {"key": store.key, "path": str(store.path), **store.info()}
        elif distiller.needs("feature_maps", "teacher") and r.store.enabled:
            self.log("the losses read teacher feature maps, which the augmented-view store does not keep: "
                     "running the teacher online")
        teacher_pred = self.evaluate("teacher", self.teacher())
        online = self.teacher() if distiller.needs_teacher and store is None else None
        student = self.train_image_student("student", distiller, self.splits.train, store=store, teacher=online)
        self.evaluate("student_kd", student, None, teacher_pred)
        if r.eval.baseline:
            ce = Distiller(build_losses([type(r.losses[0])(name="ce")], self.plan.loss_context))
            base = self.train_image_student("student_no_kd", ce, self.splits.train)
            self.evaluate("student_no_kd", base, None, teacher_pred)
        if r.vision is not None and r.vision.datafree is not None:
            self.datafree_student(teacher_pred)
        return self.finish_vision(student)

    def finish_vision(self, student) -> dict[str, Any]:
        from distill import __version__
        from distill.evaluation import format_table, summarise, write_report
        from distill.evaluation.report import classification_significance

        r, sp = self.recipe, self.splits
        models = self.report["models"]
        student_dir = self.out / "student"
        save_image_model(student, student_dir, sp.labels)
        (student_dir / "recipe.yaml").write_text(r.to_yaml())
        if _state().is_main_process:
            self.time_latency()
        self.report["significance"] = classification_significance(self.test_correct, seed=r.train.seed)
        summary = summarise(models, self.report.get("latency"), self.report["significance"])
        if "student_datafree" in models and "student_kd" in models:
            summary["datafree_gap_accuracy"] = models["student_datafree"]["accuracy"] - models["student_kd"]["accuracy"]
        table = format_table(models, summary, self.report)
        self.report.update({
            "task": r.task, "labels": sp.labels, "summary": summary, "teacher_path": self.teacher_path,
            "data": {"train": len(sp.train), "unlabeled": 0, "validation": len(sp.validation), "test": len(sp.test)},
            "image_shape": list(sp.shape),
            "recipe": r.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"distill": __version__, "torch": torch.__version__},
            "student_parameters": models.get("student_kd", {}).get("parameters"),
            "store_key": self.report.get("store", {}).get("key"),
        })
        if self.test_probs:  # confusion matrices and the test images where the student departs most
            import pandas as pd

            from distill.evaluation.predictions import FILENAME, analyse, prediction_rows, write_predictions

            test = pd.DataFrame({"text": [f"test image {i}" for i in range(len(sp.test))],
                                 "label": sp.test.labels.numpy()})
            rows = prediction_rows(test, sp.labels, self.test_probs)
            write_predictions(self.out / FILENAME, rows)
            self.report["analysis"] = analyse(rows, sp.labels)
        write_report(self.out / "report.json", self.report)
        for ckpt in self._finished_checkpoints:
            remove_checkpoint(ckpt)
        from distill.evaluation.html_report import write_html_report

        html = write_html_report(self.out)  # errors surface, as in text runs
        print("\n" + table + "\n", flush=True)
        self.log(f"student saved to {student_dir}; report in {self.out / 'report.json'} and {html}")
        return self.report
