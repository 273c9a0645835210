"""The teacher's outputs on the *evaluation* text, cached on disk next to the training stores.

Every run of a recipe scores the teacher on the same held-out text; trying five students (or three seeds)
should not pay for the teacher five times. The file name is a fingerprint of everything that changes the
numbers (teacher weights, the texts, max length, what was computed), and the file is written to a temp
name and renamed, so a reader never sees half an array.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distill.files import atomic_write

FOLDER = "eval-outputs"


def cached_teacher_outputs(root: Path, key_parts: dict[str, Any], compute: Callable[[], np.ndarray],
                           write: bool = True) -> np.ndarray:
    """``compute()`` once per ``key_parts``; later calls with equal parts read the saved array."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = root / FOLDER / f"{key}.npy"
    if path.exists():
        return np.load(path)
    out = compute()
    if write:  # only the main process writes under multi-process runs
        atomic_write(path, lambda fh: np.save(fh, out), binary=True, durable=False)
    return out
