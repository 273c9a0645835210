"""Round trips: what build_store writes, TeacherStore.fetch gives back."""

from __future__ import annotations

import pickle

import pytest
import torch
from _store_helpers import ClassifierTeacher, SequenceTeacher

from distill.outputs import ModelOutputs, SparseLogits
from distill.store import StoreSpec, TeacherStore, build_store


def _build(tmp_path, spec, teacher, n, **kw):
    path = build_store(
        tmp_path,
        "k",
        spec,
        teacher,
        n,
        batch_size=kw.pop("batch_size", 8),
        progress=False,
        log=lambda msg: None,
        **kw,
    )
    return TeacherStore.open(path)


def test_dense_fp32_is_bit_exact_in_any_order(tmp_path):
    teacher = ClassifierTeacher(50)
    store = _build(
        tmp_path, StoreSpec(capture=("logits", "embeddings"), dtype="float32", shard_size=16), teacher, 50
    )
    assert len(store) == 50 and store.num_classes == 7 and len(store.manifest["shards"]) == 4
    idx = [49, 0, 17, 16, 15, 3, 3, 33]  # across shards, unsorted, repeated
    out = store.fetch(idx)
    assert out.logits.dtype == torch.float32 and out.logits.shape == (8, 7)
    assert torch.equal(out.logits, teacher.logits(idx))
    assert torch.equal(out.embeddings, teacher.features[idx] * 2.0)
    assert out.attention_mask is None and out.hidden_states is None
    assert torch.equal(store.fetch(torch.tensor(idx)).logits, out.logits)


@pytest.mark.parametrize(("dtype", "tol"), [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_dense_half_precision_within_rounding(tmp_path, dtype, tol):
    teacher = ClassifierTeacher(40)
    store = _build(tmp_path, StoreSpec(dtype=dtype, shard_size=16), teacher, 40)
    got, want = store.fetch(range(40)).logits, teacher.logits(range(40))
    assert got.dtype == torch.float32
    assert torch.equal(got, want.to(getattr(torch, dtype)).float())  # exactly the rounding, nothing else
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_sparse_topk_values_indices_logsumexp(tmp_path):
    teacher = ClassifierTeacher(30, num_classes=20)
    store = _build(tmp_path, StoreSpec(topk=5, dtype="float32", shard_size=8), teacher, 30)
    out = store.fetch([29, 2, 11])
    z = teacher.logits([29, 2, 11])
    assert isinstance(out.logits, SparseLogits)
    s = out.logits
    assert s.k == 5 and s.num_classes == 20 and s.mode == "spread"
    assert s.indices.dtype == torch.long and s.values.dtype == torch.float32
    want_v, want_i = z.topk(5, dim=-1)
    assert torch.equal(s.values, want_v) and torch.equal(s.indices, want_i)
    assert torch.all(s.values[:, :-1] >= s.values[:, 1:])  # sorted descending
    torch.testing.assert_close(s.logsumexp, torch.logsumexp(z, dim=-1), rtol=0, atol=1e-6)
    assert store._handle(0).get_tensor("topk_indices").dtype == torch.int32  # int16 is too small for LMs


@pytest.mark.parametrize("k", [7, 100])
def test_topk_at_least_classes_is_dense(tmp_path, k):
    teacher = ClassifierTeacher(12, num_classes=7)
    store = _build(tmp_path, StoreSpec(topk=k, dtype="float32", shard_size=5), teacher, 12)
    out = store.fetch(range(12))
    assert isinstance(out.logits, torch.Tensor)
    assert torch.equal(out.logits, teacher.logits(range(12)))


@pytest.mark.parametrize("left_pad", [False, True])
def test_ragged_per_token_logits_and_hidden_states(tmp_path, left_pad):
    teacher = SequenceTeacher(23, left_pad=left_pad)
    spec = StoreSpec(capture=("logits", "hidden_states"), layers=(0, 2), dtype="float32", shard_size=6)
    store = _build(tmp_path, spec, teacher, 23, batch_size=4)
    assert store.num_tokens == int(teacher.lengths.sum())
    idx = [5, 1, 0, 22, 7, 5]
    out = store.fetch(idx)
    lengths = teacher.lengths[idx]
    longest = int(lengths.max())
    assert out.attention_mask.shape == (6, longest)
    assert torch.equal(out.attention_mask.sum(1), lengths)
    assert out.logits.shape == (6, longest, 50)
    assert len(out.hidden_states) == 3 and out.hidden_states[1] is None
    for b, i in enumerate(idx):
        n = int(lengths[b])
        logits, hidden = teacher.valid_tokens(i)
        assert torch.equal(out.logits[b, :n], logits)  # right-padded, tokens in order
        assert torch.equal(out.logits[b, n:], torch.zeros_like(out.logits[b, n:]))
        for layer in (0, 2):
            assert torch.equal(out.hidden_states[layer][b, :n], hidden[layer])
    padded = store.fetch(idx, pad_to=12)
    assert padded.logits.shape == (6, 12, 50) and padded.attention_mask.shape == (6, 12)
    # the teacher's own layout back, for a student batch padded like the teacher's
    side = "left" if left_pad else "right"
    same = store.fetch(idx, pad_to=teacher.max_len, padding_side=side)
    assert torch.equal(same.attention_mask, teacher.mask(idx))
    keep = same.attention_mask.bool()
    assert torch.equal(same.logits[keep], teacher.logits_all[idx][keep])
    assert torch.equal(same.hidden_states[2][keep], teacher.hidden_all[2][idx][keep])
    with pytest.raises(ValueError, match="pad_to"):
        store.fetch([0], pad_to=2)


def test_ragged_sparse_lm_logits(tmp_path):
    teacher = SequenceTeacher(15, vocab=40)
    store = _build(tmp_path, StoreSpec(topk=4, dtype="float16", shard_size=4), teacher, 15)
    idx = [3, 1, 14, 0]
    out = store.fetch(idx)
    s = out.logits
    assert isinstance(s, SparseLogits) and s.values.shape[:2] == out.attention_mask.shape and s.k == 4
    for b, i in enumerate(idx):
        n = int(teacher.lengths[i])
        z, _ = teacher.valid_tokens(i)
        v, ix = z.topk(4, dim=-1)
        assert torch.equal(s.indices[b, :n], ix)
        assert torch.equal(s.values[b, :n], v.half().float())
        # normaliser of the full logits with the kept ones as stored: close to the exact one ...
        torch.testing.assert_close(s.logsumexp[b, :n], torch.logsumexp(z, -1), rtol=0, atol=2e-2)
        rounded = z.scatter(-1, ix, v.half().float())
        torch.testing.assert_close(s.logsumexp[b, :n], torch.logsumexp(rounded, -1), rtol=0, atol=1e-6)
        # ... and the kept probabilities never sum past 1
        assert ((s.values[b, :n] - s.logsumexp[b, :n, None]).exp().sum(-1) <= 1 + 1e-6).all()
    # padded positions hold a proper distribution (uniform over k) so losses stay finite
    pad = out.attention_mask == 0
    probs = (s.values - s.logsumexp.unsqueeze(-1)).exp().sum(-1)
    torch.testing.assert_close(probs[pad], torch.ones(int(pad.sum())))


def test_tiny_bert_classifier_with_hidden_states(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    model = BertForSequenceClassification(config).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (10, 8), generator=g)
    lengths = torch.randint(2, 9, (10,), generator=g)
    mask = (torch.arange(8).unsqueeze(0) < lengths.unsqueeze(1)).long()

    seen_logits, seen_hidden = (
        {},
        {},
    )  # what the teacher returned, row by row (rounding depends on batch shape)

    def compute(indices):
        o = model(input_ids=ids[indices], attention_mask=mask[indices], output_hidden_states=True)
        for b, i in enumerate(indices):
            seen_logits[i], seen_hidden[i] = o.logits[b], o.hidden_states[2][b]
        return ModelOutputs(logits=o.logits, hidden_states=o.hidden_states, attention_mask=mask[indices])

    spec = StoreSpec(capture=("logits", "hidden_states"), layers=(2,), dtype="float32", shard_size=4)
    store = _build(tmp_path, spec, compute, 10, batch_size=3)
    out = store.fetch(list(range(10)))
    assert torch.equal(out.logits, torch.stack([seen_logits[i] for i in range(10)]))
    longest = int(lengths.max())
    assert torch.equal(out.attention_mask, mask[:, :longest])
    assert len(out.hidden_states) == 3 and out.hidden_states[0] is None and out.hidden_states[1] is None
    for i in range(10):
        n = int(lengths[i])
        assert torch.equal(out.hidden_states[2][i, :n], seen_hidden[i][:n])
    with torch.no_grad():  # and close to one full-batch run of the model
        ref = model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.logits, ref.logits)


def test_store_pickles_and_reads_in_dataloader_workers(tmp_path):
    teacher = ClassifierTeacher(20)
    store = _build(tmp_path, StoreSpec(dtype="float32", shard_size=8), teacher, 20)
    store.fetch([0, 19])  # opens handles, which must not travel
    clone = pickle.loads(pickle.dumps(store))
    assert torch.equal(clone.fetch([5]).logits, teacher.logits([5]))

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return store.fetch([i]).logits[0]

    loader = torch.utils.data.DataLoader(Rows(), batch_size=5, num_workers=2)
    got = torch.cat(list(loader))
    assert torch.equal(got, teacher.logits(range(20)))


def test_missing_outputs_fail_with_a_fix(tmp_path):
    teacher = ClassifierTeacher(4)
    with pytest.raises(ValueError, match="output_hidden_states"):
        build_store(
            tmp_path, "k", StoreSpec(capture=("hidden_states",), layers=(1,)), teacher, 4, progress=False
        )
    with pytest.raises(Exception, match="bfloat16 or float32"):

        def huge(indices):
            out = teacher(indices)
            out.logits = out.logits * 1e6
            return out

        build_store(tmp_path, "k2", StoreSpec(dtype="float16"), huge, 4, progress=False)


def test_spec_validation():
    assert StoreSpec(capture=["hidden_states", "logits"], layers=[3, 1, 3]).capture == (
        "logits",
        "hidden_states",
    )
    assert StoreSpec(capture=("hidden_states",), layers=(3, 1, 3)).layers == (1, 3)
    for bad in (
        {"capture": ("attn",)},
        {"topk": -1},
        {"dtype": "int8"},
        {"shard_size": 0},
        {"reconstruct": "x"},
        {"capture": ("hidden_states",)},
        {"layers": (1,)},
    ):
        with pytest.raises(ValueError):
            StoreSpec(**bad)


@pytest.mark.parametrize("kind", ["rows", "tokens"])
def test_length_ordered_batches_write_the_same_bytes(tmp_path, kind):
    """``lengths=``: each shard runs its rows longest first and puts them back in index order; with a teacher
    whose per-row outputs do not depend on the batch, the shards are byte-identical to the plain build, for
    row-level (logits, embeddings) and per-token (top-k logits, hidden states, empty rows) fields."""
    n = 23
    if kind == "rows":
        teacher, spec = ClassifierTeacher(n), StoreSpec(capture=("embeddings", "logits"), dtype="float32",
                                                        shard_size=10)
        length = lambda i: (i * 7) % 5  # noqa: E731
    else:
        teacher = SequenceTeacher(n)
        spec = StoreSpec(capture=("hidden_states", "logits"), layers=(1, 3), topk=4, dtype="float32",
                         shard_size=10)
        length = lambda i: int(teacher.lengths[i])  # noqa: E731
    plain = _build(tmp_path / "plain", spec, teacher, n, batch_size=4)
    teacher.calls.clear()
    ordered = _build(tmp_path / "ordered", spec, teacher, n, batch_size=4, lengths=length)
    first = teacher.calls[0]
    assert [length(i) for i in first] == sorted((length(i) for i in range(10)), reverse=True)[:4]
    assert sorted(i for call in teacher.calls for i in call) == list(range(n))
    shards = sorted(p.name for p in plain.path.glob("shard-*"))
    assert len(shards) == 6  # 3 shards, data + sidecar
    for shard in shards:
        assert (plain.path / shard).read_bytes() == (ordered.path / shard).read_bytes(), shard
