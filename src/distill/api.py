"""The object-level API: distil a student you already built, from a teacher you already built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from distill.config import LossConfig, StoreConfig, TrainConfig
from distill.data import DistillCollator, same_tokenizer, to_dataset
from distill.losses import LossContext, build_losses
from distill.models import hidden_size, num_layers
from distill.training import Distiller, DistillTrainer


@dataclass
class DistillResult:
    student: torch.nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)
    store_key: str | None = None


def _frame(data: Any, labels: list[str] | None) -> pd.DataFrame:
    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    if "text" not in df.columns:
        raise ValueError(f"data needs a 'text' column; it has {list(df.columns)}")
    out = pd.DataFrame({"text": df["text"].astype(str)})
    if "label" in df.columns:
        lab = df["label"]
        if labels and not pd.api.types.is_integer_dtype(lab):
            ids = {n: i for i, n in enumerate(labels)}
            missing = lab.isna()
            lab = lab.where(~missing, -1)  # missing = unlabelled
            bad = sorted({str(v) for v in lab[~missing] if str(v) not in ids})
            if bad:
                raise ValueError(f"labels {bad[:5]} are not in the model's labels {labels}")
            lab = lab.map(lambda v: -1 if v == -1 else ids[str(v)])
        out["label"] = lab.fillna(-1).astype(int).values
    else:
        out["label"] = -1
    return out


def distill_from_models(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    data: Any,
    *,
    student_tokenizer: Any,
    teacher_tokenizer: Any = None,
    losses: list[dict[str, Any] | LossConfig] | None = None,
    train: TrainConfig | dict[str, Any] | None = None,
    eval_data: Any = None,
    output_dir: str = "runs/distill_api",
    store: StoreConfig | dict[str, Any] | bool | None = None,
    max_length: int = 128,
) -> DistillResult:
    """Distil ``teacher`` into ``student`` (both HF sequence classifiers) on ``data``.

    ``data``/``eval_data``: a DataFrame (or dict of columns) with ``text`` and optional ``label`` (names or
    ids; missing/-1 = unlabelled). ``losses``: dicts like
    ``{"name": "kd", "temperature": 2.0, "weight": 0.5}`` (default 0.5 kd + 0.5 ce). ``store``: ``True`` or a
    :class:`StoreConfig` to run the teacher once into the teacher-output store; default online. The student is
    trained in place and returned.
    """
    from distill.config.recipe import normalise_losses, validate_losses

    teacher_tokenizer = teacher_tokenizer or student_tokenizer
    train_cfg = train if isinstance(train, TrainConfig) else TrainConfig(**(train or {}))
    specs = [s if isinstance(s, LossConfig) else LossConfig(**s) for s in
             normalise_losses(losses or [{"name": "kd", "weight": 0.5, "temperature": 2.0},
                                          {"name": "ce", "weight": 0.5}])]
    validate_losses(specs)
    labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if student.config.num_labels != teacher.config.num_labels:
        raise ValueError(f"student has {student.config.num_labels} labels, "
                         f"teacher {teacher.config.num_labels}; "
                         "build the student with the teacher's num_labels/id2label")
    same = same_tokenizer(student_tokenizer, teacher_tokenizer)
    ctx = LossContext(student_hidden_size=hidden_size(student.config),
                      teacher_hidden_size=hidden_size(teacher.config),
                      student_num_layers=num_layers(student.config),
                      teacher_num_layers=num_layers(teacher.config),
                      num_classes=len(labels), same_tokenizer=same)
    distiller = Distiller(build_losses(specs, ctx))
    frame = _frame(data, labels)
    ttok = None if same else teacher_tokenizer
    train_ds = to_dataset(frame, student_tokenizer, ttok, max_length=max_length)

    opened = None
    if store:
        opened = _api_store(teacher, teacher_tokenizer, frame, distiller,
                            store if isinstance(store, StoreConfig)
                            else StoreConfig(**(store if isinstance(store, dict) else {})),
                            max_length, train_cfg.eval_batch_size)
    from distill.training.args import training_arguments

    eval_ds = (to_dataset(_frame(eval_data, labels), student_tokenizer, max_length=max_length)
               if eval_data is not None else None)
    trainer = DistillTrainer(
        model=student,
        args=training_arguments(train_cfg, str(Path(output_dir) / "checkpoints"),
                                evaluate=eval_ds is not None),
        train_dataset=train_ds, eval_dataset=eval_ds, data_collator=DistillCollator(student_tokenizer, ttok),
        distiller=distiller, teacher=None if opened is not None else teacher, store=opened,
        anchor=train_cfg.anchor,
    )
    from distill.evaluation.metrics import compute_metrics_fn

    trainer.compute_metrics = compute_metrics_fn
    trainer.train()
    metrics: dict[str, Any] = {}
    if eval_ds is not None:
        from distill.evaluation import classification_metrics, predict_logits

        s_logits = predict_logits(student, eval_ds, DistillCollator(student_tokenizer),
                                  train_cfg.eval_batch_size)
        t_ds = to_dataset(_frame(eval_data, labels), teacher_tokenizer, max_length=max_length)
        t_logits = predict_logits(teacher, t_ds, DistillCollator(teacher_tokenizer),
                                  train_cfg.eval_batch_size)
        y = np.asarray(t_ds["labels"])
        metrics = {"teacher": classification_metrics(t_logits, y),
                   "student": classification_metrics(s_logits, y, t_logits.argmax(-1))}
    return DistillResult(student=student, metrics=metrics, store_key=getattr(opened, "key", None))


def _api_store(teacher, tokenizer, frame, distiller, cfg: StoreConfig, max_length: int, batch_size: int):
    from distill.models import forward_outputs, model_inputs
    from distill.store import (
        TeacherStore,
        build_store,
        default_store_root,
        fingerprint_model,
        fingerprint_rows,
        fingerprint_tokenizer,
        store_key,
    )
    from distill.store.spec import spec_for_losses

    spec = spec_for_losses(cfg, distiller)
    capture = spec.capture
    key = store_key(teacher=fingerprint_model(teacher), tokenizer=fingerprint_tokenizer(tokenizer),
                    data=fingerprint_rows(list(frame["text"])), max_length=max_length,
                    task="text-classification", spec=spec)
    root = Path(cfg.dir) if cfg.dir else default_store_root()
    if not (root / key / "manifest.json").exists():
        ds = to_dataset(frame, tokenizer, max_length=max_length)
        collate = DistillCollator(tokenizer)
        teacher.eval()
        device = next(teacher.parameters()).device  # a teacher on a GPU (or moved there by an earlier run)

        @torch.no_grad()
        def compute(indices):
            batch = collate([ds[i] for i in indices])
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            return forward_outputs(teacher, inputs, hidden="hidden_states" in capture,
                                   embeddings="embeddings" in capture, qkv_layers=spec.qkv_layers or None)

        build_store(root, key, spec, compute, num_examples=len(ds), batch_size=batch_size)
    return TeacherStore.open(root / key)
