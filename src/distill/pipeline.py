"""recipe -> data -> teacher outputs (stored) -> student training -> evaluation -> export.

:func:`plan` does every check that needs no weights (recipe, data columns and labels, model configs,
layer indices, loss shapes), so a bad recipe fails in seconds. :func:`run` then does the heavy work,
each stage resumable: a fine-tuned teacher, a finished store and a finished student are reused, and an
interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill._dataclass_io import RecipeError
from distill.config import Recipe, StoreConfig
from distill.data import DistillCollator, TextSplits, load_splits, same_tokenizer, to_dataset
from distill.losses import LossContext, build_losses
from distill.models import (
    config_labels,
    forward_outputs,
    hidden_size,
    is_sequence_classifier,
    load_classifier,
    load_config,
    load_tokenizer,
    model_inputs,
    num_layers,
)
from distill.outputs import ModelOutputs
from distill.students import check_layers, student_from_teacher
from distill.training import Distiller, DistillTrainer

Log = Callable[[str], None]
DONE = "distill_done.json"


def _log(msg: str) -> None:
    print(f"[distill] {msg}", flush=True)


class StoreKeyUnknown(Exception):
    """A run's store key depends on something only the teacher can produce and that is not on disk yet (the
    causal-LM teacher's own continuations); the message says what is missing."""


def _quiet_libraries() -> None:
    """Progress bars only on a terminal; transformers' load reports only when something is wrong."""
    import datasets
    import transformers

    from distill.training.args import progress_enabled

    if not progress_enabled():
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar, on every model load
    transformers.logging.set_verbosity_error()


@dataclass
class Plan:
    """Everything known before weights load."""

    recipe: Recipe
    splits: TextSplits
    teacher_config: Any
    student_config: Any | None
    same_tokenizer: bool
    loss_context: LossContext
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return self.splits.labels


def _plan_blackbox(recipe: Recipe) -> Plan:
    """A black-box teacher has no weights or config: check the data, the student and that every loss can
    work from the teacher's labels and probabilities alone."""
    for spec in recipe.losses:
        from distill.losses import LOSSES

        needs = set(LOSSES.get(spec.name).teacher_needs) - {"logits"}
        if needs:
            raise RecipeError(f"losses: {spec.name!r} needs the teacher's {sorted(needs)}, which a black-box teacher "
                              "does not expose; use kd, hard_kd and ce")
    splits = load_splits(recipe.data)
    sconf = load_config(recipe.student.model or "", "student.model")
    s_layers = len(recipe.student.layers) if recipe.student.layers else num_layers(sconf)
    if recipe.student.layers:
        check_layers(list(recipe.student.layers), num_layers(sconf), "the student model")
    ctx = LossContext(student_hidden_size=hidden_size(sconf), student_num_layers=s_layers,
                      num_classes=splits.num_labels, same_tokenizer=False)
    build_losses(recipe.losses, ctx)
    return Plan(recipe, splits, None, sconf, False, ctx)


def plan(recipe: Recipe) -> Plan:
    """Validate the whole run without loading weights."""
    if recipe.teacher.blackbox is not None:
        return _plan_blackbox(recipe)
    t = recipe.teacher
    tconf = load_config(t.model, "teacher.model", t.revision, t.trust_remote_code)
    teacher_labels = None
    if t.finetune is None:
        if not is_sequence_classifier(tconf):
            archs = ", ".join(getattr(tconf, "architectures", None) or [type(tconf).__name__])
            raise RecipeError(
                f"teacher.model: {t.model!r} is a {archs}, not a sequence classifier; add "
                "`teacher.finetune: {epochs: 1}` to fine-tune it on your labels first (or run `distill finetune`)"
            )
        teacher_labels = config_labels(tconf)
        if recipe.data.labels and teacher_labels and list(recipe.data.labels) != teacher_labels:
            raise RecipeError(
                f"data.labels: {recipe.data.labels} differ from the teacher's id2label {teacher_labels}; "
                "use the teacher's label order (or drop data.labels)"
            )
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
    if recipe.store.enabled:
        _check_storable(Distiller(losses))  # before the teacher is fine-tuned or run
    return Plan(recipe, splits, tconf, sconf, same_tok, ctx)


# ----------------------------------------------------------------------------------------------------------
def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _kd_frame(splits: TextSplits):
    import pandas as pd

    frames = [splits.train]
    if splits.unlabeled is not None and len(splits.unlabeled):
        frames.append(splits.unlabeled)
    return pd.concat(frames, ignore_index=True)


def _hash_files(p: Path) -> str | None:
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin")) + list(p.glob("config.json")))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _teacher_fingerprint(path: str, model: torch.nn.Module | None, revision: str | None = None,
                         load: Callable[[], torch.nn.Module] | None = None) -> str:
    """Hash of the teacher's weight files (no load needed). A hub id is hashed through its local snapshot
    (downloaded once by the Hub client, cached after); only when that fails are the loaded weights hashed."""
    p = Path(path)
    if not p.is_dir():
        try:
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(path, revision=revision,
                                       allow_patterns=["*.json", "*.safetensors", "*.bin"]))
        except Exception:  # offline, gated, or not a hub repo: fall back to the weights themselves
            p = Path(path)
    digest = _hash_files(p) if p.is_dir() else None
    if digest is not None:
        return digest
    if model is None and load is not None:
        model = load()
    if model is None:
        raise RuntimeError(f"cannot fingerprint the teacher {path!r}: no local files and no loaded model")
    from distill.store import fingerprint_model

    return fingerprint_model(model)


def store_spec(cfg: StoreConfig, distiller: Distiller):
    """What the store keeps: the recipe's ``store.capture`` plus whatever the losses read from the teacher
    (only the hidden-state layers they use)."""
    from distill.store import StoreSpec

    _check_storable(distiller)
    capture = set(cfg.capture)
    for name in ("logits", "hidden_states", "embeddings", "qkv"):
        if distiller.needs(name, "teacher"):
            capture.add(name)
    layers = tuple(distiller.teacher_layers()) if "hidden_states" in capture else ()
    qkv_layers = distiller.qkv_layers("teacher") if "qkv" in capture else None
    if qkv_layers == "all":  # the pipeline builds losses with the models' depths, so this means a bug
        raise RecipeError("losses: a loss reads the teacher's qkv but could not tell which layers; the store "
                          "cannot keep them (set store.enabled: false)")
    return StoreSpec(capture=tuple(sorted(capture)), layers=layers, topk=cfg.topk, dtype=cfg.dtype,
                     shard_size=cfg.shard_size, reconstruct=cfg.reconstruct, qkv_layers=tuple(qkv_layers or ()))


def _check_storable(distiller: Distiller) -> None:
    """The store keeps logits, embeddings, hidden states and Q/K/V projections; not attention matrices."""
    if distiller.needs("attentions", "teacher"):
        names = [n for n, m in zip(distiller.names, distiller.losses) if "attentions" in m.teacher_needs]
        raise RecipeError(
            f"losses: {', '.join(names)} read the teacher's attention matrices, which the teacher-output store does "
            "not keep (O(L^2) per example; it keeps the Q/K/V projections that attention_mse, minilm and "
            "minilm_v2 rebuild the maps from); set store.enabled: false to run the teacher every step"
        )


def _state():
    """The accelerate process state: one process normally, several under `accelerate launch` / torchrun.
    Shared files are written by the main process only; the others wait for it."""
    from accelerate import PartialState

    return PartialState()


def stage_done(folder: Path, fp: str) -> dict[str, Any] | None:
    """The record of a finished stage built with fingerprint ``fp`` (None: build it again)."""
    marker = folder / DONE
    if not marker.exists():
        return None
    record = json.loads(marker.read_text())
    return record if record.get("fingerprint") == fp else None


def write_stage(folder: Path, fp: str, write: Callable[[Path], None], training: dict[str, Any] | None = None) -> None:
    """Write a stage's folder whole or not at all: ``write`` fills ``folder.tmp``, the record naming its
    fingerprint goes in last, then the folder is renamed into place."""
    tmp = Path(str(folder) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    record: dict[str, Any] = {"fingerprint": fp}
    if training is not None:
        record["training"] = training
    (tmp / DONE).write_text(json.dumps(record, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def train_resuming(trainer: Any, ckpt: Path, name: str, resume: bool, log: Log) -> dict[str, Any]:
    """Train, continuing from the stage's last checkpoint when there is one (and ``resume`` allows it);
    returns the stage's training record (time, steps, loss, the trainer's log history)."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(ckpt)) if ckpt.exists() and resume else None
    if last:
        log(f"{name}: resuming from {last}")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    return {"seconds": time.perf_counter() - t0, "steps": result.global_step,
            "train_loss": result.training_loss, "log_history": trainer.state.log_history}


def stage_checkpoints(out: Path, name: str, fp: str, log: Log) -> Path:
    """The checkpoint folder of stage ``name``; checkpoints left by a different recipe are discarded (a
    resumed run must continue the same training, never a stale one)."""
    ckpt = out / "checkpoints" / name
    stamp = ckpt / "distill_stage.json"
    with _state().main_process_first():
        if ckpt.exists() and (not stamp.exists() or json.loads(stamp.read_text()).get("fingerprint") != fp):
            log(f"{name}: discarding checkpoints of a different recipe in {ckpt}")
            shutil.rmtree(ckpt, ignore_errors=True)
        ckpt.mkdir(parents=True, exist_ok=True)
        if _state().is_main_process:
            stamp.write_text(json.dumps({"fingerprint": fp}))
    return ckpt


class Run:
    """The state of one recipe run; each method is one resumable stage."""

    def __init__(self, recipe: Recipe, log: Log = _log):
        self.recipe = recipe
        self.log = log
        _quiet_libraries()
        self.out = Path(recipe.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.plan = self.make_plan()
        self.teacher_path = recipe.teacher.model
        self._teacher: torch.nn.Module | None = None
        self.teacher_tokenizer = None
        self.student_tokenizer = None
        self.report: dict[str, Any] = {"models": {}, "training": {}}
        self.test_probs: dict[str, np.ndarray] = {}  # role -> (N, C) test-split probabilities, for the report
        self.test_correct: dict[str, np.ndarray] = {}  # role -> (N,) bool, for the paired significance tests
        self.latency_inputs: dict[str, dict[str, torch.Tensor]] = {}  # role -> the batch it is timed on

    def make_plan(self) -> Plan:
        return plan(self.recipe)

    # -- teacher ------------------------------------------------------------------------------------------
    def prepare_teacher(self) -> None:
        r = self.recipe
        if r.teacher.finetune is not None:
            from distill.teachers import finetune_teacher

            self.teacher_path = str(finetune_teacher(r, self.plan.splits, log=self.log))
        else:
            from distill.packaged import resolve_model

            self.teacher_path = resolve_model(r.teacher.model)
        self.teacher_tokenizer = load_tokenizer(self.teacher_path, None if r.teacher.finetune else r.teacher.revision)

    def teacher(self) -> torch.nn.Module:
        if self._teacher is None:
            self.log(f"loading the teacher from {self.teacher_path}")
            from accelerate import PartialState

            self._teacher = load_classifier(self.teacher_path, None, None if self.recipe.teacher.finetune
                                            else self.recipe.teacher.revision).eval()
            self._teacher.to(PartialState().device)
        return self._teacher

    def teacher_fingerprint(self) -> str:
        if getattr(self, "_teacher_fp", None) is None:
            revision = None if self.recipe.teacher.finetune else self.recipe.teacher.revision
            self._teacher_fp = _teacher_fingerprint(self.teacher_path, self._teacher, revision, load=self.teacher)
        return self._teacher_fp

    def release_teacher(self) -> None:
        self._teacher = None
        gc.collect()

    # -- student init -------------------------------------------------------------------------------------
    def student_init(self) -> Path:
        """The student's starting weights, saved once so the KD and the no-KD runs start identically."""
        with _state().main_process_first():  # rank 0 builds and saves it; the others then reuse it
            return self._student_init()

    def _student_init(self) -> Path:
        r = self.recipe
        init = self.out / "student_init"
        fp = _fingerprint({"student": r.student.__dict__, "labels": self.plan.labels, "seed": r.train.seed,
                           "teacher": self.teacher_fingerprint() if r.student.from_teacher else None})
        if stage_done(init, fp):
            self.student_tokenizer = load_tokenizer(str(init))
            return init
        from transformers import set_seed

        set_seed(r.train.seed)
        if r.student.from_teacher:
            model = student_from_teacher(self.teacher(), list(r.student.layers or []))
            tokenizer = self.teacher_tokenizer
        else:
            from transformers import AutoModelForSequenceClassification

            from distill.models import label_maps
            from distill.packaged import resolve_model

            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_model(r.student.model or ""), ignore_mismatched_sizes=True, **label_maps(self.plan.labels)
            )
            if r.student.layers:  # a shallower copy of the pre-trained student
                model = student_from_teacher(model, list(r.student.layers))
            tokenizer = load_tokenizer(r.student.model or "")
        from distill.export import save_student

        write_stage(init, fp, lambda d: save_student(model, tokenizer, d, self.plan.labels))
        self.student_tokenizer = tokenizer
        return init

    # -- store --------------------------------------------------------------------------------------------
    def store_spec(self, distiller: Distiller):
        return store_spec(self.recipe.store, distiller)

    def store_key(self, spec, kd_frame) -> str:
        from distill.store import fingerprint_rows, fingerprint_tokenizer, store_key

        rows = list(zip(kd_frame["text"], kd_frame.get("text_pair", kd_frame["text"] * 0)))
        return store_key(
            teacher=self.teacher_fingerprint(),
            tokenizer=fingerprint_tokenizer(self.teacher_tokenizer),
            data=fingerprint_rows(rows),
            max_length=self.recipe.data.max_length,
            task=self.recipe.task,
            spec=spec,
        )

    def build_teacher_store(self, distiller: Distiller):
        """`distill cache`: run the teacher over the recipe's training text into the store (or find it)."""
        return self.open_or_build_store(distiller, _kd_frame(self.plan.splits))

    def store_location(self, distiller: Distiller) -> tuple[Path, str]:
        """(root, key) of the store this run would use, without running the teacher."""
        spec = self.store_spec(distiller)
        key = self.store_key(spec, _kd_frame(self.plan.splits))
        from distill.store import default_store_root

        return (Path(self.recipe.store.dir) if self.recipe.store.dir else default_store_root()), key

    def open_or_build_store(self, distiller: Distiller, kd_frame, build: bool = True):
        from distill.store import TeacherStore, build_store, default_store_root
        from distill.training.args import progress_enabled

        spec = self.store_spec(distiller)
        key = self.store_key(spec, kd_frame)
        root = Path(self.recipe.store.dir) if self.recipe.store.dir else default_store_root()
        path = root / key
        exists = (path / "manifest.json").exists()
        if not exists and not build:
            raise RecipeError(f"no store with key {key} under {root}; build it with `distill cache`")
        need_hidden = "hidden_states" in spec.capture
        lazy: dict[str, Any] = {}

        @torch.no_grad()
        def compute(indices: list[int]):
            # the teacher and its tokenised data load only if some shard is missing or damaged
            if not lazy:
                lazy["teacher"] = self.teacher()
                lazy["ds"] = to_dataset(kd_frame, self.teacher_tokenizer, max_length=self.recipe.data.max_length)
                lazy["collate"] = DistillCollator(self.teacher_tokenizer)
            batch = lazy["collate"]([lazy["ds"][i] for i in indices])
            device = next(lazy["teacher"].parameters()).device
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            return forward_outputs(lazy["teacher"], inputs, hidden=need_hidden,
                                   embeddings="embeddings" in spec.capture, qkv_layers=spec.qkv_layers or None)

        if not exists:
            self.log(f"running the teacher once over {len(kd_frame)} examples into the store {path}")
        t0 = time.perf_counter()
        # under `accelerate launch` every process runs the teacher on its own shards; rank 0 writes the manifest.
        # On an existing store this re-checks every shard's checksum and rebuilds only damaged ones.
        from accelerate import PartialState

        state = PartialState()
        build_store(root, key, spec, compute, num_examples=len(kd_frame), batch_size=self.recipe.train.eval_batch_size,
                    progress=progress_enabled(),
                    meta={"teacher": self.teacher_path, "recipe_task": self.recipe.task,
                          "labels": self.plan.labels},
                    rank=state.process_index, world_size=state.num_processes, barrier=state.wait_for_everyone,
                    log=self.log)
        if exists and not lazy:
            self.log(f"teacher outputs found in the store {path}: the teacher is not needed for training")
            return TeacherStore.open(path)
        self.report["store_build_seconds"] = time.perf_counter() - t0
        return TeacherStore.open(path)

    # -- training -----------------------------------------------------------------------------------------
    def train_student(self, name: str, init: Path, distiller: Distiller, frame, store=None,
                      teacher: torch.nn.Module | None = None, max_steps: int | None = None) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification, set_seed
        from distill.evaluation.metrics import compute_metrics_fn
        from distill.export import save_student
        from distill.training.args import training_arguments

        r = self.recipe
        final = self.out / name
        from distill.store import fingerprint_rows

        fp = _fingerprint({
            "train": r.train.__dict__, "max_steps": max_steps,
            "losses": [spec.__dict__ for spec in r.losses] if name == "student" else "ce",
            "init": _hash_files(init), "labels": self.plan.labels, "max_length": r.data.max_length,
            "data": fingerprint_rows(list(zip(frame["text"], frame["label"].astype(int).tolist()))),
            "validation": fingerprint_rows(list(self.plan.splits.validation["text"])),
            "store": getattr(store, "key", None),
            "teacher": self.teacher_fingerprint() if teacher is not None else None,
        })
        if (done := stage_done(final, fp)) is not None:
            self.log(f"{name}: already trained, reusing {final}")
            self.report["training"][name] = done.get("training", {})
            return AutoModelForSequenceClassification.from_pretrained(final)
        set_seed(r.train.seed)
        model = AutoModelForSequenceClassification.from_pretrained(init)
        ttok = None
        if teacher is not None and not self.plan.same_tokenizer:
            ttok = self.teacher_tokenizer
        train_ds = to_dataset(frame, self.student_tokenizer, ttok, max_length=r.data.max_length)
        val_ds = to_dataset(self.plan.splits.validation, self.student_tokenizer, max_length=r.data.max_length)
        ckpt = stage_checkpoints(self.out, name, fp, self.log)
        overrides = {"max_steps": max_steps} if max_steps else {}
        trainer = DistillTrainer(
            model=model, args=training_arguments(r.train, str(ckpt), **overrides), train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=DistillCollator(self.student_tokenizer, ttok), compute_metrics=compute_metrics_fn,
            distiller=distiller, teacher=teacher, store=store,
        )
        self.log(f"{name}: training on {len(train_ds)} examples "
                 f"({'teacher from the store' if store is not None else 'online teacher' if teacher is not None else 'labels only'})")
        info = train_resuming(trainer, ckpt, name, r.train.resume, self.log)
        state = _state()
        if state.is_main_process:
            write_stage(final, fp, lambda d: save_student(model, self.student_tokenizer, d, self.plan.labels), info)
            shutil.rmtree(ckpt, ignore_errors=True)
        state.wait_for_everyone()
        self.report["training"][name] = info
        return model

    # -- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, role: str, model: torch.nn.Module, tokenizer, teacher_pred: np.ndarray | None) -> np.ndarray:
        from distill.evaluation import classification_metrics, count_parameters, predict_logits
        from distill.evaluation.predictions import softmax
        from distill.evaluation.speed import weights_size_mb

        r = self.recipe
        test = to_dataset(self.plan.splits.test, tokenizer, max_length=r.data.max_length)
        collate = DistillCollator(tokenizer)

        def predict() -> np.ndarray:
            return predict_logits(model, test, collate, batch_size=r.train.eval_batch_size, desc=f"evaluating {role}")

        if role == "teacher":  # every run of this recipe scores the same teacher on the same text: once
            from distill.store import default_store_root, fingerprint_rows
            from distill.store.eval_cache import cached_teacher_outputs

            logits = cached_teacher_outputs(
                Path(r.store.dir) if r.store.dir else default_store_root(),
                {"what": "test-logits", "teacher": self.teacher_fingerprint(), "max_length": r.data.max_length,
                 "texts": fingerprint_rows(list(zip(self.plan.splits.test["text"],
                                                    self.plan.splits.test.get("text_pair", self.plan.splits.test["text"]))))},
                predict, write=_state().is_main_process)
        else:
            logits = predict()
        self.test_probs[role] = softmax(logits).astype(np.float32)
        labels = np.asarray(self.plan.splits.test["label"])
        metrics = classification_metrics(logits, labels, teacher_pred)
        metrics["parameters"] = count_parameters(model)
        metrics["size_mb"] = weights_size_mb(model)
        self.test_correct[role] = logits.argmax(-1) == labels
        # timed later, interleaved with the other models (time_latency), on the same texts
        self.latency_inputs[role] = model_inputs(collate([test[i] for i in range(min(32, len(test)))]))
        self.report["models"][role] = metrics
        self.log(f"{role}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
        return logits.argmax(-1)

    # -- black-box teachers ---------------------------------------------------------------------------------
    def run_blackbox(self) -> dict[str, Any]:
        """The teacher answers queries: label the training text (and the test split, to measure the teacher),
        keep its probabilities in the store as teacher "logits" (log-probabilities), then train as usual:
        ``ce`` reads the teacher's hard labels, ``kd`` its soft labels (one-hot where it gave none)."""
        from distill.store import (
            StoreSpec,
            TeacherStore,
            build_store,
            default_store_root,
            fingerprint_rows,
            store_key,
        )
        from distill.teachers.blackbox import label_with_blackbox

        r = self.recipe
        labels = label_with_blackbox(r, self.plan.splits, self.log, include_test=True)
        self.teacher_path = f"blackbox:{labels.stats.get('teacher')}"
        frame, probs = labels.training_frame(self.plan.splits)
        if not len(frame):
            raise RecipeError("teacher.blackbox: the teacher labelled none of the training texts; see "
                              "teacher_labels_stats.json for parse failures and errors")
        self.report["blackbox"] = {k: v for k, v in labels.stats.items() if k != "config"}
        init = self.student_init()
        distiller = Distiller(build_losses(r.losses, self.plan.loss_context))
        store = None
        if distiller.needs_teacher:
            spec = StoreSpec(capture=("logits",), topk=0, dtype="float32", shard_size=r.store.shard_size)
            key = store_key(teacher=str(self.teacher_path),
                            data=fingerprint_rows(list(zip(frame["text"], frame["label"].astype(int).tolist()))),
                            probs=hashlib.sha256(probs.tobytes()).hexdigest(), task=r.task, spec=spec)
            root = Path(r.store.dir) if r.store.dir else default_store_root()
            log_probs = torch.from_numpy(np.log(np.clip(probs, 1e-8, 1.0)))  # (N, C)
            build_store(root, key, spec, lambda idx: ModelOutputs(logits=log_probs[idx]), num_examples=len(frame),
                        progress=False, log=self.log)
            store = TeacherStore.open(root / key)
            self.report["store"] = {"key": store.key, "path": str(store.path), **store.info()}

        # the teacher's own quality: its answers on the test split against the gold labels
        test_run = labels.runs.get("test")
        gold = np.asarray(self.plan.splits.test["label"])
        teacher_pred = np.asarray(test_run.hard() if test_run else [-1] * len(gold))
        from sklearn.metrics import f1_score

        answered = teacher_pred >= 0
        self.test_correct["teacher"] = teacher_pred == gold
        self.report["models"]["teacher"] = {
            "accuracy": float((teacher_pred == gold).mean()),  # unanswered test rows count as wrong
            "macro_f1": float(f1_score(gold, np.where(answered, teacher_pred, (gold + 1) % len(self.plan.labels)),
                                       average="macro")),
            "answered_fraction": float(answered.mean()),
            "accuracy_on_answered": float((teacher_pred[answered] == gold[answered]).mean()) if answered.any() else None,
        }
        frame = frame[["text", "label"] + (["text_pair"] if "text_pair" in frame.columns else [])]
        student = self.train_student("student", init, distiller, frame, store=store)
        self.evaluate("student_kd", student, self.student_tokenizer, teacher_pred)
        del student
        if r.eval.baseline:
            baseline_losses = build_losses([type(r.losses[0])(name="ce")], self.plan.loss_context)
            base = self.train_student("student_no_kd", init, Distiller(baseline_losses), self.plan.splits.train)
            self.evaluate("student_no_kd", base, self.student_tokenizer, teacher_pred)
            del base
        return self.finish()

    # -- the whole run ------------------------------------------------------------------------------------
    def __call__(self) -> dict[str, Any]:
        r = self.recipe
        if r.teacher.blackbox is not None:
            return self.run_blackbox()
        self.prepare_teacher()
        init = self.student_init()
        distiller = Distiller(build_losses(r.losses, self.plan.loss_context))
        kd_frame = _kd_frame(self.plan.splits)

        store = None
        if distiller.needs_teacher and r.store.enabled:
            store = self.open_or_build_store(distiller, kd_frame)
            self.report["store"] = {"key": store.key, "path": str(store.path), **store.info()}

        teacher_pred = self.evaluate("teacher", self.teacher(), self.teacher_tokenizer, None)
        online_teacher = self.teacher() if distiller.needs_teacher and store is None else None
        if online_teacher is None:
            self.release_teacher()  # the students train from the store (or labels): no teacher in memory

        student = self.train_student("student", init, distiller, kd_frame, store=store, teacher=online_teacher)
        self.release_teacher()
        self.evaluate("student_kd", student, self.student_tokenizer, teacher_pred)
        del student
        if r.eval.baseline:
            baseline_losses = build_losses([type(r.losses[0])(name="ce")], self.plan.loss_context)
            # same budget: as many optimisation steps as the distilled student (which also saw unlabelled text)
            kd_steps = self.report["training"]["student"].get("steps")
            same_budget = kd_steps if self.plan.splits.unlabeled is not None and kd_steps else None
            base = self.train_student("student_no_kd", init, Distiller(baseline_losses), self.plan.splits.train,
                                      max_steps=same_budget)
            self.evaluate("student_no_kd", base, self.student_tokenizer, teacher_pred)
            del base
        return self.finish()

    def latency_models(self) -> dict[str, Any]:
        """The models to time, by role: loaded again from where they were saved (the teacher was released
        while the students trained)."""
        from transformers import AutoModelForSequenceClassification

        saved = {"student_kd": self.out / "student", "student_no_kd": self.out / "student_no_kd"}
        models = {role: AutoModelForSequenceClassification.from_pretrained(saved[role])
                  for role in self.latency_inputs if role in saved}
        if "teacher" in self.latency_inputs:
            models = {"teacher": self.teacher(), **models}
        return models

    def time_latency(self) -> None:
        """Time every evaluated model interleaved on the same texts (see distill.evaluation.speed) and put the
        medians and spreads into the models' metrics and the report's ``latency`` section."""
        from distill.evaluation.speed import apply_latency, forward_runner, time_models

        r = self.recipe
        models = self.latency_models()
        if not models:
            return
        runners = {role: {bs: forward_runner(m, self.latency_inputs[role], bs) for bs in r.eval.latency_batch_sizes}
                   for role, m in models.items()}
        self.log(f"timing {', '.join(models)} interleaved (at least {r.eval.latency_repeats} rounds and "
                 f"{r.eval.latency_min_seconds:g} s)")
        latency = time_models(runners, rounds=r.eval.latency_repeats, threads=r.eval.latency_threads,
                              min_seconds=r.eval.latency_min_seconds)
        self.release_teacher()
        self.report["latency"] = latency
        apply_latency(self.report["models"], latency)

    def finish(self) -> dict[str, Any]:
        import transformers

        from distill import __version__
        from distill.evaluation import format_table, summarise, write_report
        from distill.evaluation.report import classification_significance
        from distill.evaluation.speed import dir_size_mb
        from distill.export import write_model_card

        r = self.recipe
        models = self.report["models"]
        # size on disk of what was saved (weights files), where the model was saved
        for role, where in (("teacher", Path(self.teacher_path)), ("student_kd", self.out / "student"),
                            ("student_no_kd", self.out / "student_no_kd")):
            if role in models and where.is_dir() and dir_size_mb(where) > 0:
                models[role]["size_mb"] = dir_size_mb(where)
        if _state().is_main_process:  # one process times the models; the others write nothing
            self.time_latency()
        self.report["significance"] = classification_significance(self.test_correct, seed=r.train.seed)
        summary = summarise(models, self.report.get("latency"), self.report["significance"])
        table = format_table(models, summary, self.report)
        sp = self.plan.splits
        self.report.update({
            "task": r.task,
            "labels": self.plan.labels,
            "data": {"train": len(sp.train), "unlabeled": 0 if sp.unlabeled is None else len(sp.unlabeled),
                     "validation": len(sp.validation), "test": len(sp.test)},
            "summary": summary,
            "teacher_path": self.teacher_path,
            "recipe": r.to_dict(),
            "versions": {"distill": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "student_parameters": models.get("student_kd", {}).get("parameters"),
            "store_key": self.report.get("store", {}).get("key"),
        })
        for stage in self.report["training"].values():
            stage.pop("log_history", None) if isinstance(stage, dict) and len(str(stage)) > 200_000 else None
        if not _state().is_main_process:  # one writer for the shared output files
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
        write_report(self.out / "report.json", self.report)
        from distill.evaluation.html_report import write_html_report

        html = write_html_report(self.out)
        print("\n" + table + "\n", flush=True)
        self.log(f"student saved to {student_dir}; report in {self.out / 'report.json'} and {html}")
        return self.report


def run(recipe: Recipe | str | os.PathLike[str], overrides: list[str] | None = None, log: Log = _log) -> dict[str, Any]:
    """Run a recipe (a :class:`Recipe` or a YAML path) end to end; returns the report."""
    from distill.config import load_recipe

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    return run_class(recipe)(recipe, log)()


def run_class(recipe: Recipe) -> type[Run]:
    """The Run for the recipe's task."""
    if recipe.task == "sentence-embedding":
        from distill.pipelines.embedding import EmbeddingRun

        return EmbeddingRun
    if recipe.task == "causal-lm":
        from distill.pipelines.causal_lm import CausalLMRun

        return CausalLMRun
    if recipe.task == "image-classification":
        from distill.pipelines.vision import VisionRun

        return VisionRun
    return Run


def cache(recipe: Recipe | str | os.PathLike[str], overrides: list[str] | None = None, log: Log = _log):
    """Build (or find) the teacher-output store for a recipe; returns the opened store."""
    from distill.config import load_recipe

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    r = run_class(recipe)(recipe, log)
    r.prepare_teacher()
    distiller = Distiller(build_losses(recipe.losses, r.plan.loss_context))
    if not distiller.needs_teacher:
        raise RecipeError("losses: none of the recipe's losses reads teacher outputs, so there is nothing to cache")
    return r.build_teacher_store(distiller)


def store_info(recipe: Recipe | str | os.PathLike[str], overrides: list[str] | None = None, log: Log = _log) -> str:
    """Describe the store a recipe would use, without running the teacher."""
    from distill.config import load_recipe
    from distill.store import TeacherStore
    from distill.store.reader import format_info

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    r = run_class(recipe)(recipe, log)
    if recipe.task != "text-classification":
        r.prepare_teacher()  # resolves the teacher directory and tokenizer; loads no weights
    elif recipe.teacher.finetune is not None:
        from distill.teachers import finished_teacher

        done = finished_teacher(recipe, r.plan.splits)
        if done is None:
            return "the teacher has not been fine-tuned yet, so nothing is stored; `distill cache RECIPE` does both"
        r.teacher_path = str(done)
    else:
        from distill.packaged import resolve_model

        r.teacher_path = resolve_model(recipe.teacher.model)
    if r.teacher_tokenizer is None:
        r.teacher_tokenizer = load_tokenizer(r.teacher_path)
    distiller = Distiller(build_losses(recipe.losses, r.plan.loss_context))
    try:
        root, key = r.store_location(distiller)
    except StoreKeyUnknown as exc:
        return str(exc)
    if not (root / key / "manifest.json").exists():
        return f"no store yet for key {key} under {root}; `distill cache RECIPE` builds it"
    return format_info(TeacherStore.open(root / key).info())
