"""Resume, corruption repair, crash safety (kill -9), missing manifests and info()."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from _store_helpers import ClassifierTeacher, SequenceTeacher, assert_same_store
from safetensors import safe_open

from distill.store import StoreError, StoreSpec, TeacherStore, build_store, format_info

SPEC = StoreSpec(capture=("logits", "embeddings"), dtype="float32", shard_size=10)
N = 50  # 5 shards of 10, 2 batches of 5 each


def _build(root, compute, spec=SPEC, n=N, logs=None, **kw):
    log = (lambda m: logs.append(m)) if logs is not None else (lambda m: None)
    return build_store(root, "key", spec, compute, n, batch_size=5, progress=False, log=log, **kw)


def _rows_computed(teacher) -> set[int]:
    return {i for call in teacher.calls for i in call}


def _manifest(path: Path) -> dict:
    m = json.loads((path / "manifest.json").read_text())
    m.pop("created")
    return m


def test_resume_after_a_failure_reuses_finished_shards(tmp_path):
    teacher = ClassifierTeacher(N)

    def failing(indices):
        if len(teacher.calls) == 5:  # shards 0 and 1 are done (2 batches each), shard 2 half computed
            raise RuntimeError("teacher crashed")
        return teacher(indices)

    with pytest.raises(RuntimeError, match="teacher crashed"):
        _build(tmp_path / "a", failing)
    store_dir = tmp_path / "a" / "key"
    assert not (store_dir / "manifest.json").exists()
    assert sorted(p.name for p in store_dir.glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
    with pytest.raises(StoreError, match="distill cache"):
        TeacherStore.open(store_dir)

    again = ClassifierTeacher(N)
    _build(tmp_path / "a", again)
    assert _rows_computed(again) == set(range(20, N)) and len(again.calls) == 6
    clean = _build(tmp_path / "b", ClassifierTeacher(N))
    assert_same_store(store_dir, clean)
    assert _manifest(store_dir) == _manifest(clean)
    assert TeacherStore.open(store_dir).verify() == []


def test_complete_store_is_not_recomputed_nor_rewritten(tmp_path):
    path = _build(tmp_path, ClassifierTeacher(N), meta={"teacher": "tiny"})
    before = (path / "manifest.json").read_bytes()
    again = ClassifierTeacher(N)
    _build(tmp_path, again, meta={"teacher": "tiny"})
    assert again.calls == []
    assert (path / "manifest.json").read_bytes() == before
    (path / "manifest.json").unlink()  # killed after the last shard, before the manifest
    _build(tmp_path, again, meta={"teacher": "tiny"})
    assert again.calls == [] and TeacherStore.open(path).verify() == []
    with pytest.raises(StoreError, match="store_key"):  # same key, other data size: the key is wrong
        _build(tmp_path, again, n=N + 1)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # inside the tensor payload, after the header
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-13])


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop_sidecar", "garble_sidecar"])
def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, damage):
    path = _build(tmp_path, ClassifierTeacher(N))
    shard = path / "shard-00001.safetensors"
    if damage == "flip":
        _flip(shard)
        assert TeacherStore.open(path).verify() == ["shard-00001.safetensors"]
    elif damage == "truncate":
        _truncate(shard)
        with pytest.raises(StoreError, match=r"shard-00001.*distill cache"):
            TeacherStore.open(path)
    elif damage == "drop_sidecar":
        (path / "shard-00001.json").unlink()
    else:
        (path / "shard-00001.json").write_text("{not json")

    logs: list[str] = []
    again = ClassifierTeacher(N)
    _build(tmp_path, again, logs=logs)
    assert _rows_computed(again) == set(range(10, 20))  # only the damaged shard
    assert any("shard-00001" in m and "rebuilding" in m for m in logs), logs
    store = TeacherStore.open(path)
    assert store.verify() == []
    assert torch.equal(store.fetch(range(N)).logits, again.logits(range(N)))


def test_open_without_manifest_or_with_another_version(tmp_path):
    with pytest.raises(StoreError, match=r"does not exist.*distill cache"):
        TeacherStore.open(tmp_path / "nothing")
    path = _build(tmp_path, ClassifierTeacher(N))
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 999}))
    with pytest.raises(StoreError, match=r"format version 999.*distill cache"):
        TeacherStore.open(path)
    (path / "manifest.json").unlink()
    with pytest.raises(StoreError, match=r"manifest.json.*distill cache"):
        TeacherStore.open(path)


def test_several_ranks_need_a_barrier(tmp_path):
    with pytest.raises(ValueError, match="barrier"):
        _build(tmp_path, ClassifierTeacher(N), rank=0, world_size=2)


def test_info_numbers(tmp_path):
    path = _build(tmp_path, ClassifierTeacher(N), meta={"teacher": "tiny", "max_length": 32})
    info = TeacherStore.open(path).info()
    on_disk = sum(f.stat().st_size for f in path.iterdir())
    assert info["key"] == "key" and info["num_examples"] == N and info["num_shards"] == 5
    assert info["num_classes"] == 7 and info["bytes"] == on_disk
    assert info["bytes_per_example"] == pytest.approx(on_disk / N)
    assert info["num_tokens"] is None and info["bytes_per_token"] is None
    assert info["meta"] == {"teacher": "tiny", "max_length": 32} and info["spec"]["dtype"] == "float32"
    data = sum(f.stat().st_size for f in path.glob("shard-*.safetensors"))
    assert json.loads((path / "manifest.json").read_text())["bytes_total"] == data
    # payload: 50 x 7 float32 logits + 50 x 16 float32 embeddings, plus small headers
    assert N * (7 + 16) * 4 < data < N * (7 + 16) * 4 + 5 * 1024
    table = format_info(info)
    assert (
        "key" in table
        and "50" in table
        and "logits (all 7, per example)" in table
        and "meta.teacher" in table
    )

    seq = SequenceTeacher(12)
    spath = build_store(
        tmp_path, "seq", StoreSpec(topk=4, shard_size=5), seq, 12, progress=False, log=lambda m: None
    )
    sinfo = TeacherStore.open(spath).info()
    assert sinfo["num_tokens"] == int(seq.lengths.sum())
    assert sinfo["bytes_per_token"] == pytest.approx(sinfo["bytes"] / sinfo["num_tokens"])
    assert "/ token" in format_info(sinfo) and "top-4 of 50" in format_info(sinfo)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from _store_helpers import ClassifierTeacher
    from distill.store import StoreSpec, build_store

    teacher = ClassifierTeacher(int(sys.argv[3]))

    def slow(indices):
        time.sleep(0.03)
        return teacher(indices)

    spec = StoreSpec(capture=("logits", "embeddings"), dtype="float32", shard_size=10)
    build_store(sys.argv[2], "key", spec, slow, int(sys.argv[3]), batch_size=5, progress=False)
    """
)


def test_kill_9_mid_build_leaves_no_corrupt_file_and_resumes(tmp_path):
    n = 200  # 20 shards, ~0.06 s each
    root = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(Path(__file__).parent), str(root), str(n)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    store_dir = root / "key"
    deadline = time.monotonic() + 60
    while len(list(store_dir.glob("shard-*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the build never got going"
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.06))  # land anywhere in a shard: computing, saving, renaming
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (store_dir / "manifest.json").exists()
    # whatever sits under a final name is whole
    for f in store_dir.glob("shard-*.safetensors"):
        with safe_open(str(f), framework="pt") as handle:
            handle.get_tensor("logits")
    for f in store_dir.glob("shard-*.json"):
        json.loads(f.read_text())

    again = ClassifierTeacher(n)
    _build(root, again, n=n)
    reused = set(range(n)) - _rows_computed(again)
    assert len(reused) >= 10, "at least one finished shard must be reused"
    store = TeacherStore.open(store_dir)
    assert store.verify() == []
    assert not list(store_dir.glob(".*tmp-*"))  # temp files of the killed build are gone
    assert_same_store(store_dir, _build(tmp_path / "clean", ClassifierTeacher(n), n=n))
