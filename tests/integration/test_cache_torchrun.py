"""`distill cache` under a 2-process CPU launch (torchrun, gloo): each rank writes its own shards, rank 0 the
manifest, and the result equals a 1-process build tensor for tensor."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import yaml
from safetensors.torch import load_file

from conftest import tiny_recipe


def _cache(recipe_path, env, nproc):
    if nproc == 1:
        cmd = [sys.executable, "-m", "distill.cli.main", "cache", str(recipe_path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "distill.cli.main", "cache", str(recipe_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_two_process_cache_equals_one_process(tmp_path, tiny_classifier, sentiment_csv):
    recipe = tiny_recipe(tmp_path, tiny_classifier, sentiment_csv,
                         store={"dir": str(tmp_path / "stores"), "shard_size": 40, "dtype": "float32"})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path),
           "CUDA_VISIBLE_DEVICES": ""}  # a CPU (gloo) launch: one GPU cannot hold two NCCL ranks
    out2 = _cache(path, env, 2)
    (key_dir,) = (tmp_path / "stores").iterdir()
    shards = sorted(key_dir.glob("shard-*.safetensors"))
    assert len(shards) == 5 and (key_dir / "manifest.json").exists()
    assert out2.count("wrote manifest") == 1  # rank 0 only
    two = {s.name: load_file(s) for s in shards}
    shutil.rmtree(key_dir)
    _cache(path, env, 1)
    for s in sorted(key_dir.glob("shard-*.safetensors")):
        one = load_file(s)
        assert one.keys() == two[s.name].keys()
        for k in one:
            assert (one[k] == two[s.name][k]).all()


def test_a_cpu_torchrun_launch_is_seen_as_two_processes(tmp_path):
    """The store build takes its rank and world size from ``process_state()``: under a CPU-only torchrun
    launch both processes used to see themselves as rank 0 of 1 and each built the whole store (the manifest
    count above only caught it when the two writes raced)."""
    script = tmp_path / "ranks.py"
    script.write_text("from distill.stages import process_state\n"
                      "s = process_state()\n"
                      "print(f'rank {s.process_index} of {s.num_processes}', flush=True)\n"
                      "s.wait_for_everyone()\n"
                      "import torch.distributed as dist\n"
                      "from distill import end_processes\n"
                      "end_processes()\n"
                      "print(f'group open after end_processes: {dist.is_initialized()}', flush=True)\n")
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path),
           "CUDA_VISIBLE_DEVICES": ""}  # a CPU (gloo) launch: one GPU cannot hold two NCCL ranks
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # both processes share the pipe: their lines can arrive glued together, so find each report in the text
    assert sorted(re.findall(r"rank \d+ of \d+", proc.stdout)) == ["rank 0 of 2", "rank 1 of 2"]
    assert proc.stdout.count("group open after end_processes: False") == 2
