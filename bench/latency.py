"""CPU latency of saved models on the same inputs, measured back to back in one quiet process.

The run reports measure latency too, but on a busy machine those numbers are noisy; this script re-times
a teacher and its students together, so the speed-ups compare like with like.

    python bench/latency.py --teacher DIR --student NAME=DIR [--student NAME=DIR ...]
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import append_results
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.config import DataConfig
from distill.data import load_splits
from distill.evaluation.speed import count_parameters, cpu_latency_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", action="append", default=[], help="NAME=DIR")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    texts = list(load_splits(DataConfig(source="packaged", name="movie_snippets")).test["text"][:32])
    models = [("teacher", args.teacher)] + [tuple(s.split("=", 1)) for s in args.student]
    results = {}
    for name, path in models:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        results[name] = {"parameters": count_parameters(model)}
        for bs in args.batch_sizes:
            results[name][f"b{bs}"] = cpu_latency_ms(model, dict(batch), bs, args.repeats)
        print(name, json.dumps(results[name]), flush=True)
    t = results["teacher"]
    rows = [f"| {n} | {r['parameters']:,} | "
            + " | ".join(f"{r[f'b{b}']:.1f} ({t[f'b{b}'] / r[f'b{b}']:.1f}x)" for b in args.batch_sizes)
            + " |"
            for n, r in results.items()]
    body = (f"Median of {args.repeats} forward passes after 2 warm-ups, torch threads "
            f"{torch.get_num_threads()}, the first 32 test snippets padded by each model's tokenizer (max "
            f"length 64); nothing else running.\n\n"
            "| model | params | "
            + " | ".join(f"ms at batch {b} (speed-up)" for b in args.batch_sizes)
            + " |\n"
            "|---|---|" + "---|" * len(args.batch_sizes) + "\n" + "\n".join(rows))
    append_results("CPU latency, teacher vs students, quiet machine (bench/latency.py)", body)


if __name__ == "__main__":
    main()
