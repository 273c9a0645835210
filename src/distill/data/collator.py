"""Pad each model's inputs with its own tokenizer, to the longest example in the batch."""

from __future__ import annotations

from typing import Any

import torch

from distill.data.tokenize import MODEL_INPUTS, TEACHER_PREFIX


class DistillCollator:
    """Collate rows into
    ``{input_ids, attention_mask, [token_type_ids], [teacher_*], labels, example_index}``."""

    def __init__(self, student_tokenizer, teacher_tokenizer=None):
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer

    @staticmethod
    def _pad(tokenizer, rows: list[dict[str, Any]], prefix: str) -> dict[str, torch.Tensor]:
        feats = [{k: r[prefix + k] for k in MODEL_INPUTS if prefix + k in r} for r in rows]
        padded = tokenizer.pad(feats, padding="longest", return_tensors="pt")
        return {prefix + k: v for k, v in padded.items()}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._pad(self.student_tokenizer, rows, "")
        if self.teacher_tokenizer is not None and TEACHER_PREFIX + "input_ids" in rows[0]:
            batch.update(self._pad(self.teacher_tokenizer, rows, TEACHER_PREFIX))
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        if "example_index" in rows[0]:
            batch["example_index"] = torch.tensor([r["example_index"] for r in rows], dtype=torch.long)
        return batch
