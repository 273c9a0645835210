"""Teacher-output store: the teacher runs once, its outputs live on disk, students train from them.

``store_key`` names a store by everything that changes its bytes; ``build_store`` writes it (sharded, atomic,
resumable, multi-rank); ``TeacherStore.open(path).fetch(indices)`` reads rows back as
:class:`~distill.outputs.ModelOutputs`. Layout: see :mod:`distill.store.spec`.
"""

from __future__ import annotations

import os
from pathlib import Path

from distill.store.fingerprint import (
    FORMAT_VERSION,
    fingerprint_model,
    fingerprint_rows,
    fingerprint_tokenizer,
    store_key,
)
from distill.store.reader import TeacherStore, format_info, stored_embeddings
from distill.store.spec import StoreError, StoreSpec
from distill.store.writer import build_store

__all__ = [
    "FORMAT_VERSION",
    "StoreError",
    "StoreSpec",
    "TeacherStore",
    "build_store",
    "default_store_root",
    "fingerprint_model",
    "fingerprint_rows",
    "fingerprint_tokenizer",
    "format_info",
    "store_key",
    "stored_embeddings",
]


def default_store_root() -> Path:
    """``$DISTILL_CACHE`` when set, else ``~/.cache/distill/stores``."""
    env = os.environ.get("DISTILL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "distill" / "stores"
