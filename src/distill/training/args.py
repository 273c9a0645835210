"""Map the recipe's train section onto ``transformers.TrainingArguments``."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import TrainingArguments

from distill._dataclass_io import RecipeError
from distill.config import TrainConfig


def progress_enabled() -> bool:
    # progress bars on a terminal, quiet in CI logs
    return os.isatty(2) and not os.environ.get("CI")


def training_arguments(cfg: TrainConfig, output_dir: str, evaluate: bool = True, **overrides: Any) -> TrainingArguments:
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=cfg.lr_scheduler,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        eval_strategy="epoch" if evaluate else "no",
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        report_to="none",
        remove_unused_columns=False,  # teacher inputs and example indices must reach compute_loss
        disable_tqdm=not progress_enabled(),
        dataloader_num_workers=0,
        use_cpu=False,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    kwargs.update(overrides)
    extra = dict(cfg.extra_args)
    unknown = [k for k in extra if k not in TrainingArguments.__dataclass_fields__]
    if unknown:
        raise RecipeError(f"train.extra_args.{unknown[0]}: not a TrainingArguments field")
    kwargs.update(extra)
    return TrainingArguments(**kwargs)
