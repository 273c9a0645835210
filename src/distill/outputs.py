"""The one record every loss reads: what a model (or the teacher-output store) says about a batch.

Losses never hold a model. They receive a :class:`ModelOutputs` for the student and one for the teacher,
plus the batch, so the same loss works whether the teacher ran online or its outputs came from the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: half and bfloat16 outputs are upcast before a loss sums over them (their
    mantissa is too short for a sum over a vocabulary), float32 stays, and float64 is kept, so a model run in
    float64 (as the exactness tests do) gets float64 losses instead of being rounded to float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@dataclass
class SparseLogits:
    """Top-k teacher logits as kept by the store.

    ``values`` are the k largest logits (descending), ``indices`` their class / token ids and ``logsumexp``
    the log-normaliser of the *full* logit vector at temperature 1, so the probability of each kept class is
    exactly ``exp(values - logsumexp)`` and the mass outside the top-k is
    ``1 - sum(exp(values - logsumexp))``.
    """

    values: torch.Tensor  # (..., k) float
    indices: torch.Tensor  # (..., k) long
    logsumexp: torch.Tensor  # (...,) float
    num_classes: int
    mode: str = "spread"
    """How the loss rebuilds a distribution: ``spread`` (TinyViT) or ``topk`` (restricted)."""

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    def to(self, device: torch.device | str) -> "SparseLogits":
        return SparseLogits(
            self.values.to(device), self.indices.to(device), self.logsumexp.to(device), self.num_classes,
            self.mode,
        )


QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""One layer's (query, key, value) projections, each (B, heads, L, head_dim)."""


@dataclass
class ModelOutputs:
    """Outputs of one model on one batch. Every field is optional; a loss states which ones it needs.

    Shapes: ``logits`` (B, C) for classifiers, (B, L, V) for language models; ``hidden_states`` is a tuple
    whose item 0 is the embedding output and item i the output of layer i, each (B, L, H); ``attentions``
    item i-1 belongs to layer i, each (B, heads, L, L); ``qkv`` item i-1 holds layer i's self-attention
    query, key and value projections ``(q, k, v)``, each (B, heads, L, head_dim), taken from the projection
    modules' outputs by :func:`distill.capture.capture_qkv` (so before any dropout and before the softmax);
    ``embeddings`` (B, D) pooled sentence vectors; ``attention_mask`` (B, L) with 1 on real tokens.

    In ``hidden_states`` and ``qkv`` an item may be ``None``: a layer nobody asked for (the store keeps only
    the layers the losses read; capture hooks only the requested layers).
    """

    logits: torch.Tensor | SparseLogits | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    qkv: tuple[QKV | None, ...] | None = None
    embeddings: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    feature_maps: dict[str, torch.Tensor] | None = None
    """Image models: named convolutional feature maps, each (B, C, H, W), in network order (the names are
    the model's module names, or its stage names for distill's own CNNs); read by ``fitnet`` and ``at``."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def require(self, name: str, loss: str) -> object:
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"loss {loss!r} needs {name!r} from the model outputs, but it is missing; "
                f"for a stored teacher add {name!r} to store.capture, for an online model make sure the "
                "model returns it (hidden states, attentions and Q/K/V are requested automatically)"
            )
        return value
