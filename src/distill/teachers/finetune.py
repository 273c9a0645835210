"""``distill finetune``: turn a pre-trained encoder into a teacher classifier on the labelled train split.

The result is saved once under a fingerprint of (model, fine-tune settings, data), so a re-run reuses it;
an interrupted fine-tune resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from transformers import DataCollatorWithPadding, Trainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from distill.config import Recipe
from distill.data import TextSplits, to_dataset
from distill.evaluation.metrics import compute_metrics_fn
from distill.files import atomic_dir
from distill.models import load_classifier, load_tokenizer
from distill.training.args import training_arguments

MARKER = "distill_finetune.json"


def finetune_fingerprint(recipe: Recipe, splits: TextSplits) -> str:
    ft = recipe.teacher.finetune
    h = hashlib.sha256()
    # the fine-tuning runs in the recipe's precision (train.bf16 / fp16): a mixed-precision teacher is another
    # teacher (named only when set, so the float32 teachers keep the fingerprints they were saved under)
    mixed = {"precision": "bf16" if recipe.train.bf16 else "fp16"} \
        if (recipe.train.bf16 or recipe.train.fp16) else {}
    h.update(json.dumps({"model": recipe.teacher.model, "revision": recipe.teacher.revision,
                         "finetune": {k: v for k, v in vars(ft).items() if k != "output_dir"},
                         "labels": splits.labels, "max_length": recipe.data.max_length, **mixed},
                        sort_keys=True).encode())
    for text, label in zip(splits.train["text"], splits.train["label"]):
        h.update(text.encode("utf-8", "replace"))
        h.update(str(label).encode())
    return h.hexdigest()[:16]


def teacher_dir(recipe: Recipe) -> Path:
    ft = recipe.teacher.finetune
    return Path(ft.output_dir) if ft and ft.output_dir else Path(recipe.output_dir) / "teacher"


def finished_teacher(recipe: Recipe, splits: TextSplits) -> Path | None:
    out = teacher_dir(recipe)
    marker = out / MARKER
    if (marker.exists()
            and json.loads(marker.read_text()).get("fingerprint") == finetune_fingerprint(recipe, splits)):
        return out
    return None


def finetune_teacher(recipe: Recipe, splits: TextSplits, log=print) -> Path:
    """Fine-tune ``recipe.teacher.model`` with cross-entropy; returns the saved classifier's directory."""
    ft = recipe.teacher.finetune
    assert ft is not None
    done = finished_teacher(recipe, splits)
    if done is not None:
        log(f"reusing the fine-tuned teacher in {done}")
        return done
    out = teacher_dir(recipe)
    ckpt_dir = Path(str(out) + ".checkpoints")
    tokenizer = load_tokenizer(recipe.teacher.model, recipe.teacher.revision,
                               recipe.teacher.trust_remote_code)
    set_seed(ft.seed)  # the new classification head's initial weights: the same teacher from any entry point
    model = load_classifier(recipe.teacher.model, splits.labels, recipe.teacher.revision,
                            recipe.teacher.trust_remote_code)
    train = to_dataset(splits.train, tokenizer, max_length=recipe.data.max_length)
    val = to_dataset(splits.validation, tokenizer, max_length=recipe.data.max_length)
    cols = [c for c in train.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    train, val = train.select_columns(cols), val.select_columns(cols)
    args = training_arguments(
        recipe.train, str(ckpt_dir), evaluate=True,
        num_train_epochs=ft.epochs, max_steps=-1, per_device_train_batch_size=ft.batch_size,
        train_sampling_strategy="random",  # train.group_by_length is for students (not in this fingerprint)
        learning_rate=ft.learning_rate, warmup_steps=ft.warmup_ratio, weight_decay=ft.weight_decay,
        seed=ft.seed, data_seed=ft.seed, gradient_accumulation_steps=1, lr_scheduler_type="linear",
        remove_unused_columns=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics_fn)
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() and recipe.train.resume else None
    if last:
        log(f"resuming teacher fine-tuning from {last}")
    log(f"fine-tuning the teacher {recipe.teacher.model} on {len(train)} examples")
    trainer.train(resume_from_checkpoint=last)
    evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
    metrics = evals[-1] if evals else trainer.evaluate()  # the epoch-end evaluation already ran
    from accelerate import PartialState

    state = PartialState()
    if not state.is_main_process:  # under several processes rank 0 alone writes the teacher
        state.wait_for_everyone()
        return out
    def fill(tmp: Path) -> None:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps({"fingerprint": finetune_fingerprint(recipe, splits),
                                              "base_model": recipe.teacher.model, "validation": metrics},
                                             indent=2))

    atomic_dir(out, fill)  # a killed save never looks like a finished teacher
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    state.wait_for_everyone()
    log(f"teacher saved to {out} (validation accuracy {metrics.get('eval_accuracy', float('nan')):.4f})")
    return out
