"""The causal-LM teacher-output store: the teacher's per-token distribution over the training rows, kept as
top-k logits or through a head codec (its final hidden state, coded, plus the output layer once), and how
close what the store gives back is to the teacher (measured once per store)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from distill.data.text_lm import CausalLMCollator
from distill.stages import Log, process_state
from distill.teachers.sources import TeacherSource

CODEC_CALIBRATION_ROWS = 64  # training rows a head codec is fitted on (the first ones)
FIDELITY_ROWS = 8  # rows a store's fidelity is measured on, once


def open_lm_store(root: Path, key: str, spec: Any, rows: list[dict[str, Any]], teacher: TeacherSource, *,
                  pad_id: int, vocab_size: int, batch_size: int, seed: int, meta: dict[str, Any],
                  log: Log) -> tuple[Any, float | None, dict[str, Any]]:
    """Open the store ``root/key`` of the teacher over ``rows``, building what is missing (and fitting the
    head codec first when the spec asks for one). Returns the store, the build time (None when it existed) and
    its fidelity record."""
    from distill.store import TeacherStore, build_store

    collate = CausalLMCollator(pad_id)
    coded = spec.codec != "topk"

    def teacher_batch(indices: list[int]):
        model = teacher.model()
        b = collate([rows[i] for i in indices])
        device = next(model.parameters()).device
        kw = {"input_ids": b["input_ids"].to(device), "attention_mask": b["attention_mask"].to(device)}
        return model, b, kw

    @torch.no_grad()
    def compute(indices: list[int]):
        from distill.outputs import ModelOutputs
        from distill.store.codec import forward_with_head_input

        model, b, kw = teacher_batch(indices)
        if coded:  # the codec keeps the output layer's input, the logits are rebuilt when read
            _, h = forward_with_head_input(model, **kw)
            return ModelOutputs(attention_mask=b["attention_mask"], extra={"head_input": h.float().cpu()})
        logits = model(**kw).logits
        return ModelOutputs(logits=logits[..., :vocab_size], attention_mask=b["attention_mask"])

    @torch.no_grad()
    def fit_codec():
        from distill.store.codec import CODEC_BITS, HeadCodec, forward_with_head_input, output_layer

        calib = list(range(min(len(rows), CODEC_CALIBRATION_ROWS)))  # a fixed choice, so the codec is too
        hidden = []
        for i in range(0, len(calib), batch_size):
            model, b, kw = teacher_batch(calib[i:i + batch_size])
            _, h = forward_with_head_input(model, **kw)
            hidden.append(h.float().cpu()[b["attention_mask"].bool()])
        weight, bias = output_layer(teacher.model(), vocab_size)
        log(f"fitting the {spec.codec} codec on {sum(len(x) for x in hidden):,} teacher tokens")
        # the output layer stays where the teacher is: the Fisher pass over the vocabulary runs there
        return HeadCodec.fit(torch.cat(hidden), weight, bias, bits=CODEC_BITS[spec.codec], seed=seed)

    exists = (root / key / "manifest.json").exists()
    if not exists:
        log(f"running the teacher once over {len(rows)} rows into the store {root / key}")
    t0 = time.perf_counter()
    state = process_state()
    build_store(root, key, spec, compute, num_examples=len(rows), batch_size=batch_size, progress=False,
                meta=meta, rank=state.process_index, world_size=state.num_processes,
                barrier=state.wait_for_everyone, log=log, head_codec=fit_codec if coded else None)
    seconds = None if exists else time.perf_counter() - t0
    store = TeacherStore.open(root / key)
    return store, seconds, store_fidelity(store, rows, teacher_batch, vocab_size, log)


def store_fidelity(store: Any, rows: list[dict[str, Any]], teacher_batch: Any, vocab_size: int,
                   log: Log) -> dict[str, Any]:
    """Measured once per store on ``FIDELITY_ROWS`` rows against the teacher's full logits, then kept next to
    the store (fidelity.json) and shown by ``distill cache --info``. The rows follow the codec's calibration
    rows when the data has enough, so a head codec is judged on text it was not fitted on."""
    from distill.store.fidelity import describe_fidelity, load_fidelity, measure_fidelity, save_fidelity

    known = load_fidelity(store.path)
    if known is None:
        def full(indices: list[int]):
            model, b, kw = teacher_batch(indices)
            with torch.no_grad():
                return model(**kw).logits[..., :vocab_size].float().cpu(), b["attention_mask"]

        n = len(rows)
        start = (CODEC_CALIBRATION_ROWS if n >= CODEC_CALIBRATION_ROWS + FIDELITY_ROWS
                 else max(n - FIDELITY_ROWS, 0))
        known = measure_fidelity(store, list(range(start, min(n, start + FIDELITY_ROWS))), full)
        known["first_row"] = start
        known["outside_calibration"] = start >= min(n, CODEC_CALIBRATION_ROWS)
        if process_state().is_main_process:
            save_fidelity(store.path, known)
    log(f"store fidelity: {describe_fidelity(known)}")
    return known
