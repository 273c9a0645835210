"""Shared bits of the benchmark scripts: machine description and appending to RESULTS.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__} threads {torch.get_num_threads()}"


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def append_results(title: str, body: str) -> None:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = " ".join([Path(sys.executable).name] + sys.argv)
    text = (f"\n## {title}\n\n- date: {stamp}\n- machine: {machine()}\n- commit: {git_rev()}\n"
            f"- command: `{cmd}`\n\n{body.rstrip()}\n")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEvery entry is appended by a script in bench/; "
                           "numbers are what that run measured.\n")
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fh.write(text)
    print(text)
