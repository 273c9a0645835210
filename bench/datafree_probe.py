"""Probe of the data-free (Genie-style) student on the MNIST bench split, without the rest of the bench.

Loads the cached bench teacher (bench/vision.py trains it once), synthesises images with
distill.teachers.datafree.synthesize, reports the teacher's label-hit rate, the final BN-statistics loss and
the spread of the teacher's predicted classes over the synthetic images, then distils packaged:cnn-tiny on
them with kd from the online teacher (as VisionRun.datafree_student does) and scores it on the real test
split.

    OMP_NUM_THREADS=1 python bench/datafree_probe.py --seeds 0 1 2 [--steps 200 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from distill.config import DataConfig, DataFreeConfig, LossConfig
from distill.data.images import Augment, ImageSet, load_image_splits
from distill.losses import LossContext, build_losses
from distill.students.vision import build_image_model, load_image_model
from distill.teachers.datafree import SynthesisSettings, synthesize
from distill.training import Distiller
from distill.training.vision import predict_image_logits, train_image_model

CACHE = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill")) / "bench"


def main() -> None:
    d = DataFreeConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--images", type=int, default=d.num_images)
    ap.add_argument("--batch", type=int, default=d.batch_size)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--lr", type=float, default=d.learning_rate)
    ap.add_argument("--zlr", type=float, default=d.latent_learning_rate)
    ap.add_argument("--ce", type=float, default=d.ce_weight)
    ap.add_argument("--tv", type=float, default=d.tv_weight)
    ap.add_argument("--l2", type=float, default=d.l2_weight)
    ap.add_argument("--first-bn", type=float, default=d.first_bn_weight)
    ap.add_argument("--gen-width", type=int, default=d.generator_width)
    ap.add_argument("--latent-dim", type=int, default=d.latent_dim)
    ap.add_argument("--jitter", type=int, default=d.jitter)
    ap.add_argument("--epochs", type=int, nargs="+", default=[d.epochs or 5],
                    help="student epochs over the synthetic images; several: one student each, same images")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--save", default=None, help="append one JSON line per seed to this file")
    ap.add_argument("--dump", default=None, help="save the synthetic images of each seed to DUMP-seedN.pt")
    ap.add_argument("--load", default=None,
                    help="skip synthesis: read images saved by --dump (LOAD-seedN.pt)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = load_image_splits(DataConfig(source="packaged", name="mnist", split_seed=0))
    teacher = load_image_model(CACHE / f"teacher-cnn-mnist-e{args.teacher_epochs}").eval()
    t_acc = float((predict_image_logits(teacher, splits.test.images).argmax(-1)
                   == splits.test.labels).float().mean())
    ctx = LossContext(num_classes=splits.num_labels)
    for seed in args.seeds:
        s = SynthesisSettings(num_images=args.images, batch_size=args.batch, steps=args.steps,
                              learning_rate=args.lr, latent_learning_rate=args.zlr,
                              latent_dim=args.latent_dim, generator_width=args.gen_width,
                              first_bn_weight=args.first_bn, ce_weight=args.ce, tv_weight=args.tv,
                              l2_weight=args.l2, jitter=args.jitter, seed=seed)
        if args.load:
            syn = torch.load(f"{args.load}-seed{seed}.pt")
        else:
            syn = synthesize(teacher, splits.shape, splits.num_labels, s)
            if args.dump:
                torch.save(syn, f"{args.dump}-seed{seed}.pt")
        pred = predict_image_logits(teacher, syn["images"]).argmax(-1)
        spread = np.bincount(pred.numpy(), minlength=splits.num_labels).tolist()
        data = ImageSet(syn["images"], torch.full((syn["images"].shape[0],), -100, dtype=torch.long))
        for epochs in args.epochs:
            torch.manual_seed(seed)
            student = build_image_model("packaged:cnn-tiny", splits.num_labels, splits.shape[0])
            distiller = Distiller(build_losses([LossConfig(name="kd", weight=0.7,
                                                           params={"temperature": args.temperature})], ctx))
            t0 = time.perf_counter()
            train_image_model(student, distiller, data, epochs=epochs, batch_size=64, learning_rate=3e-3,
                              weight_decay=1e-4, seed=seed, augment=Augment(pad=2, rotate=10.0),
                              teacher=teacher, labels_known=False)
            train_s = time.perf_counter() - t0
            acc = float((predict_image_logits(student, splits.test.images).argmax(-1) == splits.test.labels)
                        .float().mean())
            row = {"seed": seed, "accuracy": acc, "teacher_accuracy": t_acc,
                   "label_hit_rate": syn["label_hit_rate"], "bns_loss": float(np.mean(syn["bns_loss"])),
                   "synthesis_s": round(syn["seconds"], 1), "student_s": round(train_s, 1),
                   "pred_spread": spread,
                   "epochs": epochs, "temperature": args.temperature,
                   "settings": None if args.load else s.__dict__, "load": args.load}
            print(json.dumps(row), flush=True)
            if args.save:
                with open(args.save, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
