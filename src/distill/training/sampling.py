"""Length-bucketed batches: rows of similar length share a batch (less padding, faster steps) while the
batches themselves come in a fresh random order every epoch.

transformers' own ``LengthGroupedSampler`` sorts each group of 50 batches by length and keeps that order, so
inside a group the batches run from the longest rows to the shortest, and a data set smaller than one group
(e.g. 761 labelled rows at batch 32) sees the same batches in the same order every epoch. Here the rows are
shuffled, cut into buckets of ``bucket_batches`` batches, sorted by length inside a bucket and cut into
batches; then every full batch of the epoch is shuffled, and the one short batch (if any) comes last so the
data loader's consecutive groups of ``batch_size`` indices are exactly these batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthBucketSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 50):
        if batch_size <= 0 or bucket_batches <= 0:
            raise ValueError(f"batch_size {batch_size} and bucket_batches {bucket_batches} must be positive")
        self.lengths = [int(n) for n in lengths]
        self.batch_size, self.seed, self.bucket_batches = batch_size, seed, bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) before each epoch: a resumed run replays the epoch's
        order exactly."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in the order they are served."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.bucket_batches
        full, short = [], []
        for start in range(0, len(order), size):
            # a stable sort: rows of equal length stay in random order
            bucket = sorted(order[start:start + size], key=self.lengths.__getitem__)
            for b in range(0, len(bucket), self.batch_size):
                batch = bucket[b:b + self.batch_size]
                (full if len(batch) == self.batch_size else short).append(batch)
        shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
        return shuffled + short

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch
