"""Benchmark (issue 5): which intermediate-layer signal adds to logit KD, on movie-review snippets.

Teacher: the `distill demo` teacher, all-MiniLM-L6-v2 fine-tuned as src/distill/recipes/demo_sentiment.yaml
says (since 2026-11-30: on its 10% labelled share, 761 rows; before, 1 epoch on every training row). It is
fine-tuned through that recipe's `teacher.finetune`, so the copy in runs/demo/teacher is reused when its
fingerprint (model, settings, training rows) matches, and built there once otherwise; every configuration
then loads it from that folder.
Student: 3 of the teacher's 6 layers, [1, 3, 5] (0-based), i.e. hidden_states 2, 4, 6: exactly the layers
the default `uniform` layer map pairs them with, so inherited weights and matched layers agree at the start.
Data: the ASSETS.md split (test 2,114 rows, stratified, random_state 0; validation 10% of train).

Configurations (same init, data, epochs, batch 32, lr 1e-4; teacher outputs from the store, float16):

    no_kd            ce
    kd               0.5 kd (T = 2) + 0.5 ce                        <- the reference for the deltas
    pkd              kd + 100 * hidden (pooling cls, normalize: PKD-Skip; 100 is from PKD's beta grid)
    attention_mse    kd + 0.1 * attention_mse (TinyBERT, unnormalised scores, uniform map)
    minilm           kd + 0.5 * minilm (last layer attention + value relations)
    minilm_v2        kd + 1.0 * minilm_v2 (48 relation heads, last layers)
    trg              kd + 0.1 * trg (defaults; [unverified] constants)
    affinity         kd + 0.2 * affinity (in-batch similarity KL of mean-pooled sentence vectors)
    crd              kd + 0.1 * crd (queue-based contrastive)

The auxiliary weights put each extra term at about the size of the KD term (0.4) at step 0, measured on one
batch of this student and teacher (attention_mse 3.5, minilm 1.05, minilm_v2 0.44, trg 4.3 (its InfoNCE),
affinity 2.0, crd 3.7, normalised [CLS] MSE 0.0013); no weight was tuned on test accuracy.

Prints and appends to bench/RESULTS.md: test accuracy mean +- std over the seeds, the delta against logit KD,
and training seconds per epoch.

    python bench/methods.py --seeds 0 1 2                      # full run
    python bench/methods.py --train-rows 64 --epochs 0.1 --seeds 0 --configs kd minilm_v2 \\
        --out /tmp/bench_methods --no-append                   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_results, augment_description, mean_std, write_json

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "distill" / "recipes" / "demo_sentiment.yaml"
STUDENT_LAYERS = [1, 3, 5]
KD = [{"name": "kd", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}]
CONFIGS: dict[str, list[dict]] = {
    "no_kd": [{"name": "ce", "weight": 1.0}],
    "kd": KD,
    "pkd": KD + [{"name": "hidden", "weight": 100.0, "pooling": "cls", "normalize": True,
                  "layer_map": "uniform"}],
    "attention_mse": KD + [{"name": "attention_mse", "weight": 0.1, "on": "scores", "layer_map": "uniform"}],
    "minilm": KD + [{"name": "minilm", "weight": 0.5}],
    "minilm_v2": KD + [{"name": "minilm_v2", "weight": 1.0, "relation_heads": 48}],
    "trg": KD + [{"name": "trg", "weight": 0.1}],
    "affinity": KD + [{"name": "affinity", "weight": 0.2}],
    "crd": KD + [{"name": "crd", "weight": 0.1}],
}


def demo_teacher(log=print) -> Path:
    """The demo recipe's fine-tuned teacher: reused from runs/demo/teacher by fingerprint, else built
    there."""
    import yaml

    from distill.config import recipe_from_dict
    from distill.data import load_splits
    from distill.teachers import finetune_teacher

    data = yaml.safe_load(DEMO.read_text())
    data["output_dir"] = str(REPO / data["output_dir"])  # runs/demo, wherever the script is started from
    recipe = recipe_from_dict(data)
    return finetune_teacher(recipe, load_splits(recipe.data), log=log)


def demo_finetune() -> str:
    """How the demo recipe fine-tunes its teacher, in words (for the RESULTS entry)."""
    import yaml

    data = yaml.safe_load(DEMO.read_text())
    ft, share = data["teacher"]["finetune"], data["data"].get("labeled_fraction")
    rows = f"the {share:.0%} labelled share of" if share else "all of"
    return f"{ft['epochs']} epochs at lr {ft['learning_rate']:g} on {rows} the movie-snippet train split"


def recipe(config: str, teacher: Path, seed: int, epochs: float, train_rows: int | None, out: Path,
           labelled_fraction: float | None = None, variants: int = 0) -> dict:
    """One configuration's run. ``labelled_fraction`` / ``variants`` (the few-labels, augmented regime): only
    that stratified share of the training rows keeps its label, the rest is text the teacher labels, plus
    ``variants`` word-replaced copies of each labelled row; the weights are then fixed (no selection stage)
    and the kd configuration also trains the no-KD baseline (labelled rows only, the same steps)."""
    regime = labelled_fraction is not None or variants > 0
    return {
        "output_dir": str(out / config / f"seed{seed}"),
        "teacher": {"model": str(teacher)},
        "student": {"from_teacher": True, "layers": STUDENT_LAYERS},
        "data": {"source": "packaged", "name": "movie_snippets", "max_length": 64, "test_fraction": 0.2,
                 "split_seed": 0, "max_train_examples": train_rows, "labeled_fraction": labelled_fraction,
                 "augment": {"variants": variants} if variants else None},
        "losses": CONFIGS[config],
        "store": {"topk": 0, "dtype": "float16", "dir": str(out / "stores")},
        "train": {"epochs": epochs, "batch_size": 32, "learning_rate": 1e-4, "seed": seed,
                  "logging_steps": 50, "save_steps": 1000, "eval_batch_size": 64},
        "eval": {"baseline": regime and config == "kd", "latency_batch_sizes": []},
        "export": {"model_card": False},
        **({"select": {"enabled": False}} if regime else {}),
    }


def available(configs: list[str]) -> list[str]:
    from distill.losses import LOSSES

    keep = []
    for c in configs:
        missing = [spec["name"] for spec in CONFIGS[c] if spec["name"] not in LOSSES]
        if missing:
            print(f"[bench] skipping {c}: loss {missing} is not registered")
        else:
            keep.append(c)
    return keep


def train_seconds_per_epoch(info: dict) -> float:
    """Wall seconds of the student's training per epoch actually run, validation passes excluded."""
    history = info.get("log_history", [])
    evaluating = sum(h.get("eval_runtime", 0.0) for h in history)
    epochs = max((h["epoch"] for h in history if "epoch" in h), default=0.0)
    return (info["seconds"] - evaluating) / epochs if epochs else float("nan")


def _correct(run: Path) -> list[bool]:
    """Per test example: did this run's distilled student get it right (predictions.jsonl)."""
    lines = (run / "predictions.jsonl").read_text().splitlines()
    return [r["student_kd"]["pred"] == r["label"] for r in map(json.loads, lines)]


def pooled_vs_kd(config: str, seeds: list[int], out: Path) -> float | None:
    """Exact McNemar of ``config`` against logit KD on the (seed, test example) pairs pooled over the seeds
    (the same seed's runs share init and data order)."""
    from distill.evaluation.significance import mcnemar_exact

    a, b = [], []
    for seed in seeds:
        runs = [out / c / f"seed{seed}" for c in (config, "kd")]
        if all((r / "predictions.jsonl").exists() for r in runs):
            a += _correct(runs[0])
            b += _correct(runs[1])
    return mcnemar_exact(a, b)["p"] if a else None


def summarise(configs: list[str], seeds: list[int], out: Path) -> tuple[str, float | None, list, dict]:
    """The RESULTS table, the teacher's accuracy, and the rows (one per config and seed) and summary (one
    entry per config) of bench/results/methods.json."""
    from distill.evaluation.significance import mean_interval

    rows, teacher_acc, data_rows, summary = [], None, [], {}
    kd_runs = [json.loads(p.read_text()) for p in (out / "kd" / f"seed{s}" / "report.json" for s in seeds)
               if p.exists()]
    kd_acc = [r["models"]["student_kd"]["accuracy"] for r in kd_runs]
    if kd_runs and all("student_no_kd" in r["models"] for r in kd_runs):
        # the few-labels regime: the kd runs also trained the no-KD baseline (labelled rows, same steps)
        from _common import pooled_comparison

        base = [r["models"]["student_no_kd"]["accuracy"] for r in kd_runs]
        kd_mean = statistics.mean(kd_acc)
        per_epoch = [train_seconds_per_epoch(r["training"]["student_no_kd"]) for r in kd_runs]
        pooled = pooled_comparison(kd_runs)
        data_rows += [{"model": "no_kd_baseline", "seed": r["recipe"]["train"]["seed"],
                       "accuracy": r["models"]["student_no_kd"]["accuracy"]} for r in kd_runs]
        summary["no_kd_baseline"] = {"accuracy_mean": statistics.mean(base),
                                     "accuracy_std": mean_interval(base)["std"],
                                     "vs_kd": statistics.mean(base) - kd_mean, "p_vs_kd": pooled["p"],
                                     "seeds": len(base)}
        rows.append(f"| no-KD baseline (kd runs) | 1 ce, labelled rows only | {seeds[:len(kd_runs)]} | "
                    f"{mean_std(base)} | {statistics.mean(base) - kd_mean:+.4f} | "
                    f"{pooled['p']:.2g} | {statistics.mean(per_epoch):.0f} |")
    for config in configs:
        reports = [json.loads(p.read_text())
                   for p in (out / config / f"seed{s}" / "report.json" for s in seeds) if p.exists()]
        if not reports:
            continue
        acc = [r["models"]["student_kd"]["accuracy"] for r in reports]
        teacher_acc = reports[0]["models"]["teacher"]["accuracy"]
        per_epoch = [train_seconds_per_epoch(r["training"]["student"]) for r in reports]
        delta = f"{statistics.mean(acc) - statistics.mean(kd_acc):+.4f}" if kd_acc and config != "kd" else "-"
        losses = " + ".join(f"{spec['weight']:g} {spec['name']}" for spec in CONFIGS[config])
        p = None if config == "kd" else pooled_vs_kd(config, seeds, out)
        run_seeds = [r["recipe"]["train"]["seed"] for r in reports]
        data_rows += [{"model": config, "seed": s, "accuracy": a}
                      for s, a in zip(run_seeds, acc, strict=True)]
        summary[config] = {"losses": losses, "accuracy_mean": statistics.mean(acc),
                           "accuracy_std": mean_interval(acc)["std"],
                           "vs_kd": None if config == "kd" or not kd_acc
                           else statistics.mean(acc) - statistics.mean(kd_acc),
                           "p_vs_kd": p, "train_seconds_per_epoch": statistics.mean(per_epoch),
                           "seeds": len(acc)}
        rows.append(f"| {config} | {losses} | {run_seeds} | {mean_std(acc)} | {delta} | "
                    f"{'-' if p is None else f'{p:.2g}'} | {statistics.mean(per_epoch):.0f} |")
    header = ("| config | losses | seeds | test accuracy | vs logit KD | p vs logit KD | train s/epoch |\n"
              "|---|---|---|---|---|---|---|")
    summary["teacher_accuracy"] = teacher_acc
    summary["p_test"] = "exact McNemar on (seed, test example) pairs pooled over the seeds"
    return header + "\n" + "\n".join(rows), teacher_acc, data_rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--epochs", type=float, default=2.0, help="student epochs (fractions allowed)")
    ap.add_argument("--train-rows", type=int, default=None,
                    help="cap on training rows (default: all, ~7,600)")
    ap.add_argument("--labelled-fraction", type=float, default=None,
                    help="few-labels regime: the stratified share of training rows that keeps its label (the "
                         "demo's 0.1 matches the teacher's own labelled rows); the rest is teacher-labelled "
                         "text")
    ap.add_argument("--augment-variants", type=int, default=0,
                    help="data.augment variants per labelled row (0: none)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_methods"))
    ap.add_argument("--no-append", action="store_true", help="print the table, do not append to RESULTS.md")
    ap.add_argument("--summarize", action="store_true", help="only summarise the reports already on disk")
    args = ap.parse_args()
    out = Path(args.out)
    configs = available(args.configs)

    if not args.summarize:
        from distill.config import recipe_from_dict
        from distill.tasks import task_for

        teacher = demo_teacher()
        for config in configs:
            for seed in args.seeds:
                task_for(recipe_from_dict(recipe(config, teacher, seed, args.epochs, args.train_rows,
                                                 out, args.labelled_fraction, args.augment_variants))).run()

    table, teacher_acc, data_rows, summary = summarise(configs, args.seeds, out)
    rows = "all (~7,600)" if args.train_rows is None else str(args.train_rows)
    if args.labelled_fraction is not None:
        rows += (f", of which a stratified {args.labelled_fraction:g} keep their label and the rest are text "
                 "the teacher labels")
    if args.augment_variants:
        rows += f", plus {augment_description(args.augment_variants)}"
    if args.labelled_fraction is not None or args.augment_variants:
        rows += "; fixed weights (no selection stage); the no-KD baseline trains on the labelled rows only, "
        rows += "for as many steps as the kd student"
    ft = demo_finetune()
    acc = teacher_acc if teacher_acc is None else f"{teacher_acc:.4f}"
    body = (f"Teacher: the demo teacher (all-MiniLM-L6-v2 fine-tuned {ft}), test accuracy {acc}. Student: "
            f"teacher layers {STUDENT_LAYERS} (3 of 6), {args.epochs:g} epoch(s), batch 32, lr 1e-4, max "
            f"length 64, training rows {rows}; teacher outputs from a float16 store. ASSETS.md split (test "
            f"2,114 rows). Test accuracy mean ± std over seeds {args.seeds}; 'vs logit KD' is the difference "
            "of means; 'p vs logit KD': exact McNemar on the (seed, test example) pairs pooled over the "
            "seeds (for the baseline row: against the kd student of the same runs); s/epoch is the "
            "student's training time per epoch (store reads included; store build and validation passes "
            "excluded).\n\n"
            f"{table}")
    if args.no_append:
        print(body)
    else:
        write_json("methods", args.seeds, data_rows, summary)
        append_results("Distillation signals on top of logit KD (bench/methods.py)", body)


if __name__ == "__main__":
    main()
