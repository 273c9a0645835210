"""The store keeps a teacher's query/key/value projections per token, so MiniLM-style losses can train from
it: round trip, equality with the online loss, spec and key compatibility, and what the store refuses."""

from __future__ import annotations

import pytest
import torch

from distill._dataclass_io import RecipeError
from distill.losses import LOSSES, DistillLoss, LossContext
from distill.models import forward_outputs
from distill.outputs import ModelOutputs
from distill.store import StoreSpec, TeacherStore, build_store
from distill.training import Distiller

N, LENGTH = 10, 8


def _bert(layers: int, hidden: int, heads: int, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=32,
                        num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def _data():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (N, LENGTH), generator=g)
    lengths = torch.randint(2, LENGTH + 1, (N,), generator=g)
    lengths[0] = LENGTH
    mask = (torch.arange(LENGTH).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (N, L)
    return ids, mask, lengths


def _build(tmp_path, teacher, spec, ids, mask, seen=None):
    def compute(indices):
        out = forward_outputs(teacher, {"input_ids": ids[indices], "attention_mask": mask[indices]},
                              qkv_layers=spec.qkv_layers)
        if seen is not None:
            for b, i in enumerate(indices):
                seen[i] = [None if item is None else tuple(x[b] for x in item) for item in out.qkv]
        return out

    path = build_store(tmp_path, "k", spec, compute, N, batch_size=3, progress=False, log=lambda m: None)
    return TeacherStore.open(path)


def test_qkv_round_trip_keeps_each_real_token(tmp_path):
    teacher = _bert(3, 32, 4, seed=0)
    ids, mask, lengths = _data()
    seen: dict[int, list] = {}
    spec = StoreSpec(capture=("logits", "qkv"), qkv_layers=(3, 1), dtype="float32", shard_size=4)
    assert spec.qkv_layers == (1, 3)
    store = _build(tmp_path, teacher, spec, ids, mask, seen)
    assert store.layout["qkv"] == {"layers": [1, 3], "heads": 4, "head_dim": 8}
    order = [7, 0, 3, 3, 9]
    out = store.fetch(order)
    assert len(out.qkv) == 3 and out.qkv[1] is None  # layer 2 was not kept
    for layer in (1, 3):
        for which in range(3):
            got = out.qkv[layer - 1][which]  # (B, heads, L, head_dim)
            assert got.shape == (5, 4, int(lengths[order].max()), 8) and got.dtype == torch.float32
            for b, i in enumerate(order):
                n = int(lengths[i])
                assert torch.equal(got[b, :, :n], seen[i][layer - 1][which][:, :n])
                assert not got[b, :, n:].any()  # padding reads back as zeros
    from distill.store.reader import format_info

    assert "qkv layers [1, 3] (4 heads of 8)" in format_info(store.info())


@pytest.mark.parametrize(("name", "params"), [("minilm_v2", {"relation_heads": 4}),
                                              ("attention_mse", {"head_mode": "mean", "on": "probs"})])
def test_loss_from_the_store_equals_the_online_loss(tmp_path, name, params):
    # teacher 3 layers x 4 heads x 32, student 2 layers x 2 heads x 16: head counts and widths differ
    teacher, student = _bert(3, 32, 4, seed=0), _bert(2, 16, 2, seed=1)
    ids, mask, _ = _data()
    ctx = LossContext(student_hidden_size=16, teacher_hidden_size=32, student_num_layers=2,
                      teacher_num_layers=3)
    loss = LOSSES.get(name).build(params, ctx)
    distiller = Distiller([(name, 1.0, loss)])
    layers = distiller.qkv_layers("teacher")
    spec = StoreSpec(capture=("qkv",), qkv_layers=tuple(layers), dtype="float32", shard_size=4)
    store = _build(tmp_path, teacher, spec, ids, mask)
    for start in range(0, N, 3):  # the batches the teacher saw when the store was built
        rows = list(range(start, min(start + 3, N)))
        inputs = {"input_ids": ids[rows], "attention_mask": mask[rows]}
        s_out = forward_outputs(student, inputs, qkv_layers=distiller.qkv_layers("student"))
        with torch.no_grad():
            online = forward_outputs(teacher, inputs, qkv_layers=layers)
        stored = store.fetch(rows, pad_to=LENGTH)
        a, b = loss(s_out, stored, inputs), loss(s_out, online, inputs)
        a, b = (sum(x.values()) if isinstance(x, dict) else x for x in (a, b))
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert float(a.detach()) > 0


def test_spec_without_qkv_keeps_its_old_dict_and_key():
    # stores built before qkv existed must keep their keys: the new field is left out when unused
    spec = StoreSpec(capture=("logits", "hidden_states"), layers=(2,))
    assert "qkv_layers" not in spec.to_dict()
    assert StoreSpec.from_dict(spec.to_dict()) == spec
    with_qkv = StoreSpec(capture=("qkv",), qkv_layers=(6,))
    assert with_qkv.to_dict()["qkv_layers"] == [6] and StoreSpec.from_dict(with_qkv.to_dict()) == with_qkv


def test_spec_validation_of_qkv():
    with pytest.raises(ValueError, match="qkv_layers"):
        StoreSpec(capture=("qkv",))
    with pytest.raises(ValueError, match="'qkv' is not in capture"):
        StoreSpec(capture=("logits",), qkv_layers=(1,))
    with pytest.raises(ValueError, match=">= 1"):
        StoreSpec(capture=("qkv",), qkv_layers=(0,))


def test_missing_qkv_fails_with_a_fix(tmp_path):
    spec = StoreSpec(capture=("qkv",), qkv_layers=(2,), dtype="float32")
    with pytest.raises(ValueError, match="qkv_layers"):
        build_store(tmp_path, "k", spec, lambda idx: ModelOutputs(attention_mask=torch.ones(len(idx), 3)), 4,
                    progress=False, log=lambda m: None)


def test_store_spec_of_a_recipe_keeps_the_layers_the_losses_read():
    from distill.config import StoreConfig
    from distill.store.spec import spec_for_losses

    ctx = LossContext(student_hidden_size=384, teacher_hidden_size=384, student_num_layers=3,
                      teacher_num_layers=6)
    losses = [("kd", 0.5, LOSSES.get("kd")()), ("minilm", 1.0, LOSSES.get("minilm").build({}, ctx)),
              ("attention_mse", 1.0, LOSSES.get("attention_mse").build({"layer_map": "last2"}, ctx))]
    spec = spec_for_losses(StoreConfig(), Distiller(losses))
    assert spec.capture == ("logits", "qkv") and spec.qkv_layers == (5, 6) and spec.layers == ()


class _ReadsAttentions(DistillLoss):
    """Stand-in for a loss over HF attention matrices (not registered)."""

    name = "reads_attentions"
    teacher_needs = ("attentions",)
    student_needs = ("attentions",)

    def forward(self, student, teacher, batch):  # pragma: no cover - never run here
        raise NotImplementedError


def test_store_refuses_attention_matrices_with_a_fix():
    from distill.config import StoreConfig
    from distill.store.spec import spec_for_losses

    with pytest.raises(RecipeError, match="store.enabled: false"):
        spec_for_losses(StoreConfig(), Distiller([("reads_attentions", 1.0, _ReadsAttentions())]))
