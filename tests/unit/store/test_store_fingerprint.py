"""Store keys change with everything that changes the stored bytes, and only with that."""

from __future__ import annotations

import pytest
import torch

from distill.store import (
    FORMAT_VERSION,
    StoreSpec,
    fingerprint_model,
    fingerprint_rows,
    fingerprint_tokenizer,
    store_key,
)


def _tiny_bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def _tokenizer(words=("hello", "world"), padding_side="right"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", padding_side=padding_side
    )


def test_model_fingerprint_tracks_every_weight():
    a, b = _tiny_bert(), _tiny_bert()
    assert fingerprint_model(a) == fingerprint_model(b)
    with torch.no_grad():
        b.classifier.bias[0] += 1e-6
    assert fingerprint_model(a) != fingerprint_model(b)
    c = _tiny_bert()
    c.config.layer_norm_eps = 1e-5  # same weights, different function
    assert fingerprint_model(a) != fingerprint_model(c)
    c = _tiny_bert()
    c.config._name_or_path = "/somewhere/else"  # where it was loaded from does not matter
    assert fingerprint_model(a) == fingerprint_model(c)
    assert fingerprint_model(_tiny_bert().to(torch.bfloat16)) != fingerprint_model(a)
    lin = torch.nn.Linear(3, 2)
    assert fingerprint_model(lin) == fingerprint_model(lin)


def test_model_fingerprint_raises_instead_of_guessing():
    with pytest.raises(ValueError, match="no weights"):
        fingerprint_model(torch.nn.ReLU())
    with pytest.raises(ValueError, match="meta"):
        fingerprint_model(torch.nn.Linear(3, 2, device="meta"))


def test_tokenizer_fingerprint():
    assert fingerprint_tokenizer(_tokenizer()) == fingerprint_tokenizer(_tokenizer())
    assert fingerprint_tokenizer(_tokenizer()) != fingerprint_tokenizer(_tokenizer(("hello", "word")))
    assert fingerprint_tokenizer(_tokenizer()) != fingerprint_tokenizer(_tokenizer(padding_side="left"))
    t = _tokenizer()
    t.model_max_length = 8
    assert fingerprint_tokenizer(t) != fingerprint_tokenizer(_tokenizer())

    class VocabOnly:  # no fast backend: falls back to the vocabulary
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return dict(self.vocab)

    assert fingerprint_tokenizer(VocabOnly({"a": 0, "b": 1})) == fingerprint_tokenizer(
        VocabOnly({"b": 1, "a": 0})
    )
    assert fingerprint_tokenizer(VocabOnly({"a": 0, "b": 1})) != fingerprint_tokenizer(
        VocabOnly({"a": 1, "b": 0})
    )
    with pytest.raises(TypeError):
        fingerprint_tokenizer(object())


def test_rows_fingerprint():
    rows = [{"text": "a b", "pair": None}, {"text": "c", "pair": "d"}]
    assert fingerprint_rows(rows) == fingerprint_rows(iter([dict(reversed(list(r.items()))) for r in rows]))
    assert fingerprint_rows(rows) != fingerprint_rows(rows[::-1])  # order is what indices refer to
    assert fingerprint_rows(rows) != fingerprint_rows(rows[:1])
    assert fingerprint_rows(["x", "y"]) != fingerprint_rows(["x", "y "])
    assert fingerprint_rows([torch.tensor([1, 2])]) == fingerprint_rows([[1, 2]])
    with pytest.raises(TypeError):
        fingerprint_rows([object()])


def test_store_key():
    spec = StoreSpec()
    parts = {"teacher": "t", "tokenizer": "tok", "data": "d", "max_length": 128}
    key = store_key(spec=spec, **parts)
    assert key == store_key(spec=StoreSpec(), **dict(reversed(list(parts.items()))))
    assert len(key) == 20 and int(key, 16) >= 0
    changed = [
        store_key(spec=spec, **{**parts, "teacher": "t2"}),
        store_key(spec=spec, **{**parts, "tokenizer": "tok2"}),
        store_key(spec=spec, **{**parts, "data": "d2"}),
        store_key(spec=spec, **{**parts, "max_length": 64}),
        store_key(spec=StoreSpec(topk=8), **parts),
        store_key(spec=StoreSpec(dtype="float32"), **parts),
        store_key(spec=StoreSpec(capture=("logits", "hidden_states"), layers=(1,)), **parts),
        store_key(spec=StoreSpec(capture=("logits", "hidden_states"), layers=(2,)), **parts),
    ]
    assert len({key, *changed}) == 1 + len(changed)
    assert isinstance(FORMAT_VERSION, int)
    with pytest.raises(TypeError):
        store_key(**parts)  # the spec is never optional
    with pytest.raises(TypeError):
        store_key(spec=spec, teacher=object())
