"""student.dense: a SentenceEncoder with a linear output layer saves, reloads and exports to
sentence-transformers with the same vectors; sentence-transformers directories with a linear Dense module are
read back; the recipe checks around the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.conftest import make_bert

from distill.config import RecipeError, recipe_from_dict
from distill.config.student import StudentConfig
from distill.sentence_encoder import SentenceEncoder, describe, load_encoder

pytest.importorskip("sentence_transformers")

TEXTS = ["the film was great", "a dull and boring plot", "moving story", "good"]


@pytest.fixture(scope="module")
def dense_encoder(tiny_dir, tiny_tokenizer):
    from transformers import AutoModel

    src = make_bert(tiny_dir / "dense_backbone", tiny_tokenizer, layers=2, hidden=16, heads=2, seed=4)
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24, bias=False)
    return SentenceEncoder(AutoModel.from_pretrained(src), "mean", normalize=True, dense=layer)


def _ours(encoder, tokenizer, texts=TEXTS):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    encoder.eval()
    with torch.no_grad():
        return encoder(**enc).embeddings.numpy()


def test_the_layer_maps_to_its_width_and_survives_save_and_load(tmp_path, dense_encoder, tiny_tokenizer):
    vectors = _ours(dense_encoder, tiny_tokenizer)
    assert vectors.shape == (4, 24) and dense_encoder.embedding_dim == 24 and dense_encoder.hidden_dim == 16
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalised after the layer
    dense_encoder.save(tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / "distill_encoder.json").read_text())["dense"]["out_features"] == 24
    again = load_encoder(tmp_path / "enc")
    np.testing.assert_allclose(_ours(again, tiny_tokenizer), vectors, atol=1e-6)


def test_export_is_a_sentence_transformer_with_a_dense_module(tmp_path, dense_encoder, tiny_tokenizer):
    from sentence_transformers import SentenceTransformer

    from distill.export.sentence_transformers import save_sentence_transformer

    out = save_sentence_transformer(dense_encoder, tiny_tokenizer, tmp_path / "st", max_length=32)
    types = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert types == ["Transformer", "Pooling", "Dense", "Normalize"]
    st = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(st, _ours(dense_encoder, tiny_tokenizer), atol=1e-5)
    # and distill reads it back (e.g. as the next run's teacher or student)
    assert describe(out)["dense"]["out_features"] == 24
    np.testing.assert_allclose(_ours(load_encoder(out), tiny_tokenizer), st, atol=1e-5)


def test_a_dense_module_with_an_activation_is_refused(tmp_path, dense_encoder, tiny_tokenizer):
    from distill.export.sentence_transformers import save_sentence_transformer

    out = save_sentence_transformer(dense_encoder, tiny_tokenizer, tmp_path / "st", max_length=32)
    dense_dir = next(p for p in out.iterdir() if p.name.endswith("Dense"))
    cfg = json.loads((dense_dir / "config.json").read_text())
    cfg["activation_function"] = "torch.nn.modules.activation.Tanh"
    (dense_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RecipeError, match="activation"):
        describe(out)


def test_recipe_checks():
    with pytest.raises(RecipeError, match="student.dense"):
        StudentConfig(static=True, dense=True)
    base = {"teacher": {"model": "t"}, "student": {"model": "s", "dense": True}, "losses": [{"name": "kd"}],
            "data": {"train": "x.csv"}}
    with pytest.raises(RecipeError, match="task: sentence-embedding"):
        recipe_from_dict(base)
    assert "dense" not in StudentConfig(model="s").fingerprinted()  # finished stages stay valid
    assert StudentConfig(model="s", dense=True).fingerprinted()["dense"] is True
