"""train.neighbour_group: the teacher-neighbour search, the sampler built on it (every row once per epoch,
groups of near rows, a replayable order), and the recipe checks around it."""

from __future__ import annotations

import pytest
import torch

from distill._dataclass_io import from_dict
from distill.config import RecipeError, TrainConfig
from distill.training.sampling import NeighbourGroupSampler, teacher_neighbours


def _clusters(n_clusters: int = 12, per: int = 10, dim: int = 16, seed: int = 0):
    """Rows in tight, well-separated clusters, shuffled: (vectors, cluster of each row)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 5
    label = torch.arange(n_clusters).repeat_interleave(per)
    perm = torch.randperm(len(label), generator=g)
    label = label[perm]
    return centres[label] + 0.05 * torch.randn(len(label), dim, generator=g), label


def test_neighbours_are_the_nearest_rows_and_never_the_row_itself():
    vectors, label = _clusters()
    near = teacher_neighbours(vectors, k=5)
    assert near.shape == (120, 5)
    assert not (near == torch.arange(120).unsqueeze(1)).any()
    assert (label[near] == label.unsqueeze(1)).all()  # 9 other rows per cluster, 5 asked: all from it
    # nearest first: the cosine falls along each row
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    cos = (unit.unsqueeze(1) * unit[near]).sum(-1)
    assert (cos[:, :-1] >= cos[:, 1:] - 1e-6).all()


def test_pools_split_the_search_and_a_tiny_pool_points_to_itself():
    vectors, _ = _clusters()
    near = teacher_neighbours(vectors, k=3, pool=50, block=7, seed=1)
    order = torch.randperm(120, generator=torch.Generator().manual_seed(1))
    pool_of = torch.empty(120, dtype=torch.long)
    for p, members in enumerate(order.split(50)):
        pool_of[members] = p
    assert (pool_of[near] == pool_of.unsqueeze(1)).all()  # searched inside its own pool only
    lone = teacher_neighbours(torch.randn(3, 4), k=5)  # only 2 other rows: the rest is the row itself
    assert lone.shape == (3, 5) and (lone[:, 2:] == torch.arange(3).unsqueeze(1)).all()
    assert set(lone[0, :2].tolist()) == {1, 2}
    with pytest.raises(ValueError, match="expected an"):
        teacher_neighbours(torch.randn(5), k=2)


def test_sampler_serves_every_row_once_in_groups_of_neighbours_and_replays_an_epoch():
    vectors, label = _clusters()
    s = NeighbourGroupSampler(teacher_neighbours(vectors, k=16), group=5, seed=3)
    first = list(s)
    assert sorted(first) == list(range(120)) and len(s) == 120
    # consecutive rows share a cluster far more often than in a random order (1 in 12)
    same = sum(int(label[a] == label[b]) for a, b in zip(first, first[1:]))
    assert same > 0.6 * 119
    # the first group is the opening row and its 4 nearest rows
    assert (label[torch.tensor(first[:5])] == label[first[0]]).all()
    assert list(s) == first  # the same epoch again: a resumed run replays it
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) == list(range(120))
    assert list(NeighbourGroupSampler(s.neighbours, 5, seed=4)) != first
    with pytest.raises(ValueError, match="2 or more"):
        NeighbourGroupSampler(s.neighbours, 1, seed=0)


@pytest.mark.parametrize("bad", [1, -2, True, 2.5])
def test_config_rejects_a_bad_group(bad):
    with pytest.raises(RecipeError, match="neighbour_group"):
        from_dict(TrainConfig, {"neighbour_group": bad})


def test_config_refuses_both_groupings_and_keeps_fingerprints_while_off():
    with pytest.raises(RecipeError, match="group_by_length: false"):
        from_dict(TrainConfig, {"neighbour_group": 8, "group_by_length": True})
    assert "neighbour_group" not in TrainConfig().fingerprinted()  # finished stages stay valid
    assert TrainConfig(neighbour_group=8).fingerprinted()["neighbour_group"] == 8


def test_recipe_allows_it_only_for_a_stored_sentence_embedding_run():
    from distill.config import recipe_from_dict

    base = {"teacher": {"model": "t"}, "student": {"model": "s"}, "losses": [{"name": "kd"}],
            "data": {"train": "x.csv"}, "train": {"neighbour_group": 4}}
    with pytest.raises(RecipeError, match="task: sentence-embedding"):
        recipe_from_dict(base)
    with pytest.raises(RecipeError, match="store.enabled: true"):
        recipe_from_dict({**base, "task": "sentence-embedding", "losses": [{"name": "similarity_matrix"}],
                          "store": {"enabled": False}})
    ok = recipe_from_dict({**base, "task": "sentence-embedding", "losses": [{"name": "similarity_matrix"}]})
    assert ok.train.neighbour_group == 4


def test_length_aware_packing_pads_to_less_and_keeps_the_groups():
    vectors, label = _clusters(n_clusters=40, per=10)
    near = teacher_neighbours(vectors, k=16)
    lengths = [(i * 37) % 61 + 1 for i in range(400)]
    plain = NeighbourGroupSampler(near, group=4, seed=2)
    packed = NeighbourGroupSampler(near, group=4, seed=2, lengths=lengths, batch_size=16, bucket_batches=5)
    order = list(packed)
    assert sorted(order) == list(range(400))

    def padded(o):
        return sum(max(lengths[r] for r in o[i:i + 16]) * len(o[i:i + 16]) for i in range(0, len(o), 16))

    assert padded(order) < 0.9 * padded(list(plain))
    # groups stay together: a row's successor is mostly from its own cluster (1 in 40 at random)
    same = sum(int(label[a] == label[b]) for a, b in zip(order, order[1:]))
    assert same > 0.5 * 399
    assert list(packed) == order
    with pytest.raises(ValueError, match="go together"):
        NeighbourGroupSampler(near, group=4, seed=2, lengths=lengths)
