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


class _EpochSampler(Sampler[int]):
    """A sampler whose order is a function of (seed, epoch) alone; ``size`` rows per epoch."""

    epoch = 0
    size = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) before each epoch: a resumed run replays the epoch's
        order exactly."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 100_003 + self.epoch)


class LengthBucketSampler(_EpochSampler):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 50):
        if batch_size <= 0 or bucket_batches <= 0:
            raise ValueError(f"batch_size {batch_size} and bucket_batches {bucket_batches} must be positive")
        self.lengths = [int(n) for n in lengths]
        self.batch_size, self.seed, self.bucket_batches = batch_size, seed, bucket_batches
        self.epoch, self.size = 0, len(self.lengths)

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in the order they are served."""
        g = self.generator(self.seed)
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


def teacher_neighbours(vectors: torch.Tensor, k: int, pool: int = 16_384, block: int = 1_024,
                       seed: int = 0) -> torch.Tensor:
    """The ``k`` nearest rows (cosine of the teacher's vectors, the row itself left out) of every row,
    ``(N, k)`` indices, nearest first.

    Exact within pools of ``pool`` rows: with more rows than that, the rows are split, in a seeded random
    order, into pools of at most ``pool`` and each row's neighbours are searched in its own pool only, so the
    cost grows as ``N * pool`` rather than ``N**2`` (a million 768-d rows: about 10^13 multiply-adds, minutes
    on a CPU). A pool smaller than ``k + 1`` rows gives each row every other row of its pool, padded with
    the row's own index (``-1`` never appears)."""
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"teacher_neighbours: expected an (N, D) matrix with N >= 1, got "
                         f"{tuple(vectors.shape)}")
    n = len(vectors)
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    out = torch.arange(n).unsqueeze(1).repeat(1, k)  # a row with no other row in its pool points to itself
    if n <= pool:
        pools = [torch.arange(n)]
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        pools = list(order.split(pool))
    for members in pools:
        m = len(members)
        take = min(k, m - 1)
        if take <= 0:
            continue
        sub = unit[members]
        for start in range(0, m, block):
            sims = sub[start:start + block] @ sub.T  # (b, m)
            rows = torch.arange(start, min(start + block, m))
            sims[torch.arange(len(rows)), rows] = float("-inf")  # not its own neighbour
            top = sims.topk(take, dim=1).indices  # positions within the pool
            out[members[rows], :take] = members[top]
    return out


class NeighbourGroupSampler(_EpochSampler):
    """Batches made of groups of the teacher's near neighbours (``train.neighbour_group``): each row is
    served once per epoch, but next to up to ``group - 1`` of its nearest rows, so a share of every batch's
    pairs are pairs the teacher finds close.

    Random in-batch pairs are mostly unrelated sentences; a similarity loss on them teaches the coarse layout
    of the space and little about which sentences are *nearest* each other, the part nearest-neighbour
    search and recall@k depend on. Each epoch: the rows in a fresh seeded order; each row not yet served opens
    a group and pulls in the first ``group - 1`` rows of its ``neighbours`` list not yet served (late in an
    epoch fewer are left, so groups shrink toward single rows); the groups, in that order, are cut into
    batches.
    A batch of 32 with groups of 8 has 4 x 28 = 112 of its 496 pairs inside a group."""

    def __init__(self, neighbours: torch.Tensor, group: int, seed: int, lengths: Sequence[int] | None = None,
                 batch_size: int | None = None, bucket_batches: int = 50):
        if group < 2:
            raise ValueError(f"group {group}: use 2 or more rows per group (1 is plain random batches)")
        if neighbours.ndim != 2:
            raise ValueError(f"neighbours: expected (N, k) indices, got {tuple(neighbours.shape)}")
        if (lengths is None) != (batch_size is None):
            raise ValueError("lengths and batch_size go together (length-aware packing of the groups)")
        if lengths is not None and len(lengths) != len(neighbours):
            raise ValueError(f"lengths: {len(lengths)} rows, neighbours: {len(neighbours)}")
        self.neighbours = neighbours.long()
        self.group, self.seed = int(group), int(seed)
        self.lengths = [int(n) for n in lengths] if lengths is not None else None
        self.batch_size, self.bucket_batches = batch_size, bucket_batches
        self.epoch, self.size = 0, len(self.neighbours)

    def groups(self, g: torch.Generator) -> list[list[int]]:
        """This epoch's groups of neighbours, in the order they were opened (every row in exactly one)."""
        n = len(self.neighbours)
        served = bytearray(n)
        near = self.neighbours.tolist()
        out: list[list[int]] = []
        for row in torch.randperm(n, generator=g).tolist():
            if served[row]:
                continue
            served[row] = 1
            group = [row]
            for j in near[row]:
                if len(group) >= self.group:
                    break
                if not served[j]:
                    served[j] = 1
                    group.append(j)
            out.append(group)
        return out

    def order(self) -> list[int]:
        """This epoch's rows, in the order they are served (each exactly once).

        With ``lengths``, the groups are packed so a batch pads to less, as :class:`LengthBucketSampler` does
        with rows: consecutive groups are gathered into buckets of about ``bucket_batches`` batches, sorted by
        their longest row inside a bucket, the whole sequence is cut into batches, and the full batches are
        shuffled (the one short batch, if any, comes last)."""
        g = self.generator(self.seed)
        groups = self.groups(g)
        if self.lengths is None or self.batch_size is None:
            return [row for group in groups for row in group]
        longest = [max(self.lengths[r] for r in group) for group in groups]
        stream: list[int] = []
        bucket: list[int] = []  # group numbers
        rows_in_bucket, size = 0, self.batch_size * self.bucket_batches
        for k, group in enumerate(groups):
            bucket.append(k)
            rows_in_bucket += len(group)
            if rows_in_bucket >= size or k == len(groups) - 1:
                for j in sorted(bucket, key=longest.__getitem__):  # stable: equal lengths keep their order
                    stream.extend(groups[j])
                bucket, rows_in_bucket = [], 0
        b = self.batch_size
        batches = [stream[i:i + b] for i in range(0, len(stream), b)]
        full = [batch for batch in batches if len(batch) == b]
        short = [batch for batch in batches if len(batch) < b]
        return [row for i in torch.randperm(len(full), generator=g).tolist() for row in full[i]] + \
            [row for batch in short for row in batch]

    def __iter__(self) -> Iterator[int]:
        yield from self.order()
