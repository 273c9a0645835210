"""The teacher's evaluation outputs are computed once per (teacher, texts, settings) and read back after."""

from __future__ import annotations

import numpy as np

from distill.store.eval_cache import FOLDER, cached_teacher_outputs


def test_computed_once_then_read_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    key = {"teacher": "abc", "texts": "t1", "max_length": 64}
    first = cached_teacher_outputs(tmp_path, key, compute)
    again = cached_teacher_outputs(tmp_path, dict(key), compute)
    assert len(calls) == 1 and np.array_equal(first, again)
    other = cached_teacher_outputs(tmp_path, {**key, "texts": "t2"}, compute)  # other texts: computed again
    assert len(calls) == 2 and np.array_equal(other, first)
    assert not list((tmp_path / FOLDER).glob(".*.tmp"))  # nothing half-written left behind


def test_non_main_process_does_not_write(tmp_path):
    cached_teacher_outputs(tmp_path, {"k": 1}, lambda: np.zeros(2), write=False)
    assert not (tmp_path / FOLDER).exists()
