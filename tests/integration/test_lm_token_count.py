"""Token-level losses under 2 CPU processes (torchrun, gloo): every rank divides by the trained tokens of the
whole step summed over both ranks, so one step of 2 processes x 2 accumulated micro-batches of 2 rows gives
the weights and the logged loss of one process on the 8 rows at once."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "lm_helpers", Path(__file__).parents[1] / "unit" / "causal_lm" / "lm_helpers.py")
lm_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lm_helpers)

SCRIPT = Path(__file__).parent / "scripts" / "lm_token_count.py"


def _rows(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):  # uneven lengths and prompts: the two ranks hold different token counts
        length = int(torch.randint(4, 14, (1,), generator=g))
        rows.append({"input_ids": torch.randint(3, 30, (length,), generator=g).tolist(),
                     "prompt_length": i % 3, "domain": 0, "example_index": i})
    return rows


def _launch(tmp_path, teacher, rows_file, name, nproc, batch, accum):
    out = tmp_path / name
    out.mkdir()
    args = [str(SCRIPT), str(teacher), str(rows_file), str(out), str(batch), str(accum)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path),
           "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks over gloo: one GPU cannot hold two NCCL ranks
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(nproc)]


def test_two_processes_count_every_token_of_the_step(tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.data.text_lm import CausalLMCollator
    from distill.students import student_from_teacher

    tok = lm_helpers.make_lm_tokenizer(tmp_path / "tok")
    teacher = lm_helpers.make_llama(tmp_path / "teacher", tok, layers=4)
    rows = _rows()
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows))
    expected = int(CausalLMCollator(0)(rows)["loss_mask"].sum())

    r0, r1 = _launch(tmp_path, teacher, rows_file, "ddp", nproc=2, batch=2, accum=2)
    (one,) = _launch(tmp_path, teacher, rows_file, "single", nproc=1, batch=8, accum=1)
    assert r0["world"] == r1["world"] == 2 and one["world"] == 1
    (c0,), (c1,) = r0["calls"], r1["calls"]  # one optimisation step
    assert len(c0["local"]) == len(c1["local"]) == 2  # two accumulated micro-batches on each rank
    # the ranks held different rows (and different token counts), together all 8
    seen = sorted(i for c in (c0, c1) for b in c["rows"] for i in b)
    assert seen == list(range(8)) and sum(c0["local"]) != sum(c1["local"])
    # each rank divides by the tokens of both ranks' micro-batches, which is the one-process count
    assert c0["total"] == c1["total"] == sum(c0["local"]) + sum(c1["local"]) == expected
    assert one["calls"][0]["total"] == expected

    # DDP averages gradients over the ranks and each rank's loss carries a factor world size: the step is
    # the one-process step on the concatenated batch
    for k, v in one["student"].items():
        torch.testing.assert_close(r0["student"][k], v, atol=lm_helpers.STEP_ATOL, rtol=lm_helpers.STEP_RTOL,
                                   msg=f"{k} differs from 1 process")
        torch.testing.assert_close(r1["student"][k], r0["student"][k], msg=f"{k} differs between ranks")
    start = student_from_teacher(AutoModelForCausalLM.from_pretrained(teacher), [0, 3]).state_dict()
    moved = sum(int(not torch.allclose(start[k], v.float())) for k, v in one["student"].items())
    assert moved > 5  # the step really changed the weights
    # the logged loss parts are reduced over the ranks with the loss's token weighting: every rank logs the
    # one-process parts, and the recipe's weights recombine them into the logged loss
    single = _logged(one["log"])
    assert {"loss", "loss/kd", "loss/ce"} <= set(single)
    for log in (_logged(r0["log"]), _logged(r1["log"])):
        assert set(log) == set(single)
        # the Trainer's loss is accumulated in float32 (lm_helpers.LOGGED_LOSS_RTOL)
        for k, v in single.items():
            rel = lm_helpers.LOGGED_LOSS_RTOL if k == "loss" else lm_helpers.STEP_RTOL
            assert log[k] == pytest.approx(v, rel=rel), k
        total = sum(w * log[f"loss/{k}"] for k, w in zip(r0["keys"], r0["weights"]))
        assert total == pytest.approx(log["loss"], rel=lm_helpers.LOGGED_LOSS_RTOL)


def _logged(history: list[dict]) -> dict[str, float]:
    return {k: v for k, v in next(h for h in history if "loss" in h).items()
            if k == "loss" or k.startswith("loss/")}
