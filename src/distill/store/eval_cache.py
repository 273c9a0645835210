"""The teacher's outputs on the *evaluation* text, cached on disk next to the training stores.

Every run of a recipe scores the teacher on the same held-out text; trying five students (or three seeds)
should not pay for the teacher five times. The file name is a fingerprint of everything that changes the
numbers (teacher weights, the texts, max length, what was computed), and the file is written to a temp
name and renamed, so a reader never sees half an array.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, out)
        os.replace(tmp, path)
    return out
