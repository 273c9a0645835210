"""Two CPU ranks (torch.distributed, gloo) build the same store a single process builds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "store"))  # spawned ranks inherit it
from _store_helpers import SequenceTeacher, assert_same_store

from distill.store import StoreSpec, TeacherStore, build_store

N = 37  # 5 shards of 8 (the last one short): rank 0 writes shards 0, 2, 4 and rank 1 shards 1, 3
SPEC = StoreSpec(capture=("logits", "hidden_states"), layers=(1, 3), topk=5, dtype="float16", shard_size=8)


def _rank(rank: int, world_size: int, init_file: str, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        teacher = SequenceTeacher(N)
        logs: list[str] = []
        path = build_store(
            root,
            "key",
            SPEC,
            teacher,
            N,
            batch_size=3,
            rank=rank,
            world_size=world_size,
            barrier=dist.barrier,
            progress=False,
            log=logs.append,
        )
        complete = (path / "manifest.json").exists()  # every rank returns only once the store is complete
        Path(root, f"rank{rank}.json").write_text(
            json.dumps({"logs": logs, "calls": teacher.calls, "complete": complete})
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_build_what_one_process_builds(tmp_path):
    root = tmp_path / "ddp"
    root.mkdir()
    mp.spawn(_rank, args=(2, str(tmp_path / "rendezvous"), str(root)), nprocs=2, join=True)
    single = build_store(
        tmp_path / "single",
        "key",
        SPEC,
        SequenceTeacher(N),
        N,
        batch_size=3,
        progress=False,
        log=lambda m: None,
    )

    assert_same_store(root / "key", single)  # tensor by tensor, every shard
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (root / "key", single)]
    for m in manifests:
        m.pop("created")
    assert manifests[0] == manifests[1]

    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["complete"] for r in ranks)
    written = [sum("wrote manifest" in m for m in r["logs"]) for r in ranks]
    assert written == [1, 0]  # once, by rank 0
    shards_of = [{i // SPEC.shard_size for call in r["calls"] for i in call} for r in ranks]
    assert shards_of == [{0, 2, 4}, {1, 3}]
    store = TeacherStore.open(root / "key")
    assert store.verify() == [] and len(store) == N
