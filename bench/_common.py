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
RESULTS_DIR = Path(__file__).with_name("results")


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


def augment_description(variants: int) -> str:
    """How a bench's ``data.augment: {variants: N}`` rows are made, in words, from the config's own defaults
    (so the text follows them if they change)."""
    from distill.config import TextAugmentConfig

    cfg = TextAugmentConfig(variants=variants)
    source = ("the teacher's embedding neighbours" if cfg.source == "embedding"
              else "a masked LM's predictions")
    return (f"{variants} word-replaced variant(s) of each labelled row "
            f"(data.augment, rate {cfg.rate:g}, {source})")


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


def write_json(benchmark: str, seeds: list[int], rows: list[dict], summary: dict) -> Path:
    """``bench/results/<benchmark>.json``, the machine-readable twin of the RESULTS.md entry (written
    atomically: a reader never sees half a file)."""
    from distill.files import atomic_write_json

    path = RESULTS_DIR / f"{benchmark}.json"
    atomic_write_json(path, {
        "benchmark": benchmark,
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "commit": git_rev(),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine(),
        "seeds": list(seeds),
        "rows": rows,
        "summary": summary,
    })
    return path


def merged_with_earlier(benchmark: str, rows: list[dict], summary: dict, key: str) -> tuple[list[dict], dict]:
    """This run's rows and summary entries, plus those of every model (rows' ``key``) it did not run from
    the existing bench/results/<benchmark>.json, each kept entry tagged ``from_run`` with that file's
    command, commit and date (an entry that file had itself kept keeps its own tag). Lets a benchmark re-run
    some of its models without dropping the others' figures."""
    import json

    path = RESULTS_DIR / f"{benchmark}.json"
    if not path.exists():
        return rows, summary
    earlier = json.loads(path.read_text())
    source = {k: earlier[k] for k in ("command", "commit", "date")}
    ran = {r[key] for r in rows}
    kept = [{"from_run": source, **r} for r in earlier["rows"] if r[key] not in ran]
    merged = {**{k: {"from_run": source, **v} for k, v in earlier["summary"].items()
                 if k not in summary and isinstance(v, dict)},  # the earlier file's notes are left behind
              **summary}
    merged["note"] = (f"{', '.join(sorted(ran))} from this run; every other entry is tagged "
                      "from_run with the run it came from")
    return rows + kept, merged


def pooled_comparison(reports: list[dict], a: str = "student_kd", b: str = "student_no_kd") -> dict:
    """``a`` vs ``b`` over several seeds, from each report's paired test on the same test examples.

    ``p``: exact McNemar on the discordant examples pooled over the seeds (each seed's pair of students is an
    independent draw, each test example a paired observation; pooling asks whether ``a`` beats ``b`` on
    (seed, example) pairs). ``gain``: mean accuracy difference over seeds with its t-interval (a handful of
    seeds gives a wide one)."""
    from distill.evaluation.significance import mcnemar_exact, mean_interval

    key = f"{a}_vs_{b}"
    a_only = sum(r["significance"][key]["discordant"]["a_only"] for r in reports)
    b_only = sum(r["significance"][key]["discordant"]["b_only"] for r in reports)
    # the same exact McNemar as one report uses, on the pooled discordant examples
    pooled = mcnemar_exact([True] * a_only + [False] * b_only, [False] * a_only + [True] * b_only)
    gains = [r["significance"][key]["difference"] for r in reports]
    return {"a_only": a_only, "b_only": b_only, "p": pooled["p"],
            "per_seed_p": [r["significance"][key]["p"] for r in reports],
            "gain": mean_interval(gains)}
