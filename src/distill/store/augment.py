"""The TinyViT store: the teacher's top-k probabilities on each *augmented view*, kept with the view's seed.

Fast distillation (TinyViT, METHODS.md 3.4): for every epoch ``e`` and example ``i`` the teacher sees one
augmented view, made by :class:`distill.data.images.Augment` from the seed ``view_seed(base, e, i)``. The
store keeps, per (epoch, example), that seed and the teacher's k largest probabilities with their class ids;
when the student trains, it reads the seed back, rebuilds the identical view (augmentation is a pure function
of the image and the seed) and learns from the stored probabilities. The teacher never runs during training.

Layout, one folder ``<root>/<key>/``::

    epoch-00000.npz    seeds (N,) uint32, probs (N, k) float16 (descending), classes (N, k) uint8|int16
    epoch-00000.json   sidecar: sha256 of the .npz, rows, k
    ...
    manifest.json      written last: key, epochs, examples, k, classes, augmentation, base seed

Each epoch file is written atomically and checked against its sidecar, so a killed build resumes at epoch
granularity. Cost per image per epoch: 4 bytes of seed + k * (2 + 1) bytes (k * (2 + 2) beyond 256 classes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distill.data.images import Augment, view_seed
from distill.files import atomic_write_bytes
from distill.outputs import ModelOutputs, SparseLogits
from distill.store.spec import StoreError

MANIFEST = "manifest.json"
FORMAT = "augmented-views-1"


def _epoch_stem(e: int) -> str:
    return f"epoch-{e:05d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def augmented_store_key(**parts: Any) -> str:
    """A key naming everything that changes the store's bytes (teacher, data, augmentation, epochs, k,
    seed)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _epoch_ok(path: Path, e: int, n: int, k: int) -> bool:
    npz, side = path / f"{_epoch_stem(e)}.npz", path / f"{_epoch_stem(e)}.json"
    if not npz.exists() or not side.exists():
        return False
    try:
        meta = json.loads(side.read_text())
        return (meta.get("rows") == n and meta.get("k") == k
                and meta.get("sha256") == _sha256(npz.read_bytes()))
    except (OSError, ValueError):
        return False


@torch.no_grad()
def build_augmented_store(
    root: str | Path,
    key: str,
    images: torch.Tensor,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    augment: Augment,
    epochs: int,
    topk: int,
    base_seed: int,
    batch_size: int = 256,
    meta: dict[str, Any] | None = None,
    log: Callable[[str], Any] = print,
) -> Path:
    """Run ``teacher`` (images (B, C, H, W) -> logits (B, C)) once per epoch on each example's augmented view
    and keep the view seeds and top-``topk`` probabilities (``topk`` 0 or >= classes keeps every class).
    Epoch files already on disk and intact are reused."""
    if epochs < 1:
        raise ValueError(f"epochs: {epochs!r}; store at least one epoch of views")
    path = Path(root).expanduser() / key
    path.mkdir(parents=True, exist_ok=True)
    n = int(images.shape[0])
    num_classes = k = None
    done = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).exists() else None
    if done is not None:
        num_classes, k = done["num_classes"], done["k"]
        if done.get("epochs") == epochs and all(_epoch_ok(path, e, n, k) for e in range(epochs)):
            return path
        (path / MANIFEST).unlink(missing_ok=True)
    for e in range(epochs):
        if k is not None and _epoch_ok(path, e, n, k):
            continue
        seeds = view_seed(base_seed, e, np.arange(n))
        probs_parts, class_parts = [], []
        for start in range(0, n, batch_size):
            view = augment(images[start:start + batch_size], seeds[start:start + batch_size])
            p = torch.softmax(teacher(view).float(), dim=-1)
            if num_classes is None:
                num_classes = int(p.shape[-1])
                k = num_classes if topk <= 0 or topk >= num_classes else int(topk)
            vals, idx = p.topk(k, dim=-1)
            probs_parts.append(vals.to(torch.float16).cpu().numpy())
            class_parts.append(idx.cpu().numpy().astype(np.uint8 if num_classes <= 256 else np.int16))
        buf = io.BytesIO()
        np.savez(buf, seeds=seeds.astype(np.uint32), probs=np.concatenate(probs_parts),
                 classes=np.concatenate(class_parts))
        data = buf.getvalue()
        atomic_write_bytes(path / f"{_epoch_stem(e)}.npz", data)
        atomic_write_bytes(path / f"{_epoch_stem(e)}.json",
                      json.dumps({"rows": n, "k": k, "sha256": _sha256(data)}).encode())
        log(f"store {key}: epoch {e + 1}/{epochs} of teacher views written")
    manifest = {"format": FORMAT, "key": key, "epochs": epochs, "examples": n, "k": k,
                "num_classes": num_classes, "augment": dataclasses.asdict(augment), "base_seed": base_seed,
                "meta": dict(meta or {})}
    atomic_write_bytes(path / MANIFEST, json.dumps(manifest, indent=2).encode())
    return path


class AugmentedStore:
    """Reads a store written by :func:`build_augmented_store`."""

    def __init__(self, path: Path, manifest: dict[str, Any], mode: str = "spread"):
        self.path, self.manifest, self.mode = path, manifest, mode
        self._epochs: dict[int, dict[str, np.ndarray]] = {}

    @classmethod
    def open(cls, path: str | Path, mode: str = "spread") -> "AugmentedStore":
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise StoreError(f"{path} is not a finished augmented-view store (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        return cls(path, manifest, mode)

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def epochs(self) -> int:
        return int(self.manifest["epochs"])

    @property
    def augment(self) -> Augment:
        return Augment(**self.manifest["augment"])

    def __len__(self) -> int:
        return int(self.manifest["examples"])

    def _epoch(self, e: int) -> dict[str, np.ndarray]:
        e = e % self.epochs  # training longer than the stored epochs replays them in order
        if e not in self._epochs:
            with np.load(self.path / f"{_epoch_stem(e)}.npz") as z:
                self._epochs[e] = {name: z[name] for name in z.files}
        return self._epochs[e]

    def seeds(self, epoch: int, indices: np.ndarray | list[int]) -> np.ndarray:
        return self._epoch(epoch)["seeds"][np.asarray(indices)].astype(np.int64)

    def fetch(self, epoch: int, indices: np.ndarray | list[int]) -> tuple[np.ndarray, ModelOutputs]:
        """The view seeds (B,) and the teacher's outputs on those views: top-k probabilities as SparseLogits
        (values are log-probabilities, so the log-normaliser is 0)."""
        rec, idx = self._epoch(epoch), np.asarray(indices)
        probs = torch.from_numpy(rec["probs"][idx].astype(np.float32))
        values = torch.log(probs.clamp_min(1e-12))
        logits = SparseLogits(values=values, indices=torch.from_numpy(rec["classes"][idx].astype(np.int64)),
                              logsumexp=torch.zeros(values.shape[0]),
                              num_classes=int(self.manifest["num_classes"]), mode=self.mode)
        return rec["seeds"][idx].astype(np.int64), ModelOutputs(logits=logits)

    def views(self, images: torch.Tensor, epoch: int, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Rebuild the augmented views the teacher saw (``images`` are the examples at ``indices``)."""
        return self.augment(images, self.seeds(epoch, indices))

    def bytes_per_image_per_epoch(self) -> float:
        """Raw payload (seed + top-k probabilities + class ids) per example per stored epoch."""
        k, c = int(self.manifest["k"]), int(self.manifest["num_classes"])
        return 4 + k * (2 + (1 if c <= 256 else 2))

    def info(self) -> dict[str, Any]:
        files = sum(f.stat().st_size for f in self.path.glob("epoch-*.npz"))
        n, e = len(self), self.epochs
        return {"epochs": e, "examples": n, "k": self.manifest["k"],
                "num_classes": self.manifest["num_classes"],
                "payload_bytes_per_image_per_epoch": self.bytes_per_image_per_epoch(),
                "disk_bytes_per_image_per_epoch": files / max(n * e, 1), "disk_bytes": files}


def describe_augmented_store(store: AugmentedStore) -> str:
    """A few lines on what an augmented-view store holds (``distill cache`` / ``--info`` on image recipes)."""
    info = store.info()
    return "\n".join([
        f"key       {store.key}",
        f"path      {store.path}",
        f"images    {info['examples']:,} x {info['epochs']} epoch(s) of augmented views",
        f"kept      per view: its seed and the teacher's top-{info['k']} of {info['num_classes']} "
        "probabilities",
        f"size      {info['disk_bytes'] / 2**20:.2f} MiB "
        f"({info['disk_bytes_per_image_per_epoch']:.1f} bytes per image per epoch on disk)",
    ])
