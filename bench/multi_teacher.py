"""Benchmark (issue 18, multi-teacher): a student distilled from two fine-tuned teachers of different families
against the same student distilled from each teacher alone, on the movie-review snippets.

Teachers (fine-tuned once on the snippet train split, cached outside the repo):
  mpnet  all-mpnet-base-v2 (MPNet, 12 layers), 1 epoch, lr 2e-5 (the text-classification bench's teacher)
  minilm all-MiniLM-L6-v2 (BERT, 6 layers), 2 epochs, lr 5e-5
Student: a 3-layer copy of all-MiniLM-L6-v2 (layers 1, 3, 5), the same start in every run. Per seed:
the student from mpnet alone, from minilm alone, from both (``combine``), and the no-KD student (labels only,
trained in the combined run). Each teacher runs once into its own store; the combined runs read those
stores, so no teacher runs again.

    python bench/multi_teacher.py --seeds 0 1 2 --epochs 1 --combine mean_probs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _common import append_results, mean_std, write_json
from text_classification import CACHE

from distill.config import recipe_from_dict
from distill.evaluation.predictions import FILENAME, read_predictions
from distill.evaluation.significance import mcnemar_exact, mean_interval
from distill.tasks import task_for

TEACHERS = {
    "mpnet": {"model": "packaged:all-mpnet-base-v2", "name": "mpnet",
              "finetune": {"epochs": 1, "learning_rate": 2e-5, "batch_size": 32, "seed": 0,
                           "output_dir": str(CACHE / "teacher-mpnet-snippets")}},
    "minilm": {"model": "packaged:all-MiniLM-L6-v2", "name": "minilm",
               "finetune": {"epochs": 2, "learning_rate": 5e-5, "batch_size": 32, "seed": 0,
                            "output_dir": str(CACHE / "teacher-minilm-snippets")}},
}
STUDENT = {"model": "packaged:all-MiniLM-L6-v2", "layers": [1, 3, 5]}


def recipe(teachers: list[str], seed: int, epochs: float, out: Path, combine: str, kd_weight: float,
           temperature: float, baseline: bool) -> dict:
    r = {
        "output_dir": str(out),
        "student": STUDENT,
        "data": {"source": "packaged", "name": "movie_snippets", "max_length": 64, "split_seed": 0},
        "select": {"enabled": False},  # the same losses in every run: only the teachers differ
        "losses": [{"name": "kd", "weight": kd_weight, "temperature": temperature},
                   {"name": "ce", "weight": round(1 - kd_weight, 6)}],
        "store": {"topk": 0, "dtype": "float32", "dir": str(CACHE / "stores")},
        "train": {"epochs": epochs, "batch_size": 32, "learning_rate": 1e-4, "seed": seed,
                  "group_by_length": True, "logging_steps": 50, "save_steps": 100, "eval_batch_size": 64},
        "eval": {"baseline": baseline, "latency_batch_sizes": [1, 32], "latency_repeats": 5},
        "export": {"model_card": True},
    }
    if len(teachers) == 1:
        r["teacher"] = TEACHERS[teachers[0]]
    else:
        r["teachers"], r["combine"] = [TEACHERS[t] for t in teachers], combine
    return r


def correct(run: Path, role: str = "student_kd") -> list[bool]:
    """Per test example: did ``role`` predict the gold label (from the run's predictions file)."""
    return [row[role]["pred"] == row["label"] for row in read_predictions(run / FILENAME)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--combine", default="mean_probs")
    ap.add_argument("--kd-weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--out", default="runs/bench_multi_teacher")
    ap.add_argument("--summarize", action="store_true", help="only summarise the runs already on disk")
    args = ap.parse_args()
    runs = {"mpnet": ["mpnet"], "minilm": ["minilm"], "combined": ["mpnet", "minilm"]}

    def where(name: str, seed: int) -> Path:
        tag = f"combined-{args.combine}" if name == "combined" else name
        return Path(args.out) / tag / f"seed{seed}"

    if not args.summarize:
        for seed in args.seeds:
            for name, teachers in runs.items():
                task_for(recipe_from_dict(recipe(teachers, seed, args.epochs, where(name, seed), args.combine,
                                                 args.kd_weight, args.temperature,
                                                 baseline=name == "combined"))).run()

    reports = {name: [json.loads((where(name, s) / "report.json").read_text()) for s in args.seeds]
               for name in runs}
    acc = {name: [r["models"]["student_kd"]["accuracy"] for r in rs] for name, rs in reports.items()}
    no_kd = [r["models"]["student_no_kd"]["accuracy"] for r in reports["combined"]]
    teacher_acc = {"mpnet": reports["mpnet"][0]["models"]["teacher"]["accuracy"],
                   "minilm": reports["minilm"][0]["models"]["teacher"]["accuracy"],
                   "combined": reports["combined"][0]["models"]["teacher"]["accuracy"]}
    best = max(("mpnet", "minilm"), key=lambda n: statistics.mean(acc[n]))
    # paired over (seed, test example): the combined-teacher student vs the best single-teacher student
    a_only = b_only = 0
    for seed in args.seeds:
        a, b = correct(where("combined", seed)), correct(where(best, seed))
        a_only += sum(x and not y for x, y in zip(a, b, strict=True))
        b_only += sum(y and not x for x, y in zip(a, b, strict=True))
    p = mcnemar_exact([True] * a_only + [False] * b_only, [False] * a_only + [True] * b_only)["p"]
    gain = mean_interval([c - s for c, s in zip(acc["combined"], acc[best], strict=True)])
    members = reports["combined"][0]["teachers"]
    summary = {
        "single_best": best,
        "single_best_mean": statistics.mean(acc[best]),
        "combined_mean": statistics.mean(acc["combined"]),
        "seeds": len(args.seeds),
        "p": p,
        "combined_minus_single_best_ci95": gain["ci95"],
        "discordant": {"combined_only": a_only, "single_best_only": b_only},
        "combine": args.combine,
        "per_teacher_student_mean": {n: statistics.mean(acc[n]) for n in ("mpnet", "minilm")},
        "no_kd_mean": statistics.mean(no_kd),
        "teacher_accuracy": teacher_acc,
        "teacher_agreement": members["agreement"],
        "speedup_b1_vs_combined_teacher": statistics.mean(r["summary"].get("speedup_b1") or 0
                                                          for r in reports["combined"]),
    }
    rows = [{"student_from": name, "seed": s, "accuracy": a}
            for name in runs for s, a in zip(args.seeds, acc[name], strict=True)]
    rows += [{"student_from": "labels only (no KD)", "seed": s, "accuracy": a}
             for s, a in zip(args.seeds, no_kd, strict=True)]
    table = ["| student distilled from | teacher accuracy | student accuracy (mean ± std) |", "|---|---|---|"]
    for name in runs:
        label = f"both ({args.combine})" if name == "combined" else f"{name} alone"
        table.append(f"| {label} | {teacher_acc[name]:.4f} | {mean_std(acc[name])} |")
    table.append(f"| labels only (no KD) | - | {mean_std(no_kd)} |")
    body = (
        "Teachers fine-tuned on the movie-snippet train split (ASSETS.md split; validation 10% of train): "
        "all-mpnet-base-v2 (1 epoch, lr 2e-5) and all-MiniLM-L6-v2 (2 epochs, lr 5e-5). Student: layers "
        f"1, 3, 5 of all-MiniLM-L6-v2; {args.epochs} epoch(s), batch 32, lr 1e-4, losses {args.kd_weight} kd "
        f"(T={args.temperature}) + {1 - args.kd_weight:.2f} ce; labelled rows only. Seeds {args.seeds}.\n\n"
        + "\n".join(table)
        + f"\n\nBoth vs the best single teacher ({best}): "
        f"{summary['combined_mean'] - summary['single_best_mean']:+.4f} (95% t-interval over seeds "
        f"{gain['ci95'][0]:+.4f}..{gain['ci95'][1]:+.4f}), pooled McNemar over "
        f"(seed, example) pairs p = {p:.4f} ({a_only} vs {b_only} discordant). Teacher agreement on the test "
        f"split: {', '.join(f'{k} {v:.3f}' for k, v in members['agreement'].items())}."
    )
    append_results(f"Multi-teacher: two teachers vs each alone (bench/multi_teacher.py, {args.combine})",
                   body)
    write_json("multi_teacher", args.seeds, rows, summary)


if __name__ == "__main__":
    main()
