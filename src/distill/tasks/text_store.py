"""The teacher-output store of the tasks whose teacher reads text rows (classification, sentence embedding):
its key, and running the teacher over the rows into it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from distill._dataclass_io import RecipeError
from distill.data import DistillCollator, to_dataset
from distill.models import forward_outputs, model_inputs
from distill.stages import Log, process_state
from distill.teachers.sources import TeacherSource


def text_store_key(teacher: TeacherSource, tokenizer: Any, frame: pd.DataFrame, max_length: int, task: str,
                   spec: Any) -> str:
    """Names the store by the teacher's weights, its tokenizer, every row's text (and text pair), the maximum
    length, the task and what is kept."""
    from distill.store import fingerprint_rows, fingerprint_tokenizer, store_key

    rows = list(zip(frame["text"], frame.get("text_pair", frame["text"] * 0)))
    return store_key(teacher=teacher.fingerprint(), tokenizer=fingerprint_tokenizer(tokenizer),
                     data=fingerprint_rows(rows), max_length=max_length, task=task, spec=spec)


def open_text_store(root: Path, key: str, spec: Any, frame: pd.DataFrame, teacher: TeacherSource,
                    tokenizer: Any, *, max_length: int, batch_size: int, meta: dict[str, Any], log: Log,
                    build: bool = True, length_order: bool = True) -> tuple[Any, float | None]:
    """Open the store ``root/key``, running the teacher over ``frame`` first where shards are missing or
    damaged (every existing shard's checksum is verified). Returns the store and the build time in seconds
    (None when everything was already on disk and the teacher never loaded). Each shard runs its rows in
    order of length (``length_order=False``: index order, the benchmark's reference)."""
    from distill.store import TeacherStore, build_store
    from distill.training.args import progress_enabled

    path = root / key
    exists = (path / "manifest.json").exists()
    if not exists and not build:
        raise RecipeError(f"no store with key {key} under {root}; build it with `distill cache`")
    lazy: dict[str, Any] = {}

    def dataset():
        """The tokenised rows, built once (by the first of length() and compute() to need them)."""
        if "ds" not in lazy:
            lazy["ds"] = to_dataset(frame, tokenizer, max_length=max_length)
        return lazy["ds"]

    @torch.no_grad()
    def compute(indices: list[int]):
        # the teacher and its tokenised data load only if some shard is missing or damaged
        if "teacher" not in lazy:
            lazy["teacher"] = teacher.model()
            lazy["collate"] = DistillCollator(tokenizer)
        ds = dataset()
        batch = lazy["collate"]([ds[i] for i in indices])
        device = next(lazy["teacher"].parameters()).device
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        return forward_outputs(lazy["teacher"], inputs, hidden="hidden_states" in spec.capture,
                               embeddings="embeddings" in spec.capture, qkv_layers=spec.qkv_layers or None)

    def length(i: int) -> int:
        """The teacher's input length of row ``i``: each shard runs its rows in length order."""
        if "lengths" not in lazy:
            lazy["lengths"] = [len(ids) for ids in dataset()["input_ids"]]
        return lazy["lengths"][i]

    if not exists:
        log(f"running the teacher once over {len(frame)} examples into the store {path}")
    t0 = time.perf_counter()
    # under `accelerate launch` every process runs the teacher on its own shards; rank 0 writes the manifest
    state = process_state()
    build_store(root, key, spec, compute, num_examples=len(frame), batch_size=batch_size,
                progress=progress_enabled(), meta=meta, rank=state.process_index,
                world_size=state.num_processes, barrier=state.wait_for_everyone, log=log,
                lengths=length if length_order else None)
    if exists and "teacher" not in lazy:
        log(f"teacher outputs found in the store {path}: the teacher is not needed for training")
        return TeacherStore.open(path), None
    return TeacherStore.open(path), time.perf_counter() - t0
