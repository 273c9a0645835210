"""What a teacher-output store keeps, and the on-disk layout every writer and reader agrees on.

A store is one folder ``<root>/<key>/`` (``key`` from :func:`distill.store.fingerprint.store_key`)::

    shard-00000.safetensors   tensors of examples [0, shard_size)
    shard-00000.json          sidecar: sha256, row range, token count, layout of that shard
    shard-00001.safetensors   ...
    manifest.json             written last, by rank 0, once every shard is on disk: the store is complete

Tensors in a shard (N examples, T valid tokens over them):

- ``logits`` (N, C) or (T, V) in ``dtype`` when dense;
- ``topk_values`` (N|T, k) ``dtype``, sorted descending; ``topk_indices`` (N|T, k) int32;
  ``logsumexp`` (N|T,) float32 when sparse: log-normaliser at T=1 of the full float32 logits with the kept k
  replaced by their stored values (equal to the plain one for float32 storage), so
  ``exp(topk_values - logsumexp)`` are exact probabilities and the missing mass is never negative;
- ``embeddings`` (N, D) ``dtype``;
- ``hidden_{layer}`` (T, H) ``dtype`` per kept layer;
- ``q_{layer}``, ``k_{layer}``, ``v_{layer}`` (T, heads, head_dim) ``dtype`` per kept ``qkv`` layer (1-based):
  the self-attention projections of each valid token, from which the losses rebuild attention maps and
  relations (a map itself would cost O(L^2) per example; attention probabilities are not stored);
- ``offsets`` (N+1,) int64 whenever a per-token field is kept: example i owns rows
  ``offsets[i]:offsets[i+1]`` of every per-token tensor (only tokens with attention_mask == 1 are kept).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from distill.store.codec import FORMAT as CODEC_FORMAT

CAPTURE_FIELDS: tuple[str, ...] = ("logits", "embeddings", "hidden_states", "qkv")
RECONSTRUCTIONS: tuple[str, ...] = ("spread", "topk")
CODECS: tuple[str, ...] = ("topk", "head3", "head4", "head8")
DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
MANIFEST_NAME = "manifest.json"


class StoreError(RuntimeError):
    """A store is missing, incomplete, corrupt or of another format version."""


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass(frozen=True)
class StoreSpec:
    """What the teacher's pass keeps on disk. Every field is part of the store key."""

    capture: tuple[str, ...] = ("logits",)
    """Teacher outputs to keep: any of ``logits``, ``embeddings``, ``hidden_states``, ``qkv``."""
    layers: tuple[int, ...] = ()
    """``hidden_states`` indices to keep (0 = embedding output, i = output of layer i)."""
    topk: int = 0
    """Logits kept per example (per token for LMs); 0 or >= the number of classes keeps them all."""
    dtype: str = "float16"
    """Storage precision of logits and features: ``float16``, ``bfloat16`` or ``float32``."""
    shard_size: int = 4096
    """Examples per shard file; a killed build resumes at shard granularity."""
    reconstruct: str = "spread"
    """How a top-k store becomes a distribution when read: ``spread`` (TinyViT) or ``topk``."""
    qkv_layers: tuple[int, ...] = ()
    """Layers (1-based) whose self-attention query/key/value projections to keep (``qkv`` in capture)."""
    codec: str = "topk"
    """How per-token LM logits are kept: ``topk`` (the ``topk`` largest, or all when ``topk`` is 0) or
    ``head3`` / ``head4`` / ``head8``: the input of the teacher's output layer at 3 / 4 / 8 bits per
    coordinate on average, decoded to all logits when read (:mod:`distill.store.codec`)."""

    def __post_init__(self) -> None:
        # Normalise so that equal content gives an equal spec (and key) whatever order the caller used;
        # recipes hand lists over, the dataclass is frozen, hence object.__setattr__.
        capture = tuple(self.capture) if not isinstance(self.capture, str) else (self.capture,)
        for item in capture:
            if item not in CAPTURE_FIELDS:
                raise ValueError(
                    f"store capture: {item!r} is not allowed; choose from {', '.join(CAPTURE_FIELDS)}"
                )
        if not capture:
            raise ValueError("store capture is empty; keep at least one of " + ", ".join(CAPTURE_FIELDS))
        object.__setattr__(self, "capture", tuple(f for f in CAPTURE_FIELDS if f in capture))
        layers = tuple(self.layers)
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"store layers: {layer!r} is not allowed; use hidden-state indices >= 0")
        object.__setattr__(self, "layers", tuple(sorted(set(layers))))
        if "hidden_states" in self.capture and not self.layers:
            raise ValueError(
                "store capture has 'hidden_states' but no layers; name the hidden-state indices to keep"
            )
        if self.layers and "hidden_states" not in self.capture:
            raise ValueError(f"store layers {list(self.layers)} given but 'hidden_states' is not in capture")
        qkv_layers = tuple(self.qkv_layers)
        for layer in qkv_layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
                raise ValueError(f"store qkv_layers: {layer!r} is not allowed; use layer numbers >= 1")
        object.__setattr__(self, "qkv_layers", tuple(sorted(set(qkv_layers))))
        if "qkv" in self.capture and not self.qkv_layers:
            raise ValueError("store capture has 'qkv' but no qkv_layers; name the layers (1-based) to keep")
        if self.qkv_layers and "qkv" not in self.capture:
            raise ValueError(f"store qkv_layers {list(self.qkv_layers)} given but 'qkv' is not in capture")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 0:
            raise ValueError(f"store topk: {self.topk!r} is not allowed; use 0 (keep all) or a positive k")
        if self.dtype not in DTYPES:
            raise ValueError(f"store dtype: {self.dtype!r} is not allowed; choose from {', '.join(DTYPES)}")
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size <= 0:
            raise ValueError(f"store shard_size: {self.shard_size!r} is not allowed; use a positive integer")
        if self.codec not in CODECS:
            raise ValueError(f"store codec: {self.codec!r} is not allowed; choose from {', '.join(CODECS)}")
        if self.codec != "topk":
            if "logits" not in self.capture:
                raise ValueError(f"store codec {self.codec!r} codes logits, but 'logits' is not in capture")
            if self.topk:
                raise ValueError(
                    f"store topk: {self.topk} has no meaning with codec {self.codec!r} "
                    "(it keeps every logit); set topk to 0, or use codec 'topk'"
                )
        if self.reconstruct not in RECONSTRUCTIONS:
            raise ValueError(
                f"store reconstruct: {self.reconstruct!r} is not allowed; "
                f"choose from {', '.join(RECONSTRUCTIONS)}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def is_sparse(self, num_classes: int) -> bool:
        """Top-k storage only pays off (and only loses information) when k is below the class count."""
        return 0 < self.topk < num_classes

    def to_dict(self) -> dict[str, Any]:
        out = {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)
        }
        if not out["qkv_layers"]:
            # added after format 1 shipped: left out when unused, so the keys (and sidecars) of stores
            # without Q/K/V stay what they were
            del out["qkv_layers"]
        if out["codec"] == "topk":
            del out["codec"]  # likewise added later: top-k stores keep their keys
        else:
            out["codec_format"] = CODEC_FORMAT  # a new codec format is a new store, never a misread one
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreSpec:
        data = dict(data)
        fmt = data.pop("codec_format", None)
        if data.get("codec", "topk") != "topk" and fmt != CODEC_FORMAT:
            raise ValueError(f"this store's head codec is format {fmt or 1}; this distill reads format "
                             f"{CODEC_FORMAT}: rebuild the store")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(
                f"unknown store spec fields {sorted(unknown)}; valid: {', '.join(sorted(names))}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def check_storable(distiller: Any) -> None:
    """The store keeps logits, embeddings, hidden states and Q/K/V projections; not attention matrices."""
    from distill._dataclass_io import RecipeError

    if distiller.needs("attentions", "teacher"):
        names = [n for n, m in zip(distiller.names, distiller.losses) if "attentions" in m.teacher_needs]
        raise RecipeError(
            f"losses: {', '.join(names)} read the teacher's attention matrices, which the teacher-output "
            "store does not keep (O(L^2) per example; it keeps the Q/K/V projections that attention_mse, "
            "minilm and minilm_v2 rebuild the maps from); set store.enabled: false to run the teacher every "
            "step"
        )


def spec_for_losses(cfg: Any, distiller: Any) -> StoreSpec:
    """What a store keeps for a recipe: its ``store.capture`` plus whatever the losses of ``distiller`` read
    from the teacher (only the hidden-state and Q/K/V layers they use)."""
    from distill._dataclass_io import RecipeError

    check_storable(distiller)
    capture = set(cfg.capture)
    for name in ("logits", "hidden_states", "embeddings", "qkv"):
        if distiller.needs(name, "teacher"):
            capture.add(name)
    layers = tuple(distiller.teacher_layers()) if "hidden_states" in capture else ()
    qkv_layers = distiller.qkv_layers("teacher") if "qkv" in capture else None
    if qkv_layers == "all":  # tasks build losses with the models' depths, so this means a bug
        raise RecipeError("losses: a loss reads the teacher's qkv but could not tell which layers; the store "
                          "cannot keep them (set store.enabled: false)")
    return StoreSpec(capture=tuple(sorted(capture)), layers=layers, topk=cfg.topk, dtype=cfg.dtype,
                     shard_size=cfg.shard_size, reconstruct=cfg.reconstruct,
                     qkv_layers=tuple(qkv_layers or ()))
