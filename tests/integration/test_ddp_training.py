"""Two CPU processes (torchrun, gloo) train one student: DDP keeps the student and the projectors in sync."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def test_two_process_training_keeps_projectors_in_sync(tmp_path, tiny_classifier):
    script = Path(__file__).parent / "scripts" / "ddp_train.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tiny_classifier), str(tmp_path)]
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU: one GPU cannot hold two NCCL ranks
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert r0["world"] == r1["world"] == 2  # really data-parallel, not two independent copies
    for part in ("student", "distiller"):
        for k, v in r0[part].items():
            torch.testing.assert_close(r1[part][k], v, msg=f"{part}.{k} differs between ranks")
    init = torch.eye(32)  # square linear projectors start as the identity: they must have trained
    assert any(not torch.allclose(v, init) for k, v in r0["distiller"].items() if k.endswith("weight"))
