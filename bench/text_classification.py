"""Benchmark (issue: foundation): teacher vs distilled student vs no-KD student on movie-review snippets.

Teacher: all-mpnet-base-v2 fine-tuned on the snippet train split (built once, cached outside the repo).
Students: all-MiniLM-L6-v2 and a 3-layer copy of it; each trained with KD (from the teacher-output store)
and without (labels only), over several seeds. Prints mean and spread, CPU speed-up and size ratio, and
appends them to bench/RESULTS.md.

    python bench/text_classification.py --seeds 0 1 2 --students minilm6 minilm3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from _common import (
    append_results,
    augment_description,
    mean_std,
    merged_with_earlier,
    pooled_comparison,
    write_json,
)

from distill.config import recipe_from_dict
from distill.tasks import task_for

CACHE = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill")) / "bench"
STUDENTS = {
    "minilm6": {"model": "packaged:all-MiniLM-L6-v2"},
    "minilm3": {"model": "packaged:all-MiniLM-L6-v2", "layers": [1, 3, 5]},
}


def recipe(student: str, seed: int, epochs: float, out: Path, kd_weight: float, temperature: float,
           unlabeled: int = 0, learning_rate: float = 1e-4, sources: list[str] | None = None,
           augment_variants: int = 0) -> dict:
    data = {"source": "packaged", "name": "movie_snippets", "max_length": 64, "split_seed": 0}
    if unlabeled:
        # in-domain and general English text the teacher labels once into the store (held-out texts removed)
        data.update({"unlabeled": "packaged:english_text", "max_unlabeled_examples": unlabeled})
        if sources:  # e.g. rotten_tomatoes: review sentences from the snippets' own source (in domain)
            data["unlabeled_sources"] = sources
    if augment_variants:
        # word-replaced variants of each labelled row (TinyBERT-style), labelled by the teacher only
        data["augment"] = {"variants": augment_variants}
    return {
        "output_dir": str(out),
        "teacher": {"model": "packaged:all-mpnet-base-v2",
                    "finetune": {"epochs": 1, "learning_rate": 2e-5, "batch_size": 32, "seed": 0,
                                 "output_dir": str(CACHE / "teacher-mpnet-snippets")}},
        "student": STUDENTS[student],
        "data": data,
        "select": {"enabled": False},  # the weights as given: KD and no-KD differ only by the teacher
        "losses": [{"name": "kd", "weight": kd_weight, "temperature": temperature},
                   {"name": "ce", "weight": round(1 - kd_weight, 6)}],
        "store": {"topk": 0, "dtype": "float32", "dir": str(CACHE / "stores")},
        "train": {"epochs": epochs, "batch_size": 32, "learning_rate": learning_rate, "seed": seed,
                  "group_by_length": True,
                  "logging_steps": 50, "save_steps": 100, "eval_batch_size": 64},
        "eval": {"latency_batch_sizes": [1, 32], "latency_repeats": 10},
        "export": {"model_card": True},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--kd-weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--learning-rate", type=float, default=1e-4,
                    help="students' peak AdamW learning rate (linear warm-up 10%%, then linear decay)")
    ap.add_argument("--unlabeled", type=int, default=0,
                    help="add this many sentences of packaged:english_text, labelled by the teacher only")
    ap.add_argument("--unlabeled-sources", nargs="+", default=None,
                    help="take the --unlabeled sentences from these packaged:english_text sources only "
                         "(e.g. rotten_tomatoes, in domain)")
    ap.add_argument("--augment-variants", type=int, default=0,
                    help="data.augment: word-replaced variants per labelled row for the KD student, with the "
                         "config's default rate and source (0: none)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other students' entries of the existing results json (tagged from_run)")
    ap.add_argument("--out", default="runs/bench_text")
    ap.add_argument("--summarize", action="store_true", help="only summarise the reports already on disk")
    args = ap.parse_args()

    if not args.summarize:
        for student in args.students:
            for seed in args.seeds:
                out = Path(args.out) / student / f"seed{seed}"
                task_for(recipe_from_dict(recipe(student, seed, args.epochs, out, args.kd_weight,
                                                 args.temperature, args.unlabeled,
                                                 args.learning_rate, args.unlabeled_sources,
                                                 args.augment_variants))).run()
    rows, json_rows, summary = [], [], {}
    for student in args.students:
        # read the reports back from disk, so a partial benchmark can be summarised (--summarize)
        paths = [Path(args.out) / student / f"seed{seed}" / "report.json" for seed in args.seeds]
        per_seed = [json.loads(p.read_text()) for p in paths if p.exists()]
        if not per_seed:
            continue
        seeds_done = [r["recipe"]["train"]["seed"] for r in per_seed]

        def m(role, key, per_seed=per_seed):
            return [r["models"][role][key] for r in per_seed]

        t_acc, kd_acc, base_acc = (m("teacher", "accuracy"), m("student_kd", "accuracy"),
                                   m("student_no_kd", "accuracy"))
        retained = [k / t for k, t in zip(kd_acc, t_acc)]
        sp1 = [r["summary"].get("speedup_b1") for r in per_seed]
        sp32 = [r["summary"].get("speedup_b32") for r in per_seed]
        wins = sum(k > b for k, b in zip(kd_acc, base_acc))
        pooled = pooled_comparison(per_seed)
        json_rows += [{"student": student, "model": role, "seed": seed,
                       "accuracy": r["models"][role]["accuracy"],
                       "macro_f1": r["models"][role].get("macro_f1")}
                      for seed, r in zip(seeds_done, per_seed, strict=True)
                      for role in ("teacher", "student_kd", "student_no_kd")]
        summary[student] = {
            "teacher_accuracy": statistics.mean(t_acc),
            "kd_accuracy_mean": statistics.mean(kd_acc),
            "kd_accuracy_std": statistics.stdev(kd_acc) if len(kd_acc) > 1 else None,
            "no_kd_accuracy_mean": statistics.mean(base_acc),
            "no_kd_accuracy_std": statistics.stdev(base_acc) if len(base_acc) > 1 else None,
            "retention": statistics.mean(kd_acc) / statistics.mean(t_acc),
            "seeds": len(per_seed),
            "speedup_b1": statistics.mean(sp1),
            "speedup_b32": statistics.mean(sp32),
            "kd_vs_no_kd_p": pooled["p"],
            "kd_vs_no_kd_per_seed_p": pooled["per_seed_p"],
            "kd_gain_ci95_over_seeds": pooled["gain"]["ci95"],
            "kd_rows_seen": per_seed[0]["training"].get("student", {}).get("rows"),
            "no_kd_rows_seen": per_seed[0]["training"].get("student_no_kd", {}).get("rows"),
        }
        rows.append(
            f"| {student} | {seeds_done} | {mean_std(t_acc)} | {mean_std(kd_acc)} | {mean_std(base_acc)} | "
            f"{100 * statistics.mean(retained):.1f}% | "
            f"{statistics.mean(kd_acc) - statistics.mean(base_acc):+.4f} ({wins}/{len(kd_acc)} seeds) | "
            f"{statistics.mean(sp1):.1f}x | {statistics.mean(sp32):.1f}x | "
            f"{per_seed[0]['summary']['size_ratio']:.1f}x | "
            f"{statistics.mean(m('student_kd', 'teacher_agreement')):.3f} |"
        )
    header = ("| student | seeds | teacher acc | KD student acc | no-KD student acc | KD/teacher | "
              "KD - no-KD (KD wins) | speed-up b1 | speed-up b32 | fewer params | agreement |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    body = ("Teacher all-mpnet-base-v2 fine-tuned 1 epoch (lr 2e-5, batch 32, length 64) on the "
            "movie-snippet train split (ASSETS.md split: test 2,114 rows, stratified, random_state 0; "
            f"validation 10% of train). Students: {args.epochs} epoch(s), batch 32, "
            f"lr {args.learning_rate:g}, losses {args.kd_weight} kd (T={args.temperature}) + "
            f"{1 - args.kd_weight:.2f} ce from a dense fp32 "
            "store; the no-KD student has the same init and number of steps, labels only"
            + (f"; the KD student also sees up to {args.unlabeled:,} sentences of packaged:english_text ("
               + (f"sources: {', '.join(args.unlabeled_sources)}" if args.unlabeled_sources
                  else "all packaged English text")
               + ", held-out texts removed) that only the teacher labelled (rows seen: the report's"
               " training block)" if args.unlabeled else "")
            + (f"; plus {augment_description(args.augment_variants)}, labelled by the teacher, for the KD "
               "student" if args.augment_variants else "")
            + ". Mean ± std over the "
            "seeds listed; latency measured in the same process.\n\n" + header + "\n" + "\n".join(rows))
    append_results("Text classification: teacher vs KD vs no-KD (bench/text_classification.py)", body)
    if args.merge:
        json_rows, summary = merged_with_earlier("text_classification", json_rows, summary, key="student")
    write_json("text_classification", args.seeds, json_rows, summary)


if __name__ == "__main__":
    main()
