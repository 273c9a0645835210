"""Word-level augmentation: nearest words from an embedding table, seeded variants, back-off, caching."""

from __future__ import annotations

import random

import torch

from conftest import make_tokenizer
from distill.data.text_augment import (
    WordReplacer,
    augment_texts,
    cached_augmentation,
    embedding_neighbours,
)


def _table(tok):
    """Embeddings where 'good' ~ 'great' ~ 'fine' and 'bad' ~ 'awful', everything else orthogonal-ish."""
    vocab = tok.get_vocab()
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(len(vocab), 16, generator=g)
    for a, b in (("great", "good"), ("fine", "good"), ("awful", "bad")):
        emb[vocab[a]] = emb[vocab[b]] + 0.05 * torch.randn(16, generator=g)
    return emb


def test_nearest_words_come_first_and_never_the_word_itself(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    near = embedding_neighbours(["good", "bad", "nosuchword"], tok, _table(tok), k=2)
    assert set(near["good"]) == {"great", "fine"} and near["bad"][0] == "awful"
    assert "nosuchword" not in near  # not a single piece of the vocabulary: no candidates
    assert "[PAD]" not in sum(near.values(), [])


def test_variants_are_seeded_distinct_and_back_off_on_unknown_words(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    replacer = WordReplacer(embedding_neighbours(["good", "bad", "film"], tok, _table(tok), k=2))
    texts = ["a good film", "zzz qqq"]
    out = augment_texts(texts, replacer, variants=5, rate=1.0, seed=3)
    assert out == augment_texts(texts, replacer, variants=5, rate=1.0, seed=3)  # deterministic
    assert {i for i, _ in out} == {0}  # 'zzz qqq' has no known word: every variant equals it and is dropped
    assert len({t for _, t in out}) == len(out) and all(t != "a good film" for _, t in out)
    assert augment_texts(texts, replacer, variants=5, rate=1e-9, seed=3) == []  # nothing replaced: no variant
    one = replacer.variant("a good film", 1.0, random.Random(0))
    assert one.split()[1] in {"great", "fine"}


def test_cache_is_written_once_and_read_back(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return [(0, "x y"), (2, "z")]

    path = tmp_path / "aug" / "k.jsonl"
    assert cached_augmentation(path, make) == [(0, "x y"), (2, "z")]
    assert cached_augmentation(path, make) == [(0, "x y"), (2, "z")] and len(calls) == 1
    assert not list(path.parent.glob(".*tmp*"))
