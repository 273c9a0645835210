"""FSDP2 with an online teacher on 2 CPU processes over gloo (tests/integration/scripts/fsdp_step.py):

- one sharded step is the one-process step on the same rows (token-level kd + ce, float64);
- the teacher is sharded with the student's layer policy, frozen, outside the optimizer, and never holds
  more than one decoder layer's full weights at a time;
- learned projectors train identically under FSDP and DDP, and stay in sync across the ranks;
- a run checkpointed and stopped under FSDP, then resumed, ends with the weights of an uninterrupted run;
- a 2-"node" launch (two torchrun launchers, one process each, a localhost rendezvous) runs the same step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "lm_helpers", Path(__file__).parents[1] / "unit" / "causal_lm" / "lm_helpers.py")
lm_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lm_helpers)

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_step.py"


def _env() -> dict[str, str]:
    # CPU processes over gloo, as the scripts expect: with a GPU visible accelerate would put every rank on
    # cuda:0 under NCCL (which refuses two ranks on one device)
    return {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path),
            "CUDA_VISIBLE_DEVICES": ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lm_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    tok = lm_helpers.make_lm_tokenizer(root / "tok")
    teacher = lm_helpers.make_llama(root / "teacher", tok, layers=4)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):  # uneven lengths: the two ranks hold different token counts
        length = int(torch.randint(4, 14, (1,), generator=g))
        rows.append({"input_ids": torch.randint(3, 30, (length,), generator=g).tolist(),
                     "prompt_length": i % 3, "domain": 0, "example_index": i})
    rows_file = root / "rows.json"
    rows_file.write_text(json.dumps(rows))
    return teacher, rows_file


def _run(tmp_path, lm_pair, name, mode, batch, losses="plain", steps=1, extra="", nproc=2, out=None):
    teacher, rows_file = lm_pair
    out = out or tmp_path / name
    out.mkdir(exist_ok=True)
    args = [str(SCRIPT), str(teacher), str(rows_file), str(out), mode, str(batch), losses, str(steps)]
    if extra:
        args.append(extra)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *args]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(nproc)]


def _assert_same_weights(got: dict, want: dict, what: str, rtol=lm_helpers.STEP_RTOL,
                         atol=lm_helpers.STEP_ATOL):
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=rtol, atol=atol, msg=f"{k}: {what}")


def test_fsdp_step_equals_one_process_and_the_teacher_stays_sharded(tmp_path, lm_pair):
    r0, r1 = _run(tmp_path, lm_pair, "fsdp", "fsdp", batch=4)
    (one,) = _run(tmp_path, lm_pair, "single", "single", batch=8, nproc=1)
    assert r0["fsdp"] and r1["fsdp"] and r0["world"] == 2 and not one["fsdp"]
    _assert_same_weights(r0["student"], one["student"], "FSDP step differs from one process")
    _assert_same_weights(r1["student"], r0["student"], "ranks differ")
    assert r0["log"][0]["loss/kd"] == pytest.approx(one["log"][0]["loss/kd"], rel=lm_helpers.STEP_RTOL)

    for r in (r0, r1):
        # every teacher parameter is split over the two ranks (each holds about half of it) ...
        assert all(local < whole for local, whole in zip(r["teacher_local"], r["teacher_full"]))
        # ... frozen, with no gradient and no optimizer state
        assert r["teacher_grads"] == r["teacher_requires_grad"] == r["teacher_in_optimizer"] == 0
        # ... and never gathered whole: while a decoder layer runs, it is the only one holding full weights
        assert r["gathered_layers"] and max(r["gathered_layers"]) == 1
    assert [a + b for a, b in zip(r0["teacher_local"], r1["teacher_local"])] == r0["teacher_full"]


def test_projectors_train_alike_under_fsdp_and_ddp(tmp_path, lm_pair):
    f0, f1 = _run(tmp_path, lm_pair, "fsdp", "fsdp", batch=4, losses="proj")
    d0, _ = _run(tmp_path, lm_pair, "ddp", "ddp", batch=4, losses="proj")
    assert f0["fsdp"] and not d0["fsdp"]
    _assert_same_weights(f0["student"], d0["student"], "FSDP and DDP students differ")
    _assert_same_weights(f0["distiller"], d0["distiller"], "FSDP and DDP projectors differ")
    _assert_same_weights(f1["distiller"], f0["distiller"], "projectors differ between ranks")
    start = torch.eye(f0["distiller"]["losses.2.projectors.0.weight"].shape[0], dtype=torch.float64)
    assert not torch.allclose(f0["distiller"]["losses.2.projectors.0.weight"], start)  # they trained


@pytest.mark.parametrize("mode", ["fsdp", "single"])
def test_checkpoint_resume_with_projectors_gives_the_uninterrupted_weights(tmp_path, lm_pair, mode):
    """4 Adam steps in one go; then 2 steps, checkpoint, stop, and a new launch resumes from the checkpoint.
    Also one process: the projectors' gradients must be cleared after every step (the Trainer clears only the
    model's), or the uninterrupted run's updates follow the sum of all past gradients and the resumed one's
    do not."""
    nproc, batch = (2, 2) if mode == "fsdp" else (1, 4)
    kw = dict(mode=mode, batch=batch, losses="proj", steps=4, nproc=nproc)
    full = _run(tmp_path, lm_pair, "full", extra="99", **kw)[0]
    _run(tmp_path, lm_pair, "cut", extra="2", **kw)
    cut_dir = tmp_path / "cut"
    assert sorted(p.name for p in (cut_dir / "ckpt").iterdir()) == ["checkpoint-2"]
    saved = {p.name for p in (cut_dir / "ckpt" / "checkpoint-2").iterdir()}
    assert "distiller.pt" in saved  # the projectors
    if mode == "fsdp":
        assert "distiller_optimizer.pt" in saved  # their Adam state, beside the sharded optimizer's
    resumed = _run(tmp_path, lm_pair, "cut", extra="resume", out=cut_dir, **kw)[0]
    assert full["global_step"] == resumed["global_step"] == 4
    _assert_same_weights(resumed["student"], full["student"], "resumed student differs")
    _assert_same_weights(resumed["distiller"], full["distiller"], "resumed projectors differ")


def test_two_node_launch_runs_the_fsdp_step(tmp_path, lm_pair):
    """Two launchers (``torchrun --nnodes 2 --node_rank 0|1``), one process each, meeting at a localhost
    rendezvous: the multi-node code path (global ranks from two agents) ends with the one-process step."""
    teacher, rows_file = lm_pair
    out = tmp_path / "nodes"
    out.mkdir()
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               str(SCRIPT), str(teacher), str(rows_file), str(out), "fsdp", "4", "plain", "1"]
        procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    (one,) = _run(tmp_path, lm_pair, "single", "single", batch=8, nproc=1)
    assert r0["world"] == r1["world"] == 2 and r0["fsdp"]
    _assert_same_weights(r0["student"], one["student"], "2-node FSDP step differs from one process")
    _assert_same_weights(r1["student"], r0["student"], "nodes differ")


def test_distill_run_under_fsdp_with_an_online_teacher(tmp_path):
    """``torchrun --nproc_per_node 2 -m distill.cli.main run`` with ``train.fsdp.enabled`` and the online
    teacher (no store): the run finishes, the report compares the three models, and the saved student holds
    the trained (gathered) weights and loads with from_pretrained."""
    import pandas as pd
    import yaml
    from transformers import AutoModelForCausalLM

    tok = lm_helpers.make_lm_tokenizer(tmp_path / "tok")
    teacher = lm_helpers.make_llama(tmp_path / "teacher", tok, layers=4)
    data = tmp_path / "corpus.csv"
    pd.DataFrame(lm_helpers.make_corpus(40)).to_csv(data, index=False)
    recipe = {
        "task": "causal-lm", "output_dir": str(tmp_path / "run"),
        "teacher": {"model": str(teacher)},
        "student": {"from_teacher": True, "layers": [0, 3]},
        "data": {"train": str(data), "test_fraction": 0.2, "validation_fraction": 0.15},
        "losses": [{"name": "kd", "weight": 1.0}, {"name": "ce", "weight": 0.5}],
        "causal_lm": {"chunk_length": 16, "domain_column": "domain", "sample_prompts": [],
                      "curve_steps": [2]},
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 2,
                  "eval_batch_size": 16, "warmup_ratio": 0.0, "report_to": [], "fsdp": {"enabled": True}},
        "store": {"enabled": False},
        "select": {"enabled": False},
        "eval": {"latency_batch_sizes": [1], "latency_min_seconds": 0.1, "latency_precision": 0.0},
    }
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "distill.cli.main", "run", str(path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student_kd", "student_no_kd"}
    assert "online teacher, FSDP" in proc.stdout + proc.stderr
    # the curve point was scored by both processes (a sharded forward is collective) and reported once
    assert [p["step"] for p in report["training"]["student"]["curve"]] == [2]
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student")
    init = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student_init")
    moved = [k for k, v in student.state_dict().items() if not torch.allclose(v, init.state_dict()[k])]
    assert len(moved) > 5  # the trained weights were gathered, not the initial ones


def test_deepspeed_zero3_partitions_the_online_teacher(tmp_path, lm_pair):
    """Only where DeepSpeed is installed (it is not part of the test install): ZeRO-3 through the Trainer on
    2 CPU processes (DeepSpeed's CPU accelerator, gloo), the online teacher in an inference-only engine
    holding half of its parameters per process, the losses those of the DDP run."""
    pytest.importorskip("deepspeed")
    teacher, rows_file = lm_pair
    script = Path(__file__).parent / "scripts" / "deepspeed_step.py"
    env = {**_env(), "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    for mode in ("ds", "ddp"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(script), str(teacher), str(rows_file), str(tmp_path), mode]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ds = [json.loads((tmp_path / f"ds_rank{r}.json").read_text()) for r in (0, 1)]
    ddp = json.loads((tmp_path / "ddp_rank0.json").read_text())
    assert all(r["deepspeed"] for r in ds) and not ddp["deepspeed"]
    for r in ds:
        assert r["teacher_held"] < 0.6 * r["teacher_full"]  # half each (DeepSpeed pads partitions)
        assert r["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
