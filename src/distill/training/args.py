"""Map the recipe's train section onto ``transformers.TrainingArguments``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from distill._dataclass_io import RecipeError
from distill.config import TrainConfig


def cpu_only() -> bool:
    """No CUDA or MPS device: the CPU backend (gloo under torchrun / accelerate launch) is the one to use."""
    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def check_processes_per_gpu() -> None:
    """Refuse a launch with more processes on this node than it has GPUs (``distill run`` asks before the
    teacher loads; training asks again for API callers): each rank would take GPU ``local_rank % count``
    and NCCL stops at the shared one ("Duplicate GPU detected")."""
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and procs > gpus:
        raise RecipeError(f"{procs} processes on this node but {gpus} visible GPU(s); launch at most {gpus} "
                          "per node (torchrun --nproc-per-node / accelerate --num_processes), or hide the "
                          "GPUs (CUDA_VISIBLE_DEVICES=) to run every process on the CPU over gloo")


def progress_enabled() -> bool:
    # progress bars on a terminal, quiet in CI logs
    return os.isatty(2) and not os.environ.get("CI")


def report_to(cfg: TrainConfig) -> list[str]:
    """The trackers ``train.report_to`` names; by default TensorBoard when it is installed (decided here, at
    training time, so importing distill never probes for it)."""
    if cfg.report_to is None:
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []
    names = [n for n in cfg.report_to if n != "none"]
    if names == ["all"]:
        return names
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError(f"train.report_to: {name!r} is not a transformers integration; "
                              f"choose from {sorted(INTEGRATION_TO_CALLBACK)} (or [] for none)")
    return names


def logging_dir(output_dir: str | os.PathLike[str]) -> Path:
    """Where a stage's tracker logs go: ``<run>/logs/<stage>``.

    Stages train in ``<run>/checkpoints/<stage>`` (students) or ``<teacher dir>.checkpoints`` (teacher
    fine-tuning), folders deleted once the stage finishes, so the logs must live outside them.
    """
    p = Path(output_dir)
    if p.parent.name == "checkpoints":
        return p.parent.parent / "logs" / p.name
    return p.parent / "logs" / p.name.removesuffix(".checkpoints")


_TB_DIRS_SET: set[str] = set()  # TENSORBOARD_LOGGING_DIR values we set, so a user's own value is left alone


def _point_tensorboard_at(path: Path) -> None:
    # transformers 5 has no TrainingArguments field for this: its TensorBoardCallback reads the variable when
    # the Trainer is built (right after these arguments) and otherwise writes under output_dir (deleted)
    current = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if current is None or current in _TB_DIRS_SET:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
        _TB_DIRS_SET.add(str(path))


def world_size() -> int:
    """Processes of this launch (torchrun / accelerate launch set WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def fsdp_arguments(cfg: TrainConfig) -> dict[str, Any]:
    """``train.fsdp`` as TrainingArguments fields (FSDP2 through accelerate's plugin); nothing for a
    single-process run, which the Trainer would refuse to shard."""
    f = cfg.fsdp
    if not f.enabled or world_size() < 2:
        return {}
    config: dict[str, Any] = {"version": 2, "reshard_after_forward": f.reshard_after_forward,
                              "cpu_offload": f.cpu_offload, "state_dict_type": f.state_dict_type}
    if f.layer_classes:
        config["transformer_layer_cls_to_wrap"] = list(f.layer_classes)
    return {"fsdp": True, "fsdp_config": config}


def training_arguments(cfg: TrainConfig, output_dir: str, evaluate: bool = True,
                       **overrides: Any) -> TrainingArguments:
    check_processes_per_gpu()
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
        report_to=report_to(cfg) or "none",
        remove_unused_columns=False,  # teacher inputs and example indices must reach compute_loss
        disable_tqdm=not progress_enabled(),
        dataloader_num_workers=0,
        # with no accelerator, use_cpu=True is what lets torchrun / accelerate launch run DDP over gloo
        use_cpu=cpu_only(),
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if cfg.group_by_length:
        kwargs["train_sampling_strategy"] = "group_by_length"
    kwargs.update(fsdp_arguments(cfg))
    kwargs.update(overrides)
    extra = dict(cfg.extra_args)
    unknown = [k for k in extra if k not in TrainingArguments.__dataclass_fields__]
    if unknown:
        raise RecipeError(f"train.extra_args.{unknown[0]}: not a TrainingArguments field")
    kwargs.update(extra)
    if "tensorboard" in kwargs["report_to"] or kwargs["report_to"] == ["all"]:
        _point_tensorboard_at(logging_dir(kwargs["output_dir"]))
    return TrainingArguments(**kwargs)
