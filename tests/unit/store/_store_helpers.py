"""Deterministic fake teachers for the store tests (also imported by the kill -9 subprocess)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from distill.outputs import ModelOutputs


class ClassifierTeacher:
    """A random linear classifier over fixed random features: logits (B, C), optional embeddings (B, D)."""

    def __init__(
        self, num_examples: int, num_classes: int = 7, dim: int = 16, scale: float = 3.0, seed: int = 0
    ):
        g = torch.Generator().manual_seed(seed)
        self.features = torch.randn(num_examples, dim, generator=g)  # (N, D)
        self.head = torch.nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(num_classes, dim, generator=g) * scale / dim**0.5)
            self.head.bias.copy_(torch.randn(num_classes, generator=g))
            # all rows at once: a matmul's rounding depends on the batch shape, the store tests need
            # per-row outputs that do not
            self.all_logits = self.head(self.features)  # (N, C)
        self.calls: list[list[int]] = []

    def logits(self, indices) -> torch.Tensor:
        return self.all_logits[list(indices)]  # (B, C)

    def __call__(self, indices: list[int]) -> ModelOutputs:
        self.calls.append(list(indices))
        return ModelOutputs(logits=self.all_logits[indices], embeddings=self.features[indices] * 2.0)


class SequenceTeacher:
    """A fake LM: random per-token logits (B, L, V), hidden states, random lengths, left or right padding."""

    def __init__(
        self,
        num_examples: int,
        vocab: int = 50,
        hidden: int = 8,
        num_layers: int = 3,
        max_len: int = 9,
        left_pad: bool = False,
        seed: int = 0,
    ):
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(0, max_len + 1, (num_examples,), generator=g)
        self.lengths[0] = max_len  # at least one full row
        self.lengths[1] = 0  # and one empty row (all padding)
        self.logits_all = torch.randn(num_examples, max_len, vocab, generator=g) * 4.0  # (N, L, V)
        self.hidden_all = torch.randn(
            num_layers + 1, num_examples, max_len, hidden, generator=g
        )  # (layers+1, N, L, H)
        self.max_len, self.left_pad = max_len, left_pad
        self.calls: list[list[int]] = []

    def mask(self, indices) -> torch.Tensor:
        pos = torch.arange(self.max_len).unsqueeze(0)  # (1, L)
        lengths = self.lengths[list(indices)].unsqueeze(1)  # (B, 1)
        if self.left_pad:
            return (pos >= self.max_len - lengths).long()
        return (pos < lengths).long()  # (B, L)

    def valid_tokens(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (n_i, V), hidden (layers+1, n_i, H)) of example i, in token order."""
        keep = self.mask([i])[0].bool()
        return self.logits_all[i][keep], self.hidden_all[:, i][:, keep]

    def __call__(self, indices: list[int]) -> ModelOutputs:
        self.calls.append(list(indices))
        mask = self.mask(indices)
        # garbage in padded positions: the store must not keep it
        logits = torch.where(mask.bool().unsqueeze(-1), self.logits_all[indices], torch.full((), 1e9))
        hidden = tuple(h[indices] for h in self.hidden_all)
        return ModelOutputs(logits=logits, hidden_states=hidden, attention_mask=mask)


def shard_tensors(store_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every tensor of every shard file, by file name."""
    return {f.name: load_file(f) for f in sorted(Path(store_dir).glob("shard-*.safetensors"))}


def assert_same_store(a: Path, b: Path) -> None:
    ta, tb = shard_tensors(a), shard_tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].keys() == tb[name].keys(), name
        for key in ta[name]:
            assert torch.equal(ta[name][key], tb[name][key]), (name, key)
