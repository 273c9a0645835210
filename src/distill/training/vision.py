"""The training loop of image runs: a plain epoch loop, because the TinyViT store is indexed by epoch.

At epoch ``e`` example ``i`` is seen as the augmented view with seed ``view_seed(seed, e, i)`` -- or, when a
:class:`~distill.store.augment.AugmentedStore` is given, with the seed kept in the store, so the student sees
exactly the view the teacher saw and learns from the teacher's stored probabilities for it. Without a store
an online teacher (if any loss needs one) runs on the same view. The same loop trains the teacher (``ce``).

Resume: given ``checkpoint`` (a file path) and ``checkpoint_key`` (the stage's fingerprint), the loop writes
the model, the loss modules (projectors), the optimiser, the schedule, the finished epoch count and the RNG
states there at the end of every epoch -- to a temporary file first, then ``os.replace``, so a kill mid-write
leaves the previous checkpoint intact. A later call with the same file and key starts at the next epoch and
ends with the very weights an uninterrupted run gives (batch order and views are pure functions of
(seed, epoch), and the torch RNG state is restored). A checkpoint with another key is ignored and replaced.
The caller deletes the file once the stage's result is saved (:func:`remove_checkpoint`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data.images import Augment, ImageSet, view_seed
from distill.files import atomic_save
from distill.outputs import ModelOutputs
from distill.training.distiller import Distiller


def _feature_side(distiller: Distiller, side: str) -> bool:
    return distiller.needs("feature_maps", side)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``."""
    atomic_save(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path | None, key: str | None) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when it exists and was written under ``key``; None otherwise."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 -- a damaged file is as good as none (the write is atomic, so rare)
        return None
    return state if state.get("key") == key else None


def remove_checkpoint(path: Path | None) -> None:
    if path is not None and Path(path).exists():
        Path(path).unlink()


# the default view settings; Augment is a frozen dataclass, so one shared instance is safe
_DEFAULT_AUGMENT = Augment()


def train_image_model(
    model: torch.nn.Module,
    distiller: Distiller,
    data: ImageSet,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    seed: int = 0,
    augment: Augment = _DEFAULT_AUGMENT,
    teacher: torch.nn.Module | None = None,
    store: Any | None = None,
    labels_known: bool = True,
    log: Callable[[str], Any] | None = None,
    checkpoint: Path | str | None = None,
    checkpoint_key: str | None = None,
    on_epoch_end: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` (an :class:`~distill.students.vision.ImageClassifier`) in place; AdamW with a cosine
    schedule. Returns a summary (seconds, steps, seconds per epoch, last loss parts, the epoch resumed from).

    ``checkpoint`` / ``checkpoint_key``: see the module notes. ``on_epoch_end(epochs_done)`` is called after
    each epoch's checkpoint is written (progress reports; tests use it to interrupt a run)."""
    torch.manual_seed(seed)
    n = len(data)
    need_teacher = distiller.needs_teacher
    if need_teacher and store is None and teacher is None:
        raise ValueError("the losses read teacher outputs: give a store or an online teacher")
    s_feats, t_feats = _feature_side(distiller, "student"), _feature_side(distiller, "teacher")
    if store is not None and t_feats:
        raise ValueError("the augmented-view store keeps probabilities only; "
                         "feature losses need an online teacher")
    labels = data.labels if labels_known else torch.full_like(data.labels, -100)
    if store is not None and hasattr(store, "bind"):  # several teachers: combined at the losses' temperature
        store = store.bind(distiller)
    if teacher is not None:
        teacher.eval()

    def step_outputs(idx: np.ndarray,
                     epoch: int) -> tuple[ModelOutputs, ModelOutputs, dict[str, torch.Tensor]]:
        if store is not None and need_teacher:
            seeds, t_out = store.fetch(epoch, idx)
        else:
            seeds, t_out = view_seed(seed, epoch, idx), ModelOutputs()
        x = augment(data.images[torch.as_tensor(idx)], seeds)
        if need_teacher and store is None:
            with torch.no_grad():
                t_out = teacher(pixel_values=x, output_features=t_feats)
        s_out = model(pixel_values=x, output_features=s_feats)
        return s_out, t_out, {"labels": labels[torch.as_tensor(idx)]}

    # projectors (fitnet) are built on first use: run one batch before the optimiser is made
    if s_feats and t_feats:
        with torch.no_grad():
            s_out, t_out, b = step_outputs(np.arange(min(batch_size, n)), 0)
            distiller(s_out, t_out, b)
    params = list(model.parameters()) + list(distiller.parameters())
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(epochs * steps_per_epoch, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    start_epoch, parts, epoch_times, history = 0, {}, [], []
    state = load_checkpoint(ckpt_path, checkpoint_key)
    if state is not None and state["epoch"] <= epochs:
        model.load_state_dict(state["model"])
        distiller.load_state_dict(state["distiller"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_epoch, parts, epoch_times = state["epoch"], state["last_loss"], list(state["epoch_times"])
        history = list(state["log_history"])
        if log:
            log(f"resuming at epoch {start_epoch + 1}/{epochs} from {ckpt_path}")
    model.train()
    distiller.train()
    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        te = time.perf_counter()
        order = np.random.default_rng([seed, epoch]).permutation(n)
        sums: dict[str, float] = {}
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            s_out, t_out, b = step_outputs(idx, epoch)
            loss, parts = distiller(s_out, t_out, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in ([("loss", float(loss.detach()))]
                         + [(f"loss/{k}", float(v)) for k, v in parts.items()]):
                sums[k] = sums.get(k, 0.0) + v
        epoch_times.append(time.perf_counter() - te)
        parts = {k: float(v) for k, v in parts.items()}
        # epoch means, in the shape of the Trainer's log history (the HTML report draws them)
        history.append({"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                        **{k: v / steps_per_epoch for k, v in sums.items()}})
        if log:
            log(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()))
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, {
                "key": checkpoint_key, "epoch": epoch + 1, "model": model.state_dict(),
                "distiller": distiller.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": _rng_state(), "last_loss": parts,
                "epoch_times": epoch_times, "log_history": history})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    model.eval()
    return {"seconds": time.perf_counter() - t0, "steps": epochs * steps_per_epoch,
            "seconds_per_epoch": float(np.mean(epoch_times)) if epoch_times else 0.0, "last_loss": parts,
            "resumed_from_epoch": start_epoch, "log_history": history}


@torch.no_grad()
def predict_image_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(pixel_values=images[i:i + batch_size]).logits.float()
                      for i in range(0, images.shape[0], batch_size)])
