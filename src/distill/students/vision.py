"""Image classifiers for ``task: image-classification``: small CNNs, and a wrapper that makes any classifier
speak :class:`~distill.outputs.ModelOutputs` (logits plus named feature maps for fitnet / at).

A model is named in a recipe by one of:

- ``packaged:cnn-teacher`` / ``packaged:cnn-small`` / ``packaged:cnn-tiny``: :class:`SmallCNN` widths
  (32, 64, 128) / (16, 32, 64) / (8, 16, 32), three conv-BN-ReLU stages ``stage1..stage3``;
- ``module.path:callable``: any function returning an ``nn.Module`` image classifier; it is called with
  ``num_classes`` and ``in_channels`` keyword arguments (images in, logits (B, C) out);
- ``hf:<id or folder>``: ``transformers.AutoModelForImageClassification`` (its ``.logits`` are used);
- ``timm:<name>``: ``timm.create_model`` (needs the optional ``vision`` extra: ``pip install timm``);
- a folder written by :func:`save_image_model` (a trained teacher or student).

Feature maps: :class:`SmallCNN` always returns its stage outputs; for any other model the wrapper hooks the
modules a loss names (``layer_map: [[features.3, layer2]]``).
"""

from __future__ import annotations

import importlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from distill._dataclass_io import RecipeError
from distill.outputs import ModelOutputs
from distill.packaged import PACKAGED_IMAGE_MODELS

CONFIG_NAME = "image_model.json"
WEIGHTS_NAME = "model.safetensors"


class SmallCNN(nn.Module):
    """Three stages of (conv3x3-BN-ReLU) x 2 with 2x2 max-pooling after stages 1 and 2, global average
    pooling and a linear head. Works on any image size >= 4 px."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.widths = tuple(widths)
        stages, c = [], in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [
                nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
            c = w
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[f"stage{i + 1}"] = x
        logits = self.head(x.mean(dim=(2, 3)))
        return (logits, feats) if return_features else logits


class ImageClassifier(nn.Module):
    """Wraps an image classifier so ``forward(pixel_values=...)`` returns :class:`ModelOutputs` with
    ``logits`` and, when asked, the named ``feature_maps``."""

    def __init__(self, net: nn.Module, source: str, num_classes: int, in_channels: int):
        super().__init__()
        self.net = net
        self.source, self.num_classes, self.in_channels = source, num_classes, in_channels
        self.feature_layers: list[str] | None = None  # module names to hook (None: SmallCNN stages / none)

    def _logits(self, out: Any) -> torch.Tensor:
        return out.logits if hasattr(out, "logits") else out

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_features: bool = False, **_: Any) -> ModelOutputs:
        if isinstance(self.net, SmallCNN) and not self.feature_layers:
            if output_features:
                logits, feats = self.net(pixel_values, return_features=True)
                return ModelOutputs(logits=logits, feature_maps=feats)
            return ModelOutputs(logits=self.net(pixel_values))
        if output_features and self.feature_layers:
            with hooked(self.net, self.feature_layers) as feats:
                logits = self._logits(self.net(pixel_values))
            return ModelOutputs(logits=logits, feature_maps=dict(feats))
        return ModelOutputs(logits=self._logits(self.net(pixel_values)))


@contextmanager
def hooked(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the outputs of the named sub-modules during the forward passes inside the block."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise RecipeError(f"losses.layer_map: the model has no module {missing[0]!r}; some of its modules: "
                          f"{', '.join(list(modules)[1:12])}")
    found: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        def hook(_m, _i, out, n=n):
            found[n] = out[0] if isinstance(out, tuple) else out
        handles.append(modules[n].register_forward_hook(hook))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def _build_net(source: str, num_classes: int, in_channels: int) -> nn.Module:
    if source.startswith("packaged:"):
        name = source.split(":", 1)[1]
        if name not in PACKAGED_IMAGE_MODELS:
            raise RecipeError(f"model: unknown packaged image model {name!r}; "
                              f"choose {', '.join(PACKAGED_IMAGE_MODELS)}")
        return SmallCNN(num_classes, in_channels, PACKAGED_IMAGE_MODELS[name])
    if source.startswith("hf:"):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(
            source[3:], num_labels=num_classes, ignore_mismatched_sizes=True)
    if source.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise RecipeError("model: timm models need the optional extra: `pip install timm` "
                              "(not part of the default install)") from None
        return timm.create_model(source[5:], num_classes=num_classes, in_chans=in_channels)
    if ":" in source and not Path(source).exists():
        module, _, attr = source.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise RecipeError(f"model: cannot import {source!r}: {exc}") from None
        net = fn(num_classes=num_classes, in_channels=in_channels)
        if not isinstance(net, nn.Module):
            raise RecipeError(f"model: {source!r} returned a {type(net).__name__}, not an nn.Module")
        return net
    raise RecipeError(f"model: {source!r} is not packaged:NAME, module:callable, hf:ID, timm:NAME or a saved "
                      "image-model folder")


def build_image_model(source: str, num_classes: int, in_channels: int) -> ImageClassifier:
    """A fresh (or, for a saved folder / hf / timm, pre-trained) model wrapped in :class:`ImageClassifier`."""
    if Path(source).is_dir() and (Path(source) / CONFIG_NAME).exists():
        return load_image_model(source)
    return ImageClassifier(_build_net(source, num_classes, in_channels), source, num_classes, in_channels)


def save_image_model(model: ImageClassifier, folder: str | Path, labels: list[str] | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps({
        "source": model.source, "num_classes": model.num_classes, "in_channels": model.in_channels,
        "labels": labels}, indent=2))
    return folder


def load_image_model(folder: str | Path) -> ImageClassifier:
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    net = _build_net(cfg["source"], cfg["num_classes"], cfg["in_channels"])
    net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    return ImageClassifier(net, cfg["source"], cfg["num_classes"], cfg["in_channels"])
