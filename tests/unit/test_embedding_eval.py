"""Sentence-encoder building blocks: pooling, reading sentence-transformers directories, the static
student's initialisation, and the agreement metrics (on cases whose answer is known by construction)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill._dataclass_io import RecipeError
from distill.evaluation.embedding import (
    probe_accuracy,
    probe_correct,
    random_pairs,
    retrieval_agreement,
    similarity_agreement,
)
from distill.sentence_encoder import describe, pool
from distill.students.static import _single_token_template, pca_reduce, sif_weights


def test_pool_modes_ignore_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])  # (1, 3, 2), last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(h, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(pool(h, mask, "max"), torch.tensor([[3.0, 4.0]]))
    assert torch.equal(pool(h, mask, "cls"), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(pool(h, mask, "lasttoken"), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(pool(h, mask, "mean_sqrt_len"), torch.tensor([[4.0, 6.0]]) / 2 ** 0.5)


def _st_dir(tmp_path, pooling_cfg, extra_modules=()):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               *extra_modules]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg))
    return tmp_path


def test_describe_reads_old_and_new_pooling_configs(tmp_path):
    old = _st_dir(tmp_path / "a", {"word_embedding_dimension": 8, "pooling_mode_cls_token": True,
                                   "pooling_mode_mean_tokens": False},
                  [{"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"}])
    info = describe(old)
    assert (info["kind"], info["pooling"], info["normalize"]) == ("transformer", "cls", True)
    new = _st_dir(tmp_path / "b", {"embedding_dimension": 8, "pooling_mode": "mean"})
    assert describe(new)["pooling"] == "mean" and describe(new)["normalize"] is False
    (tmp_path / "c").mkdir()
    plain = tmp_path / "c"
    assert describe(plain) == {"kind": "transformer", "pooling": "mean", "normalize": False,
                               "backbone": str(plain)}


def test_describe_rejects_modules_it_cannot_reproduce(tmp_path):
    norm = {"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}
    _st_dir(tmp_path / "a", {"pooling_mode_mean_tokens": True}, [norm])
    with pytest.raises(RecipeError, match="LayerNorm"):
        describe(tmp_path / "a")
    # a Dense module is read (student.dense exports one), but not without its config
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    _st_dir(tmp_path / "b", {"pooling_mode_mean_tokens": True}, [dense])
    with pytest.raises(RecipeError, match="Dense"):
        describe(tmp_path / "b")


def test_describe_rejects_weighted_mean_pooling(tmp_path):
    _st_dir(tmp_path, {"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(RecipeError, match="pooling"):
        describe(tmp_path)


def test_single_token_template_wraps_in_special_tokens(tiny_tokenizer):
    template, slot = _single_token_template(tiny_tokenizer)
    assert len(template) == 3 and slot == 1
    assert template[0] == tiny_tokenizer.cls_token_id and template[2] == tiny_tokenizer.sep_token_id


def test_pca_reduce_is_deterministic_and_keeps_the_main_axis():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g) * torch.tensor([10.0, 1, 1, 1, 1, 0.1])
    a, b = pca_reduce(x, 2), pca_reduce(x.clone(), 2)
    assert a.shape == (200, 2) and torch.equal(a, b)
    # the first component carries the dominant feature (up to the fixed sign)
    corr = np.corrcoef(a[:, 0].numpy(), x[:, 0].numpy())[0, 1]
    assert abs(corr) > 0.99
    assert pca_reduce(x, 6) is x  # nothing to reduce


def test_sif_weights_by_hand(tiny_tokenizer):
    """a / (a + p), p the add-one smoothed share of each id among the tokens of the texts (no special
    tokens): computed here from the ids the tokenizer gives, independently of the counting in the module."""
    texts = ["good good film", "bad film", "good"]
    ids = [i for t in texts for i in tiny_tokenizer(t, add_special_tokens=False)["input_ids"]]
    vocab = len(tiny_tokenizer)
    a = 0.01
    got = sif_weights(tiny_tokenizer, texts, a)
    assert got.shape == (vocab,)
    for token in set(ids) | {tiny_tokenizer.cls_token_id}:
        p = (ids.count(token) + 1) / (len(ids) + vocab)
        assert float(got[token]) == pytest.approx(a / (a + p), rel=1e-6)
    good = tiny_tokenizer("good", add_special_tokens=False)["input_ids"][0]
    bad = tiny_tokenizer("bad", add_special_tokens=False)["input_ids"][0]
    assert got[good] < got[bad] < got[tiny_tokenizer.cls_token_id] < 1  # the more frequent, the lighter


def test_static_sif_is_checked_and_kept_out_of_fingerprints_when_unset():
    from distill.config.student import StudentConfig

    assert "static_sif" not in StudentConfig(static=True).fingerprinted()
    assert StudentConfig(static=True, static_sif=0.001).fingerprinted()["static_sif"] == 0.001
    with pytest.raises(RecipeError, match=r"student\.static_sif: -1"):
        StudentConfig(static=True, static_sif=-1)
    with pytest.raises(RecipeError, match=r"student\.static_sif.*only applies"):
        StudentConfig(model="x", static_sif=0.001)


def test_agreement_metrics_on_known_cases():
    g = np.random.default_rng(0)
    t = g.normal(size=(50, 8))
    assert similarity_agreement(t, t, 2000) == pytest.approx(1.0)
    assert similarity_agreement(3.0 * t, t, 2000) == pytest.approx(1.0)  # cosine: scale does not matter
    rot = np.linalg.qr(g.normal(size=(8, 8)))[0]
    assert similarity_agreement(t @ rot, t, 2000) == pytest.approx(1.0)  # nor does a rotation
    assert retrieval_agreement(t @ rot, t, 5) == pytest.approx(1.0)
    noise = g.normal(size=(50, 8))
    assert abs(similarity_agreement(noise, t, 2000)) < 0.1
    assert retrieval_agreement(noise, t, 5) < 0.4
    i, j = random_pairs(10, 1000, 0)
    assert not np.any(i == j) and i.max() < 10 and j.max() < 10


def test_probe_accuracy_separable_vs_random():
    g = np.random.default_rng(1)
    labels = np.array([0, 1] * 50)
    separable = g.normal(size=(100, 4)) + labels[:, None] * 5
    assert probe_accuracy(separable, labels) == 1.0
    assert probe_accuracy(g.normal(size=(100, 4)), labels) < 0.8


def test_probe_rows_are_the_same_for_two_encoders():
    """probe_correct scores every encoder on the same held-out rows (what a paired test needs), and its mean
    is probe_accuracy."""
    g = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 40)
    good = g.normal(size=(120, 6)) + labels[:, None]
    bad = g.normal(size=(120, 6))
    a, b = probe_correct(good, labels), probe_correct(bad, labels)
    assert a.shape == b.shape == (24,) and a.dtype == bool
    assert a.mean() == probe_accuracy(good, labels) and a.mean() > b.mean()


def test_encode_batches_by_length_and_returns_input_order(tiny_encoder, tiny_tokenizer):
    """encode() runs batches longest text first; row i is still text i (each row as if encoded alone)."""
    from transformers import AutoModel

    from distill.evaluation.embedding import encode
    from distill.sentence_encoder import SentenceEncoder

    model = SentenceEncoder(AutoModel.from_pretrained(tiny_encoder), "mean", normalize=False)
    words = "good bad film plot actor great awful scene".split()
    texts = [" ".join(words[: 1 + (i * 5) % 8]) for i in range(11)]
    together = encode(model, tiny_tokenizer, texts, max_length=16, batch_size=4)
    alone = np.concatenate([encode(model, tiny_tokenizer, [t], max_length=16, batch_size=4) for t in texts])
    assert together.shape == alone.shape
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])
