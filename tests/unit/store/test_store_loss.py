"""A student trained from the store sees the same KD loss as one trained next to the online teacher."""

from __future__ import annotations

import torch
from _store_helpers import ClassifierTeacher

from distill.losses import KDLoss
from distill.losses.divergence import sparse_teacher_log_probs
from distill.outputs import ModelOutputs, SparseLogits
from distill.store import StoreSpec, TeacherStore, build_store

N, BATCH, DIM, CLASSES = 64, 16, 12, 10


def _models():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(DIM, CLASSES).eval()
    student = torch.nn.Linear(DIM, CLASSES)
    x = torch.randn(N, DIM)
    return teacher, student, x


def _losses(tmp_path, dtype):
    teacher, student, x = _models()

    def compute(indices):
        return ModelOutputs(logits=teacher(x[indices]))

    path = build_store(
        tmp_path, dtype, StoreSpec(dtype=dtype, shard_size=24), compute, N, batch_size=BATCH, progress=False
    )
    store = TeacherStore.open(path)
    kd = KDLoss(temperature=2.0)
    pairs = []
    for start in range(0, N, BATCH):  # training batches: the same rows the teacher saw together
        rows = list(range(start, start + BATCH))
        s_out = ModelOutputs(logits=student(x[rows]))
        with torch.no_grad():
            online = ModelOutputs(logits=teacher(x[rows]))
        pairs.append((kd(s_out, store.fetch(rows), {}), kd(s_out, online, {})))
    return pairs


def test_kd_loss_from_fp32_store_equals_online_exactly(tmp_path):
    for stored, online in _losses(tmp_path, "float32"):
        assert torch.equal(stored, online)


def test_kd_loss_from_fp16_store_within_1e3(tmp_path):
    for stored, online in _losses(tmp_path, "float16"):
        torch.testing.assert_close(stored, online, rtol=1e-3, atol=0)


def test_sparse_spread_is_a_distribution_close_to_dense(tmp_path):
    teacher = ClassifierTeacher(
        40, num_classes=50, scale=20.0
    )  # peaked, as a trained teacher: tail mass < 1e-4
    path = build_store(
        tmp_path, "k", StoreSpec(topk=8, dtype="float16", shard_size=16), teacher, 40, progress=False
    )
    sparse = TeacherStore.open(path).fetch(range(40)).logits
    assert isinstance(sparse, SparseLogits) and sparse.k == 8
    log_p, _ = sparse_teacher_log_probs(sparse, "spread")  # (40, 50)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(40), rtol=0, atol=1e-5)
    dense = torch.log_softmax(teacher.logits(range(40)), dim=-1)
    kl = (dense.exp() * (dense - log_p)).sum(-1)  # KL(dense || reconstructed), per row
    assert kl.max() < 1e-3, kl.max()  # bounded by tail mass * log(C - k), plus fp16 rounding
    student = ModelOutputs(logits=torch.randn(40, 50))
    kd = KDLoss(temperature=2.0)
    loss_sparse = kd(student, ModelOutputs(logits=sparse), {})
    loss_dense = kd(student, ModelOutputs(logits=teacher.logits(range(40))), {})
    torch.testing.assert_close(loss_sparse, loss_dense, rtol=0.05, atol=0)
